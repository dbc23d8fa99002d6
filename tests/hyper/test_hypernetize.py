"""hypernetize, LayoutPlan, HyperNet and materialize against the equations of LayerKD-HN §3.2."""
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hyperkd.hyper import HyperOptimizer, LayoutEntry, LayoutPlan, find_modules, hypernetize
from hyperkd.reference import encode_gamma, hidden_code, hyper_generate
from tests.hyper.nets import NETS, tiny_vgg
from tests.tolerances import assert_close

GAMMAS = [0.0, 0.25, 1.0]


def reference_weights(model, gamma):
    """Eq. 1–3 in eager PyTorch, from the hypernetwork's parameters."""
    hn = model.hypernet
    z = hidden_code(encode_gamma(torch.tensor([[gamma]])), [l.weight for l in hn.hidden],
                    [l.bias for l in hn.hidden])
    flat = z @ hn.W.t() + hn.theta0
    return [part.reshape(e.shape) for part, e in zip(flat[0].split(model.plan.numels), model.plan)]


@pytest.mark.parametrize("net", sorted(NETS))
def test_plan_lists_every_conv_with_biases(net):
    model = NETS[net]()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    plan = LayoutPlan.from_modules(model, find_modules(model))
    params = dict(model.named_parameters())
    expected = [f"{c}.{p}" for c in convs for p in ("weight", "bias") if params.get(f"{c}.{p}") is not None]
    assert plan.names == expected
    assert plan.total == sum(params[n].numel() for n in expected)
    assert [e.offset for e in plan] == [0] + list(torch.tensor(plan.numels).cumsum(0)[:-1].tolist())


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("gamma", GAMMAS)
def test_generated_weights_follow_eq3(net, gamma):
    model = hypernetize(NETS[net](), hidden=(8, 12))
    with torch.no_grad():
        generated = model.generate(gamma)
        for w, ref in zip(generated, reference_weights(model, gamma)):
            assert_close(w[0], ref, torch.float32)


def test_theta0_copies_the_model_and_primary_weights_survive():
    net = tiny_vgg()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    model = hypernetize(net)
    theta0 = model.hypernet.theta0.detach().split(model.plan.numels)
    for e, t in zip(model.plan, theta0):
        torch.testing.assert_close(t.reshape(e.shape), before[e.name], rtol=0, atol=0)
    for n, p in model.primary.named_parameters():
        torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0)


def _distinct_storage_bytes(tensors) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def test_primary_holds_no_second_copy_of_the_generated_tensors():
    model = hypernetize(NETS["resnet"](), hidden=(8, 12))
    theta0 = model.hypernet.theta0
    params = dict(model.primary.named_parameters())
    for name in model.plan.names:
        assert params[name].untyped_storage().data_ptr() == theta0.untyped_storage().data_ptr(), name
    # Every parameter's bytes, less the P generated values that the primary would hold again.
    every = sum(p.numel() * p.element_size() for p in model.parameters())
    assert _distinct_storage_bytes(model.parameters()) == every - model.plan.total * theta0.element_size()
    # The views follow θ0 through training; what runs is still the generated weights.
    opt = HyperOptimizer(model, "sgd", lr=0.1)
    model(torch.randn(2, 3, 8, 8), 0.3).square().sum().backward()
    opt.step()
    for e, part in zip(model.plan, theta0.detach().split(model.plan.numels)):
        torch.testing.assert_close(params[e.name].detach(), part.view(e.shape), rtol=0, atol=0)


def test_kaiming_theta0_and_other_dtypes_keep_the_primary_copies():
    net = tiny_vgg()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    model = hypernetize(net, init_theta0="kaiming")
    for n, p in model.primary.named_parameters():
        assert p.untyped_storage().data_ptr() != model.hypernet.theta0.untyped_storage().data_ptr(), n
        torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0)
    net = tiny_vgg()
    net[4].to(torch.bfloat16)  # θ0 is fp32: a bf16 tensor cannot be a view of it
    model = hypernetize(net)
    assert net[4].weight.dtype == torch.bfloat16
    assert net[4].weight.untyped_storage().data_ptr() != model.hypernet.theta0.untyped_storage().data_ptr()
    assert net[0].weight.untyped_storage().data_ptr() == model.hypernet.theta0.untyped_storage().data_ptr()
    assert model.materialize(0.5)[4].weight.dtype == torch.bfloat16


@pytest.mark.parametrize("init", ["model", "kaiming"])
def test_initial_delta_is_the_requested_fraction_of_theta0(init):
    torch.manual_seed(1)
    model = hypernetize(NETS["resnet"](), init_theta0=init, delta_ratio=0.1)
    hn = model.hypernet
    with torch.no_grad():
        delta = hn.code(torch.tensor([[0.5]])) @ hn.W.t()
    ratio = (delta.norm() / hn.theta0.norm()).item()
    # W is random: ‖Δθ‖/‖θ0‖ concentrates around the target with a spread of ~1/sqrt(d·P).
    assert 0.07 < ratio < 0.13


@pytest.mark.parametrize("net", sorted(NETS))
def test_gradients_of_all_hypernet_parameters_match_autograd_through_the_reference(net):
    torch.manual_seed(2)
    model = hypernetize(NETS[net](), hidden=(8, 12)).double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    model(x, 0.4).square().sum().backward()
    fused = {n: p.grad.clone() for n, p in model.hypernet.named_parameters()}
    model.zero_grad()
    hn = model.hypernet
    z = hidden_code(encode_gamma(torch.tensor([[0.4]], dtype=torch.float64)), [l.weight for l in hn.hidden],
                    [l.bias for l in hn.hidden])
    weights = hyper_generate(hn.W, z, hn.theta0, [e.shape for e in model.plan])
    out = torch.func.functional_call(model.primary, {n: w[0] for n, w in zip(model.plan.names, weights)}, (x,))
    out.square().sum().backward()
    for n, p in model.hypernet.named_parameters():
        assert_close(fused[n], p.grad, torch.float64, msg=n)


def test_channels_last_generation_and_forward():
    model = hypernetize(NETS["resnet"](), memory_format="channels_last").eval()
    plain = hypernetize(NETS["resnet"](), memory_format="contiguous").eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        for e, w in zip(model.plan, model.generate(0.3)):
            if len(e.shape) == 4:
                assert w[0].is_contiguous(memory_format=torch.channels_last), e.name
                assert not w[0].is_contiguous() or e.shape[2:] == (1, 1), e.name
        x = torch.randn(2, 3, 8, 8)
        assert_close(model(x, 0.3), plain(x, 0.3), torch.float32)


def test_batched_gamma_matches_each_gamma_alone():
    model = hypernetize(NETS["resnet"]()).eval()
    x = torch.randn(6, 3, 8, 8)
    gammas = torch.tensor([[0.1], [0.5], [0.9]])
    with torch.no_grad():
        batched = model(x, gammas)
        for g in range(3):
            assert_close(batched[2 * g:2 * g + 2], model(x[2 * g:2 * g + 2], gammas[g]), torch.float32)
        assert not torch.allclose(batched[:2], model(x[:2], gammas[2]))


def test_batched_gamma_in_training_runs_each_group_with_its_weights():
    model = hypernetize(NETS["vgg"]()).train()
    x = torch.randn(4, 3, 8, 8)
    batched = model(x, torch.tensor([[0.2], [0.8]]))
    torch.testing.assert_close(batched[2:], model(x[2:], 0.8), rtol=2e-5, atol=1e-6)
    batched.sum().backward()
    assert model.hypernet.W.grad.abs().sum() > 0


def test_gamma_none_samples_in_training_and_uses_half_in_eval():
    model = hypernetize(NETS["vgg"]())
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        assert_close(model(x), model(x, 0.5), torch.float32)
        model.train()
        torch.manual_seed(5)
        sampled = model(x)
        torch.manual_seed(5)
        assert_close(sampled, model(x, torch.rand(1, 1)), torch.float32)


@pytest.mark.parametrize("gamma, error, match", [
    (1.5, ValueError, r"gamma: expected values in \[0, 1\]"),
    (-0.1, ValueError, r"gamma: expected values in \[0, 1\]"),
    (torch.zeros(2), ValueError, r"gamma: expected shape \(1,\) or \(B_γ, 1\)"),
    (torch.zeros(1, 1, 1), ValueError, r"gamma: expected shape"),
    ("0.5", TypeError, r"gamma: expected None, a float or a tensor"),
])
def test_bad_gamma_raises_naming_gamma(gamma, error, match):
    model = hypernetize(NETS["vgg"]())
    with pytest.raises(error, match=match):
        model(torch.randn(1, 3, 8, 8), gamma)


def test_gamma_vector_for_multi_dimensional_gamma():
    model = hypernetize(NETS["vgg"](), gamma_dim=3)
    assert model(torch.randn(2, 3, 8, 8), torch.tensor([0.1, 0.2, 0.3])).shape == (2, 5)
    with pytest.raises(ValueError, match="gamma: a single number needs gamma_dim=1"):
        model(torch.randn(2, 3, 8, 8), 0.5)


def test_model_without_matching_modules_raises():
    with pytest.raises(ValueError, match="model: no module of type"):
        hypernetize(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_batch_not_divisible_by_gamma_count_raises():
    model = hypernetize(NETS["vgg"]()).eval()
    with pytest.raises(ValueError, match="x: a batch of 3 cannot be split into 2"):
        model(torch.randn(3, 3, 8, 8), torch.tensor([[0.1], [0.2]]))


def test_stale_layout_plan_raises():
    net = tiny_vgg()
    plan = LayoutPlan.from_modules(net, find_modules(net))
    net[4] = nn.Conv2d(6, 11, 3, padding=1)
    with pytest.raises(ValueError, match="plan: 4.weight is planned with shape .* no longer matches"):
        hypernetize(net, modules=plan)
    model = hypernetize(tiny_vgg())
    model.primary[4] = nn.Conv2d(6, 10, 3, padding=1, bias=False)
    with pytest.raises(ValueError, match="plan: 4.bias is planned but the model has no such tensor"):
        model(torch.randn(1, 3, 8, 8), 0.5)


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_explicit_module_paths_generate_those_modules_only():
    net = tiny_vgg()
    model = hypernetize(net, hidden=(8, 12), modules=["4"])
    assert model.plan.names == ["4.weight", "4.bias"]
    assert model.plan.total == 10 * 6 * 3 * 3 + 10
    # The unplanned conv stays an ordinary parameter of its own, trained by the torch optimizer.
    assert net[0].weight.requires_grad and not net[4].weight.requires_grad
    assert _storage(net[0].weight) != _storage(model.hypernet.theta0)
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        expected = reference_weights(model, 0.3)
        for w, ref in zip(model.generate(0.3), expected):
            assert_close(w[0], ref, torch.float32)
        injected = functional_call(net, dict(zip(model.plan.names, expected)), (x,))
        assert_close(model(x, 0.3), injected, torch.float32)
    model.train()
    opt = HyperOptimizer(model, "sgd", lr=0.1)
    conv0 = net[0].weight.detach().clone()
    F.cross_entropy(model(x, 0.3), torch.tensor([0, 1])).backward()
    opt.step()
    assert not torch.equal(net[0].weight, conv0)


def test_hand_built_layout_plan_keeps_its_order_and_memory_formats():
    net = tiny_vgg()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    # Not the model's order, and not every tensor of a module: conv 4's bias, then conv 0's kernel.
    plan = LayoutPlan([LayoutEntry("4", "bias", (10,), 0),
                       LayoutEntry("0", "weight", (6, 3, 3, 3), 10, "channels_last")])
    model = hypernetize(net, hidden=(8, 12), modules=plan)
    assert model.plan is plan and plan.total == 10 + 162
    torch.testing.assert_close(model.hypernet.theta0, torch.cat([before["4.bias"], before["0.weight"].flatten()]),
                               rtol=0, atol=0)
    assert net[4].weight.requires_grad and not net[4].bias.requires_grad
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        bias, kernel = model.generate(0.6)
        assert kernel[0].is_contiguous(memory_format=torch.channels_last) and not kernel[0].is_contiguous()
        expected = reference_weights(model, 0.6)
        for w, ref in zip((bias, kernel), expected):
            assert_close(w[0], ref, torch.float32)
        injected = functional_call(net, {"4.bias": expected[0], "0.weight": expected[1]}, (x,))
        assert_close(model(x, 0.6), injected, torch.float32)
    with pytest.raises(ValueError, match="entries: 0.weight starts at 9, expected 10"):
        LayoutPlan([LayoutEntry("4", "bias", (10,), 0), LayoutEntry("0", "weight", (6, 3, 3, 3), 9)])


@pytest.mark.gpu
def test_hypernetize_on_a_cuda_model_builds_there_and_evaluates_as_on_the_cpu():
    cpu = hypernetize(NETS["resnet"](), hidden=(8, 12))
    cuda = hypernetize(NETS["resnet"]().cuda(), hidden=(8, 12))
    assert all(p.is_cuda for p in cuda.parameters())
    cuda.load_state_dict(cpu.state_dict())
    x = torch.randn(2, 3, 8, 8)
    cpu.eval(), cuda.eval()
    with torch.no_grad():
        assert_close(cuda(x.cuda(), 0.3).cpu(), cpu(x, 0.3), torch.float32)


@pytest.mark.gpu
def test_cuda_hypernetize_trains_as_its_cpu_twin():
    # Same weights, same γ, same batches: the CUDA model (Triton generation and fused step) must
    # follow the CPU one (C++ kernels), not merely change W.
    torch.manual_seed(0)
    cpu = hypernetize(NETS["vgg"](), hidden=(8, 12))
    cuda = hypernetize(NETS["vgg"]().cuda(), hidden=(8, 12))
    cuda.load_state_dict(cpu.state_dict())
    opts = [HyperOptimizer(m, "sgd", lr=0.05, momentum=0.9, weight_decay=1e-3) for m in (cpu, cuda)]
    W0 = cpu.hypernet.W.detach().clone()
    g = torch.Generator().manual_seed(1)
    steps = 5
    for _ in range(steps):
        x, y, gamma = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g), \
            torch.rand(1, 1, generator=g)
        for model, opt, device in ((cpu, opts[0], "cpu"), (cuda, opts[1], "cuda")):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x.to(device), gamma.to(device)), y.to(device))
            loss.backward()
            opt.step()
    assert (cpu.hypernet.W - W0).abs().max() > 1e-4  # W did train
    cuda_params = {n: p.detach().cpu() for n, p in cuda.named_parameters()}
    for name, p in cpu.named_parameters():
        # fp32 on both devices, summation orders differ per step: the fp32 tolerance scaled by steps.
        assert_close(cuda_params[name], p.detach(), torch.float32, scale=steps, msg=name)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="init_theta0: expected one of"):
        hypernetize(tiny_vgg(), init_theta0="zeros")
    with pytest.raises(ValueError, match="hidden: expected a non-empty sequence"):
        hypernetize(tiny_vgg(), hidden=())
    with pytest.raises(ValueError, match="modules: 'nope' is not a submodule"):
        hypernetize(tiny_vgg(), modules=["nope"])
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        hypernetize("vgg")


def test_state_dict_round_trip():
    model = hypernetize(NETS["resnet"]())
    other = hypernetize(NETS["resnet"](), init_theta0="kaiming")
    x = torch.randn(2, 3, 8, 8)
    model.eval(), other.eval()
    assert not torch.allclose(model(x, 0.3), other(x, 0.3))
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(x, 0.3), model(x, 0.3), rtol=0, atol=0)


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("hidden, gamma_dim", [((16, 64, 128), 1), ((8, 12), 2), ((5,), 1)])
def test_parameter_count_equals_hyperlights_layout(net, hidden, gamma_dim):
    # HyperLight's MIP hypernetwork, counted by hand: a parameter-free sin/cos input encoding
    # (2 values per γ entry), the hidden Linear layers with their biases, and an output Linear
    # d → P whose bias is the base weights θ0. Nothing else is trainable in the hypernetwork.
    primary = NETS[net]()
    P = sum(p.numel() for m in primary.modules() if isinstance(m, nn.Conv2d) for p in m.parameters())
    widths = (2 * gamma_dim,) + hidden
    hidden_layers = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    output_layer = P * hidden[-1] + P  # weight W (P×d) and bias θ0 (P)
    model = hypernetize(primary, hidden=hidden, gamma_dim=gamma_dim)
    assert sum(p.numel() for p in model.hypernet.parameters()) == hidden_layers + output_layer
    assert dict(model.hypernet.named_parameters()).keys() == (
        {f"hidden.{i}.{k}" for i in range(len(hidden)) for k in ("weight", "bias")} | {"W", "theta0"})


def test_checkpoint_with_a_separate_output_bias_loads_it_into_theta0():
    # Checkpoints from before θ0 became the output bias hold θ = W·z + b + θ0 with a trainable b:
    # the same weights come from θ0 + b, and loading must give them (strictly: no stray key).
    model = hypernetize(NETS["resnet"]())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    old_bias = torch.randn(model.plan.total) * 0.01
    state["hypernet.theta0"] = state["hypernet.theta0"] - old_bias
    state["hypernet.b"] = old_bias
    saved_theta0 = state["hypernet.theta0"].clone()
    other = hypernetize(NETS["resnet"](), init_theta0="kaiming")
    other.load_state_dict(state)
    assert torch.equal(state["hypernet.theta0"], saved_theta0)  # the caller's tensors are left alone
    torch.testing.assert_close(other.hypernet.theta0, saved_theta0 + old_bias, rtol=0, atol=0)
    x = torch.randn(2, 3, 8, 8)
    model.eval(), other.eval()
    with torch.no_grad():
        assert_close(other(x, 0.3), model(x, 0.3), torch.float32)


def test_state_dict_whose_primary_copies_differ_from_theta0_loads_theta0():
    # Checkpoints written before the primary's copies became views of θ0 hold the original weights
    # there; loading one must not let them overwrite θ0 (the primary is loaded first).
    model = hypernetize(NETS["resnet"]())
    with torch.no_grad():
        model.hypernet.theta0.add_(0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in model.plan.names:
        state[f"primary.{name}"].zero_()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other = hypernetize(NETS["resnet"]())
    other.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(other.hypernet.theta0, model.hypernet.theta0, rtol=0, atol=0)
    x = torch.randn(2, 3, 8, 8)
    model.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x, 0.3), model(x, 0.3), rtol=0, atol=0)


@pytest.mark.parametrize("net", sorted(NETS))
def test_materialize_exports_a_plain_network(net):
    model = hypernetize(NETS[net](), memory_format="channels_last")
    plain = model.materialize(0.7).eval()
    model.eval()
    assert not any(isinstance(m, type(model)) for m in plain.modules())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_close(plain(x), model(x, 0.7), torch.float32)
        assert not torch.allclose(plain(x), model.primary(x))
    assert math.isclose(sum(p.numel() for p in plain.parameters()),
                        sum(p.numel() for p in model.primary.parameters()))


def test_generated_weights_follow_eq3_for_every_zoo_model():
    zoo = pytest.importorskip("hyperkd.models", reason="the model zoo (hyperkd.models) is not installed")
    for name in zoo.available():
        # d = 2 keeps W (P × d) small even for RepVGG-A2's 26 M generated parameters.
        model = hypernetize(zoo.create(name), hidden=(2,), memory_format="channels_last")
        with torch.no_grad():
            for gamma in (0.0, 0.6):
                for e, w, ref in zip(model.plan, model.generate(gamma), reference_weights(model, gamma)):
                    assert_close(w[0], ref, torch.float32, msg=f"{name} {e.name}")
