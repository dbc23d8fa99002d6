"""The peers comparison (bench/bench_peers.py) compares like with like: on the same features,
hyperkd's fused KD losses and torchdistill 1.1.5's modules give the same values and gradients, and
both training steps run. Skipped without the ``bench`` extra (torchdistill, hyperlight)."""
import pytest
import torch

from bench import bench_peers as peers
from tests.tolerances import assert_close

LAYERS = [(16, 8, 8), (16, 8, 8), (32, 4, 4), (64, 2, 2)]  # odd sizes of a ResNet's stages
NAMES = [f"stage{m}.conv" for m in range(len(LAYERS))]


def features(seed: int, batch: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, generator=gen) for shape in LAYERS]


@pytest.mark.parametrize("kind", sorted(peers.METHODS))
def test_kd_values_and_gradients_agree_with_torchdistill(kind):
    criterion = peers.torchdistill_loss(kind, NAMES)
    method = peers.make_method(peers.METHODS[kind])
    weights = [peers.LAYER_WEIGHTS[kind]] * len(NAMES)
    student, teacher = features(0), features(1)
    s_ours = [f.clone().requires_grad_() for f in student]
    s_theirs = [f.clone().requires_grad_() for f in student]

    ours = peers.layerwise_loss(method, s_ours, [method.summarise(g, m) for m, g in enumerate(teacher)],
                                weights, teacher_summarised=True)
    theirs = criterion({n: {"output": f} for n, f in zip(NAMES, s_theirs)},
                       {n: {"output": g} for n, g in zip(NAMES, teacher)})
    assert ours.item() > 0
    assert_close(ours.detach(), theirs.detach(), torch.float32)
    ours.backward()
    theirs.backward()
    for a, b in zip(s_ours, s_theirs):
        assert_close(a.grad, b.grad, torch.float32, scale=b.grad.abs().max().item())


@pytest.mark.parametrize("impl", peers.IMPLEMENTATIONS)
def test_each_step_trains_every_kd_layer(impl):
    """One step of each side on ResNet-20 (B = 2): finite loss, and the student's generator moved."""
    torch.manual_seed(0)
    teacher = peers.create_network("resnet20").eval()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    step = peers.BUILDERS[impl]("resnet20", "at", teacher, x, y)
    first, second = step(), step()
    assert torch.isfinite(first) and torch.isfinite(second)
    assert first.item() != second.item()
