"""Parity of every attention-transfer backend with the eager reference (LayerKD-HN Eq. 4–7)."""
import pytest
import torch

import hyperkd
from hyperkd import reference
from hyperkd.kernels import attention_transfer as triton_at
from tests.tolerances import assert_close, loss_dtype

F = hyperkd.functional
KIND_P = [(0, 1.0), (0, 2.0), (1, 2.0), (1, 3.0), (2, 1.0), (2, 2.0), (2, 1.5)]
REDUCTIONS = ["sum", "mean"]
RESNET20 = [(16, 32, 32)] * 7 + [(32, 16, 16)] * 6 + [(64, 8, 8)] * 6
SMALL_19 = [(4, 8, 8)] * 7 + [(5, 4, 4)] * 6 + [(3, 3, 3)] * 6


def make_pairs(shapes, batch, dtype=torch.float32, channels_last=False):
    student, teacher = [], []
    for c, h, w in shapes:
        s = torch.randn(batch, c, h, w, dtype=dtype)
        if channels_last:
            s = s.to(memory_format=torch.channels_last)
        student.append(s.requires_grad_())
        teacher.append(torch.randn(batch, c, h, w, dtype=dtype))
    return student, teacher


def reference_loss_and_grads(student, teacher, kind, p, reduction, lambdas):
    """The oracle in fp32 (fp64 for fp64 inputs), from the same input values."""
    acc = torch.float64 if student[0].dtype == torch.float64 else torch.float32
    s = [f.detach().to(acc).requires_grad_() for f in student]
    t = [g.to(acc) for g in teacher]
    loss = reference.attention_transfer_loss(s, t, kind=kind, p=p, lambdas=lambdas, reduction=reduction)
    return loss.detach(), torch.autograd.grad(loss, s)


def cpp_loss_and_grads(student, teacher, kind, p, reduction, lambdas):
    loss = F.attention_transfer_loss(student, teacher, kind=kind, p=p, lambdas=lambdas, reduction=reduction)
    return loss.detach(), torch.autograd.grad(loss, student)


def triton_loss_and_grads(student, teacher, kind, p, reduction, lambdas, eps=1e-6):
    """Calls the Triton launchers directly (CPU tensors under TRITON_INTERPRET=1, or CUDA)."""
    s = [f.detach() for f in student]
    maps = triton_at.at_summary(teacher, kind, p, eps)
    lam = torch.tensor(lambdas if lambdas is not None else [1.0] * len(s), dtype=torch.float32,
                       device=s[0].device)
    mean = reduction == "mean"
    loss, _, grads = triton_at.at_loss(s, maps, lam, kind, p, eps, mean, True)
    return loss, grads


def check_backend(backend, student, teacher, kind, p, reduction, lambdas=None):
    dtype = student[0].dtype
    loss, grads = backend(student, teacher, kind, p, reduction, lambdas)
    ref_loss, ref_grads = reference_loss_and_grads(student, teacher, kind, p, reduction, lambdas)
    assert torch.isfinite(loss) and loss.dtype == loss_dtype(dtype)
    assert_close(loss.cpu(), ref_loss.cpu(), loss_dtype(dtype), msg="loss")
    for m, (g, r) in enumerate(zip(grads, ref_grads)):
        assert g.dtype == dtype and g.shape == r.shape
        # Gradients are stored in the feature dtype: compare at the scale of the layer's gradient.
        assert_close(g.cpu(), r.cpu(), dtype, scale=float(r.abs().max()) + 1e-12, msg=f"grad {m}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind,p", KIND_P)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_matches_reference(kind, p, reduction, dtype):
    student, teacher = make_pairs([(3, 7, 7), (5, 4, 6), (16, 8, 8)], batch=2, dtype=dtype)
    check_backend(cpp_loss_and_grads, student, teacher, kind, p, reduction, lambdas=[0.5, 1.0, 2.0])


@pytest.mark.parametrize("kind,p", [(0, 1.0), (1, 2.0), (2, 2.0)])
def test_cpp_half_precision_matches_reference(kind, p):
    for dtype in (torch.float16, torch.bfloat16):
        student, teacher = make_pairs([(3, 7, 7), (5, 5, 5)], batch=2, dtype=dtype)
        check_backend(cpp_loss_and_grads, student, teacher, kind, p, "sum")


@pytest.mark.parametrize("kind,p", [(0, 1.0), (1, 2.0), (1, 3.0), (2, 1.5)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cpp_gradcheck_fp64(kind, p, reduction):
    student, teacher = make_pairs([(3, 5, 5), (5, 3, 4)], batch=2, dtype=torch.float64)

    def fn(a, b):
        return F.attention_transfer_loss([a, b], teacher, kind=kind, p=p, reduction=reduction,
                                         lambdas=[0.7, 1.3])

    assert torch.autograd.gradcheck(fn, tuple(student), eps=1e-6, atol=1e-6)


@pytest.mark.interpret
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind,p", KIND_P)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_interpreter_matches_reference(kind, p, reduction, dtype, triton_device):
    student, teacher = make_pairs([(3, 7, 7), (5, 4, 6)], batch=2, dtype=dtype)
    student = [s.detach().to(triton_device).requires_grad_() for s in student]
    teacher = [t.to(triton_device) for t in teacher]
    check_backend(triton_loss_and_grads, student, teacher, kind, p, reduction, lambdas=[0.5, 2.0])


def strided_pairs(layout):
    """channels_last features, or channel slices of wider ones (not contiguous)."""
    if layout == "channels_last":
        return make_pairs([(5, 7, 7), (3, 4, 4)], batch=2, channels_last=True)
    wide, teacher = make_pairs([(8, 7, 7), (6, 4, 4)], batch=2)
    cut = [slice(1, 6), slice(0, 3)]
    student = [w.detach()[:, c].requires_grad_() for w, c in zip(wide, cut)]
    assert not student[0].is_contiguous()
    return student, [t[:, c] for t, c in zip(teacher, cut)]


@pytest.mark.interpret
@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_triton_interpreter_reads_strided_features(layout):
    student, teacher = strided_pairs(layout)
    check_backend(triton_loss_and_grads, student, teacher, 2, 2.0, "sum")


@pytest.mark.interpret
def test_triton_interpreter_nineteen_layers_batch_one():
    student, teacher = make_pairs(SMALL_19, batch=1)
    check_backend(triton_loss_and_grads, student, teacher, 0, 1.0, "mean")


@pytest.mark.parametrize("batch", [1, 2])
def test_cpp_resnet20_layer_list(batch):
    student, teacher = make_pairs(RESNET20, batch=batch)
    check_backend(cpp_loss_and_grads, student, teacher, 1, 2.0, "sum")


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_cpp_reads_strided_features(layout):
    student, teacher = strided_pairs(layout)
    for kind, p in [(0, 1.0), (2, 2.0)]:
        check_backend(cpp_loss_and_grads, student, teacher, kind, p, "sum")


def test_channels_last_gradient_keeps_layout():
    student, teacher = make_pairs([(5, 7, 7)], batch=2, channels_last=True)
    loss = F.attention_transfer_loss(student, teacher, kind=1, p=2.0)
    (grad,) = torch.autograd.grad(loss, student)
    assert grad.is_contiguous(memory_format=torch.channels_last)


def test_teacher_summary_matches_reference_and_raw_teacher():
    student, teacher = make_pairs([(3, 7, 7), (5, 4, 4)], batch=2)
    summaries = F.attention_teacher_summary(teacher, kind=1, p=2.0)
    for s, g in zip(summaries, teacher):
        assert s.shape == (2, g.shape[2] * g.shape[3])
        assert_close(s, reference.attention_teacher_summary(g, 1, 2.0), torch.float32)
    from_summary = F.attention_transfer_loss(student, summaries, kind=1, p=2.0)
    from_raw = F.attention_transfer_loss(student, teacher, kind=1, p=2.0)
    assert_close(from_summary, from_raw, torch.float32)
    # The C++ op reads raw teachers in place, in any layout, beside summaries in the same call.
    mixed = [summaries[0], teacher[1].to(memory_format=torch.channels_last)]
    check_backend(lambda s, t, *args: cpp_loss_and_grads(s, mixed, *args), student, teacher, 1, 2.0, "sum")


def test_teacher_requiring_grad_is_treated_as_constant():
    student, teacher = make_pairs([(3, 5, 5)], batch=2)
    teacher = [t.requires_grad_() for t in teacher]
    loss = F.attention_transfer_loss(student, teacher)
    loss.backward()
    assert teacher[0].grad is None and student[0].grad is not None


def test_zero_feature_uses_clamped_norm():
    """An all-zero map has ‖S‖ = 0 < eps: q = 0 and the gradient goes through S/eps."""
    student = [torch.zeros(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)]
    teacher = [torch.randn(2, 3, 4, 4, dtype=torch.float64)]
    check_backend(cpp_loss_and_grads, student, teacher, 1, 2.0, "mean")


@pytest.mark.parametrize("teacher_form", ["raw", "summary"])
def test_saves_only_the_gradients_it_returns(teacher_form):
    """Forward computes the student gradients, and they are all that backward keeps: nothing of
    the teacher, no map. The reference keeps |f|^p at full size."""
    student, teacher = make_pairs([(16, 8, 8), (32, 4, 4)], batch=4)
    summaries = F.attention_teacher_summary(teacher, kind=1, p=2.0)
    given = teacher if teacher_form == "raw" else summaries
    student_ptrs = {t.data_ptr() for t in student}

    def saved_beyond_student(fn):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = fn()
        return out, [t for t in saved if t.data_ptr() not in student_ptrs]

    loss, fused = saved_beyond_student(lambda: F.attention_transfer_loss(student, given, kind=1, p=2.0))
    grads = torch.autograd.grad(loss, student)
    assert [t.data_ptr() for t in fused] == [g.data_ptr() for g in grads]
    _, eager = saved_beyond_student(lambda: reference.attention_transfer_loss(
        student, summaries, kind=1, p=2.0, teacher_is_summary=True))
    assert sum(t.numel() for t in eager) >= sum(f.numel() for f in student)  # |f|^p per layer


def test_gradients_follow_the_incoming_gradient_and_a_second_backward():
    """The gradients made in forward are for a loss of 1: a scaled loss scales them, and a retained
    graph gives the same gradients twice."""
    student, teacher = make_pairs([(3, 5, 5), (4, 3, 3)], batch=2, dtype=torch.float64)
    loss = F.attention_transfer_loss(student, teacher, kind=1, p=2.0)
    once = torch.autograd.grad(loss, student, retain_graph=True)
    again = torch.autograd.grad(loss, student, retain_graph=True)
    scaled = torch.autograd.grad(-2.5 * loss, student)
    _, ref = reference_loss_and_grads(student, teacher, 1, 2.0, "sum", None)
    for o, a, s, r in zip(once, again, scaled, ref):
        assert_close(o, r, torch.float64)
        assert torch.equal(o, a)
        assert_close(s, -2.5 * r, torch.float64)


def test_no_gradient_is_computed_without_grad():
    student, teacher = make_pairs([(3, 5, 5), (4, 3, 3)], batch=2)
    summaries = F.attention_teacher_summary(teacher, kind=0)
    lam = torch.ones(2)
    _, _, grads = torch.ops.hyperkd.at_loss([f.detach() for f in student], summaries, lam, 0, 1.0,
                                            1e-6, False, False)
    assert grads == []
    with torch.no_grad():
        loss = F.attention_transfer_loss(student, summaries, kind=0)
    assert loss.grad_fn is None
    ref_loss, _ = reference_loss_and_grads(student, teacher, 0, 1.0, "sum", None)
    assert_close(loss, ref_loss, torch.float32)


def test_opcheck_cpu():
    student, teacher = make_pairs([(3, 5, 5), (4, 3, 3)], batch=2, dtype=torch.float64)
    summaries = F.attention_teacher_summary(teacher, kind=1, p=2.0)
    lam = torch.tensor([1.0, 0.5], dtype=torch.float64)
    torch.library.opcheck(torch.ops.hyperkd.at_loss, (student, summaries, lam, 1, 2.0, 1e-6, False, True))
    # Without its gradients the loss cannot be backpropagated, so the students must not ask for it.
    torch.library.opcheck(torch.ops.hyperkd.at_loss,
                          ([f.detach() for f in student], summaries, lam, 1, 2.0, 1e-6, False, False))
    torch.library.opcheck(torch.ops.hyperkd.at_summary, ([t for t in teacher], 2, 2.0, 1e-6))


def test_torch_compile_fullgraph_forward_and_backward():
    student, teacher = make_pairs([(3, 5, 5), (4, 3, 3)], batch=2)

    def step(a, b, ta, tb):
        return F.attention_transfer_loss([a, b], [ta, tb], kind=2, p=2.0, reduction="mean")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(*student, *teacher)
    grads = torch.autograd.grad(loss, student)
    ref_loss, ref_grads = reference_loss_and_grads(student, teacher, 2, 2.0, "mean", None)
    assert_close(loss.detach(), ref_loss, torch.float32)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, torch.float32, scale=float(r.abs().max()))


def test_module_form_matches_functional():
    student, teacher = make_pairs([(3, 5, 5)], batch=2)
    module = hyperkd.AttentionTransferLoss(kind=1, p=2.0, reduction="mean")
    assert_close(module(student, teacher, lambdas=[0.3]),
                 0.3 * F.attention_transfer_loss(student, teacher, kind=1, p=2.0, reduction="mean"),
                 torch.float32)
    assert "kind=1" in repr(module)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind,p", [(0, 1.0), (1, 2.0), (2, 2.0)])
def test_triton_gpu_matches_reference(kind, p, dtype):
    student, teacher = make_pairs(RESNET20, batch=8, dtype=dtype)
    student = [s.detach().cuda().requires_grad_() for s in student]
    teacher = [t.cuda() for t in teacher]
    check_backend(triton_loss_and_grads, student, teacher, kind, p, "sum")
    check_backend(cpp_loss_and_grads, student, teacher, kind, p, "mean")  # dispatches to Triton


BAD_INPUTS = [
    ("different lengths", dict(teacher=[torch.randn(2, 3, 4, 4)] * 2), ValueError, "teacher: expected 1 layers"),
    ("shape mismatch", dict(teacher=[torch.randn(2, 3, 5, 4)]), ValueError, "layer 0: student shape"),
    ("not 4-D", dict(student=[torch.randn(2, 3, 4)], teacher=[torch.randn(2, 3, 4)]), ValueError, "4-D"),
    ("dtype mismatch", dict(student=[torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4, dtype=torch.float64)],
                            teacher=[torch.randn(2, 3, 4, 4)] * 2), TypeError, "student[1]: dtype"),
    ("p <= 0", dict(p=0.0), ValueError, "p: expected a number > 0"),
    ("kind", dict(kind=3), ValueError, "kind: expected 0"),
    ("empty", dict(student=[], teacher=[]), ValueError, "student: expected a non-empty list"),
    ("lambdas length", dict(lambdas=[1.0, 2.0]), ValueError, "lambdas: expected 1 weights"),
    ("reduction", dict(reduction="max"), ValueError, "reduction: expected one of"),
    ("wrong summary shape", dict(teacher=[torch.randn(2, 15)]), ValueError, "teacher[0]: expected a raw"),
]


@pytest.mark.parametrize("case,overrides,error,message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_names_the_argument(case, overrides, error, message):
    args = dict(student=[torch.randn(2, 3, 4, 4)], teacher=[torch.randn(2, 3, 4, 4)])
    args.update(overrides)
    student, teacher = args.pop("student"), args.pop("teacher")
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        F.attention_transfer_loss(student, teacher, **args)


def test_device_mismatch_is_reported():
    student = [torch.randn(2, 3, 4, 4)]
    teacher = [torch.randn(2, 3, 4, 4, device="meta")]
    with pytest.raises(ValueError, match=r"teacher\[0\]: device meta"):
        F.attention_transfer_loss(student, teacher)
