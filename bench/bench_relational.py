"""Forward+backward of the fused relational losses, SP (Tung & Mori, "Similarity-Preserving
Knowledge Distillation", arXiv:1907.09682) and RKD distance / angle (Park et al., "Relational
Knowledge Distillation", arXiv:1904.05068), through the registry against their eager references
(``hyperkd/reference/relational.py``) and torch.compile of them, on the conv outputs of CIFAR
ResNet-20 and VGG-19-bn. Run through ``hyperkd bench --suite relational`` (``--full``: both
networks, B = 16/64/128).

RKD also gets a peer row, torchdistill 1.1.5's ``RKDLoss`` (the ``bench`` extra), when it is
installed: its distance is Gram-based like ours, its angle forms the B×B×D difference tensor.
"""
import pytest

from bench.workloads import bench_layerwise_loss, parametrize_layerwise
from hyperkd import reference as R

REFERENCES = {
    "sp": lambda s, t: R.similarity_preserving_losses(s, t).sum(),
    "rkd-d": lambda s, t: R.rkd_losses(s, t, 1.0, 0.0).sum(),
    "rkd-a": lambda s, t: R.rkd_losses(s, t, 0.0, 1.0).sum(),
}
PEERS = {"rkd-d": ("torchdistill",), "rkd-a": ("torchdistill",)}
# The naive RKD references (and torchdistill's angle) materialise a B×B×D tensor per layer and
# keep them all for backward. Above these sums (angle: several such tensors per layer) they need
# many GiB and minutes per step, so those rows are skipped and the fused op runs alone.
NAIVE_LIMITS = {"rkd-d": (4 << 30, ("eager", "compiled")),
                "rkd-a": (1 << 30, ("eager", "compiled", "torchdistill"))}


def torchdistill_loss(op):
    mid_level = pytest.importorskip("torchdistill.losses.mid_level", reason="the bench extra is not installed")
    rkd = mid_level.RKDLoss(None, None, dist_factor=float(op == "rkd-d"), angle_factor=float(op == "rkd-a"),
                            reduction="mean")

    def loss(student, teacher):
        return sum(rkd.compute_rkd_distance_loss(t.flatten(1), s.flatten(1))
                   + rkd.compute_rkd_angle_loss(t.flatten(1), s.flatten(1))
                   for s, t in zip(student, teacher))
    return loss


def pytest_generate_tests(metafunc):
    parametrize_layerwise(metafunc, REFERENCES, PEERS)


def test_relational(benchmark, device, case):
    bench_layerwise_loss(benchmark, device, case, REFERENCES, {"torchdistill": torchdistill_loss}, NAIVE_LIMITS)
