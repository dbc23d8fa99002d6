"""Grafting: teacher stages by resolution for the zoo, branches into the supernet's later blocks,
the unsupported case, and the objective against a hand-written reference."""
import random

import pytest
import torch
import torch.nn.functional as F

from hyperkd import models
from hyperkd.gtn.graft import TeacherStages, graft, graft_loss, teacher_sequence
from hyperkd.gtn.supernet import Supernet
from hyperkd.models.nas import NAS_STUDENTS, PRESETS, SupernetConfig


@pytest.mark.parametrize("name, widths", [("resnet32", [16, 32, 64]), ("vgg13_bn", [64, 128, 256])])
def test_graft_zoo_teacher(name, widths):
    teacher = models.create(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    stages, branches = graft(teacher, Supernet(PRESETS["small"], 10), x)
    logits, outputs = stages(x)
    torch.testing.assert_close(logits, teacher(x))  # the module sequence is the teacher's forward
    assert [h.shape[1:] for h in outputs] == [(c, r, r) for c, r in zip(widths, (32, 16, 8))]
    assert branches.starts == [2, 4, 5]  # blocks 2-4 start at the stride-2 layers
    branches.sample(random.Random(0))
    z = branches(outputs)
    assert [tuple(b.shape) for b in z] == [(2, 10)] * 3
    # The branches' first ops see the adapted teacher stage at the supernet block's input width.
    assert [a[0].out_channels for a in branches.adapters] == [16, 32, 64]


def test_unsupported_teacher_is_named():
    with pytest.raises(ValueError, match="Sequential is not supported"):
        teacher_sequence(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()))


def test_missing_stage_resolution_and_supernet_cuts_are_named():
    teacher = models.create("resnet20", num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="no stage at resolution 12×12"):
        TeacherStages(teacher, [32, 12, 8], x)
    with pytest.raises(ValueError, match="exactly 3 of them"):
        graft(teacher, Supernet(SupernetConfig(width_mult=0.25, strides=(2, 1, 2, 1, 2, 2)), 10), x)


def _reference(z_t, z_bs, y, alpha, tau):
    """CE(z_T, y) + (1/3) Σ_b [CE(z_b, y) + α Σ_k p_T,k (log p_T,k − log p_b,k)] with explicit
    probabilities."""
    def ce(z):
        return -(z.softmax(1).log().gather(1, y[:, None])).mean()
    p_t = (z_t / tau).softmax(1)
    total = ce(z_t)
    for z in z_bs:
        p_b = (z / tau).softmax(1)
        kl = (p_t * (p_t.log() - p_b.log())).sum(1).mean()
        total = total + (ce(z) + alpha * kl) / len(z_bs)
    return total


def test_objective_matches_reference_and_trains_the_teacher():
    torch.manual_seed(0)
    teacher = models.create("s_nas_s_small", num_classes=6)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 6, (4,))
    stages, branches = graft(teacher, Supernet(PRESETS["small"], 6), x[:1])
    branches.sample(random.Random(1))
    z_t, outputs = stages(x)
    z_bs = branches(outputs)
    terms, logs = graft_loss(z_t, z_bs, y, alpha=3.0, tau=2.0)
    expected = _reference(z_t, z_bs, y, 3.0, 2.0)
    torch.testing.assert_close(sum(terms.values()), expected)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(z_t, y))
    assert set(logs) == {f"branch{b}/{k}" for b in (1, 2, 3) for k in ("ce", "kl", "train_acc")}
    # The teacher is not detached: the KL term alone moves its stem.
    kl = sum(logs[f"branch{b}/kl"] for b in (1, 2, 3))
    grad, = torch.autograd.grad(kl, teacher.stem[0].weight)
    assert grad.abs().sum() > 0
    reverse, _ = graft_loss(z_t, z_bs, y, kl_direction="student_teacher")
    assert not torch.allclose(reverse["branches"], terms["branches"])


def test_sftn_fixes_the_path_and_per_branch_paths_differ():
    teacher = models.create("resnet20", num_classes=4)
    x = torch.randn(1, 3, 16, 16)
    _, sftn = graft(teacher, Supernet(PRESETS["small"], 4), x, fixed=NAS_STUDENTS["s_nas_m"])
    assert sftn.sample() == [NAS_STUDENTS["s_nas_m"]] * 3
    _, own = graft(teacher, Supernet(PRESETS["small"], 4), x, per_branch_paths=True, shared=False)
    paths = own.sample(random.Random(5))
    assert len(set(paths)) > 1 and len(own.supernets) == 3
