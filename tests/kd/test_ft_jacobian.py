"""Factor transfer (Eq. 12–13, §3.4 pretraining) and JacobianKD (Eq. 19) on tiny nets."""
import copy

import pytest
import torch
import torch.nn.functional as F

import hyperkd.kd as kd
from tests.kd.nets import nets
from tests.tolerances import assert_close

CONVS = ["features.0", "features.3", "features.6"]


def _ft():
    method = kd.make_method("ft:rate=2")
    method.build([6, 6, 6])
    return method


def test_paraphraser_pretraining_reduces_the_reconstruction_loss():
    _, teacher = nets()
    method = _ft()
    batches = [torch.randn(4, 3, 4, 4) for _ in range(2)]
    history = kd.pretrain_paraphrasers(method, teacher, CONVS, batches, epochs=4, lr=1e-2,
                                       lrs={"features.6": 5e-3})
    assert len(history) == 4 and all(len(h) == 3 for h in history)
    assert all(last < first for first, last in zip(history[0], history[-1]))
    assert not method.paraphrasers.training


def test_paraphraser_schedulers_follow_section_3_4(monkeypatch):
    created = []
    original = torch.optim.lr_scheduler.ReduceLROnPlateau

    def spy(optimiser, **kwargs):
        created.append((optimiser.param_groups[0]["lr"], kwargs))
        return original(optimiser, **kwargs)

    monkeypatch.setattr(torch.optim.lr_scheduler, "ReduceLROnPlateau", spy)
    _, teacher = nets()
    method = _ft()
    kd.pretrain_paraphrasers(method, teacher, CONVS, [torch.randn(2, 3, 8, 8)], epochs=1,
                             lrs={"features.6": 1e-4})
    assert [lr for lr, _ in created] == [1e-3, 1e-3, 1e-4]
    assert all(kw == {"mode": "min", "patience": 3, "factor": 0.5} for _, kw in created)


class _Conv5Net(torch.nn.Module):
    """ShuffleNetV2's tail names: conv5 = Sequential(Conv2d, BatchNorm2d, ReLU)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv5 = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 1), torch.nn.BatchNorm2d(6), torch.nn.ReLU())

    def forward(self, x):
        return self.conv5(self.conv1(x))


def test_paraphrasers_of_conv5_default_to_the_papers_rate(monkeypatch):
    # §3.4: Adam at 1e-4 for conv5.0 and conv5.1, 1e-3 elsewhere, without the caller naming them.
    rates = []
    original = torch.optim.Adam

    def spy(params, lr):
        rates.append(lr)
        return original(params, lr=lr)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    method = kd.make_method("ft").build([4, 6, 6])
    kd.pretrain_paraphrasers(method, _Conv5Net().eval(), ["conv1", "conv5.0", "conv5.1"],
                             [torch.randn(2, 3, 4, 4)], epochs=1)
    assert rates == [1e-3, 1e-4, 1e-4]


def test_paraphraser_batches_move_to_the_teachers_device(monkeypatch):
    batch = torch.randn(2, 3, 8, 8)
    moved = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        if self is batch:
            moved.append(args[0] if args else kwargs.get("device"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    _, teacher = nets()
    kd.pretrain_paraphrasers(_ft(), teacher, CONVS, [(batch, torch.zeros(2))], epochs=1)
    assert moved == [torch.device("cpu")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_paraphrasers_pretrain_on_a_cuda_teacher_from_cpu_batches():
    _, teacher = nets()
    method = _ft()
    teacher.cuda()
    method.paraphrasers.cuda()
    history = kd.pretrain_paraphrasers(method, teacher, CONVS, [torch.randn(2, 3, 8, 8)], epochs=2)
    assert len(history) == 2


def test_ft_loss_is_eq_13_and_trains_translators_and_student():
    student, teacher = nets()
    method = _ft()
    layerkd = kd.LayerKD(method, student, teacher)
    x = torch.randn(4, 3, 8, 8)
    raw_s = kd.FeatureTaps(student, CONVS, "student")
    raw_t = kd.FeatureTaps(teacher, CONVS, "teacher")
    with torch.no_grad(), layerkd.teacher_taps.capture() as t, raw_t.capture() as g:
        teacher(x)
    with layerkd.student_taps.capture() as s, raw_s.capture() as f:
        student(x)
    total, terms = layerkd(s, t)
    s_factor = F.normalize(method.translators[1](f.values()[1]).flatten(1), dim=1)
    t_factor = F.normalize(method.paraphrasers[1].encoder(g.values()[1]).flatten(1), dim=1)
    assert_close(terms[1], (s_factor - t_factor).abs().sum(dim=1).mean().detach(), torch.float32)
    total.backward()
    assert method.translators[0].body[0].weight.grad.abs().sum() > 0
    assert student.features[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.paraphrasers.parameters())


def test_ft_needs_build_first():
    f = torch.randn(2, 6, 4, 4)
    with pytest.raises(RuntimeError, match="ft: call build"):
        kd.layerwise_loss("ft", [f], [f])


def _jacobian_run(student, teacher, x, y, layers):
    method = kd.make_method("jacobian")
    layerkd = kd.LayerKD(method, student, teacher, layers=layers)
    xs, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    method.bind(xs, xt, y)
    with layerkd.teacher_taps.capture() as t:
        teacher(xt)
    with layerkd.student_taps.capture() as s:
        student(xs)
    total, terms = layerkd(s, t)
    layerkd.remove()
    return total, dict(zip(layers, terms.unbind()))


def test_jacobian_matches_a_direct_computation():
    student, teacher = nets()
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 4, 7])
    total, terms = _jacobian_run(student, teacher, x, y, ["features.3", "head"])

    def direct(net, layer, create_graph):
        xi = x.clone().requires_grad_()
        out = {}
        handle = dict(net.named_modules())[layer].register_forward_hook(lambda m, i, o: out.update(o=o))
        net(xi)
        handle.remove()
        o = out["o"]
        r = o[torch.arange(3), y % o.shape[1]]
        r = r.flatten(1).sum(dim=1) if r.dim() > 1 else r
        (grad,) = torch.autograd.grad(r.sum(), xi, create_graph=create_graph)
        return F.normalize(grad.flatten(1), dim=1)

    for layer in ("features.3", "head"):
        expected = (direct(student, layer, True) - direct(teacher, layer, False)).pow(2).sum()
        assert_close(terms[layer], expected.detach(), torch.float32)
    total.backward()  # double backward reaches the student's weights
    assert student.features[0].weight.grad.abs().sum() > 0


def test_jacobian_is_zero_for_an_identical_teacher():
    student, _ = nets()
    teacher = copy.deepcopy(student)
    _, terms = _jacobian_run(student, teacher, torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), ["features.6"])
    assert terms["features.6"].item() == pytest.approx(0.0, abs=1e-10)


def test_jacobian_needs_inputs_that_require_grad():
    with pytest.raises(ValueError, match="student_inputs: JacobianKD differentiates"):
        kd.make_method("jacobian").bind(torch.randn(2, 3), torch.randn(2, 3).requires_grad_(), torch.zeros(2))
