"""One LayerKD-HN training step end to end, hyperkd against the composition a user would write
today: teacher forward (no grad), hypernetised student forward, cross-entropy plus KD at every conv
output, backward, optimizer step. Run through ``hyperkd bench --suite peers`` (``--full``: ResNet-20
and VGG-11-bn, B = 16 and 64, AT and AB).

- ``fused`` (hyperkd): ``hypernetize`` + ``HyperOptimizer(fused=True)`` (W stepped inside backward,
  no P×d gradient), teacher features reduced to the method's summary inside its forward hook,
  ``hyperkd.kd.layerwise_loss`` over all layers in one fused call.
- ``hyperlight+torchdistill``: HyperLight 0.0.5's hypernetwork (as ``bench/_hyper_step.py`` builds it
  from its README), torchdistill 1.1.5's ``ForwardHookManager`` for the features and its loss
  modules (``ATLoss`` in the paper's mode, ``AltActTransferLoss``), a ``torch.optim.SGD`` over every
  parameter. Both from the ``bench`` extra; the rows are skipped without it.

Both sides use the same networks, hidden widths, SGD with momentum, and the same loss definitions
(AT type 1, p = 2, batch mean of ‖q_s − q_t‖₂; AB with margin 1, batch mean of the squared hinge),
so their KD values agree on the same features (``tests/test_bench_peers.py``). Teacher and student
are the same architecture, so every conv output is paired. Time and peak memory are per step after
a warm-up step that allocates the optimizer state (medians of 3 steps: a VGG-11-bn step takes seconds).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench._hyper_step import HyperlightHyper, create_network
from bench.measure import peak_extra_bytes
from hyperkd.hyper import HyperOptimizer, hypernetize
from hyperkd.kd import layerwise_loss, make_method

IMPLEMENTATIONS = ("fused", "hyperlight+torchdistill")
HIDDEN = (16, 64, 128)
LR, MOMENTUM = 1e-3, 0.9
# The registry specs whose values torchdistill's modules compute too (see torchdistill_loss).
METHODS = {"at": "at1:p=2,reduction=mean", "ab": "ab:margin=1,reduction=mean"}
# λ_m of every layer: the KD term near the cross-entropy at initialisation (AB's raw sum is ~4.5e5
# on ResNet-20), so the timed steps stay finite; the step's cost does not depend on it.
LAYER_WEIGHTS = {"at": 1.0, "ab": 1e-5}


def cases(full):
    nets = ("resnet20", "vgg11_bn") if full else ("resnet20",)
    batches = (16, 64) if full else (16,)
    return [(n, b, k, i) for n in nets for b in batches for k in METHODS for i in IMPLEMENTATIONS]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        full = metafunc.config.getoption("--full")
        metafunc.parametrize("case", cases(full), ids=["-".join([n, f"B{b}", k, i]) for n, b, k, i in cases(full)])


def conv_names(model: nn.Module):
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def tap(model: nn.Module, names, keep=lambda feature, m: feature):
    """Forward hooks on ``names``: the list they fill, in layer order, with ``keep(output, m)``."""
    store = [None] * len(names)
    modules = dict(model.named_modules())
    for m, name in enumerate(names):
        modules[name].register_forward_hook(lambda _, __, out, m=m: store.__setitem__(m, keep(out, m)))
    return store


def torchdistill_loss(kind: str, names):
    """torchdistill's module for ``kind`` over every layer in ``names``, each weighted by
    ``LAYER_WEIGHTS[kind]``."""
    mid_level = pytest.importorskip("torchdistill.losses.mid_level",
                                    reason="the peer rows need the bench extra: pip install -e '.[bench]'")
    pairs = {name: {"student": {"io": "output", "path": name}, "teacher": {"io": "output", "path": name},
                    "weight": LAYER_WEIGHTS[kind]} for name in names}
    if kind == "at":
        return mid_level.ATLoss(pairs, mode="paper")
    return mid_level.AltActTransferLoss(pairs, margin=1.0, reduction="mean")


def hyperkd_step(network: str, kind: str, teacher: nn.Module, x, y):
    model = hypernetize(create_network(network), hidden=HIDDEN)
    opt = HyperOptimizer(model, "sgd", lr=LR, momentum=MOMENTUM, fused=True)
    method = make_method(METHODS[kind])
    names = conv_names(model.primary)
    summaries = tap(teacher, names, keep=lambda g, m: method.summarise(g.detach(), m))
    student = tap(model.primary, names)
    lambdas = [LAYER_WEIGHTS[kind]] * len(names)

    def step():
        opt.zero_grad()
        with torch.no_grad():
            teacher(x)
        logits = model(x, torch.rand(1, 1))
        loss = F.cross_entropy(logits, y) + layerwise_loss(method, student, summaries, lambdas,
                                                               teacher_summarised=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def peers_step(network: str, kind: str, teacher: nn.Module, x, y):
    pytest.importorskip("hyperlight", reason="the peer rows need the bench extra: pip install -e '.[bench]'")
    from torchdistill.core.forward_hook import ForwardHookManager

    model = HyperlightHyper(create_network(network), HIDDEN)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=MOMENTUM)
    names = conv_names(model.primary)
    criterion = torchdistill_loss(kind, names)
    teacher_hooks, student_hooks = ForwardHookManager(x.device), ForwardHookManager(x.device)
    for name in names:
        teacher_hooks.add_hook(teacher, name, requires_input=False)
        student_hooks.add_hook(model.primary, name, requires_input=False)

    def step():
        opt.zero_grad()
        with torch.no_grad():
            teacher(x)
        logits = model(x, torch.rand(1, 1))
        loss = F.cross_entropy(logits, y) + criterion(student_hooks.pop_io_dict(), teacher_hooks.pop_io_dict())
        loss.backward()
        opt.step()
        return loss.detach()

    return step


BUILDERS = {"fused": hyperkd_step, "hyperlight+torchdistill": peers_step}


def test_peers(benchmark, device, case):
    network, batch, kind, impl = case
    if device.type != "cpu":
        pytest.skip("the peer step runs on the CPU (its GPU rows need a device build of the hypernetworks)")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    torch.manual_seed(0)
    teacher = create_network(network).eval()  # per case: each step hooks its own teacher
    step = BUILDERS[impl](network, kind, teacher, x, y)
    step()  # allocates the optimizer state
    benchmark.extra_info.update(network=network, batch=batch, kind=kind.upper(), impl=impl,
                                peak_extra_bytes=peak_extra_bytes(step, device))
    benchmark.pedantic(step, rounds=3, warmup_rounds=0)  # seconds per step on a CPU
