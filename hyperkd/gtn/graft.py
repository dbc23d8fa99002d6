"""Grafting student branches onto a teacher, and the GTN/SFTN teacher objective (GTN supplementary
§2; SFTN, Park et al. 2021).

The supernet is cut into 4 blocks at its stride-2 layers (the tables' widths give blocks of
stem…layer 2, layers 3-4, layer 5, layer 6 + head), so that block b+1 starts at the resolution where
the teacher's stage b ends. The teacher's stages are found by resolution change: its modules run in
order (:func:`teacher_sequence`) and stage b ends after the last module whose output has the
resolution of supernet block b+1's input. Branch b (b = 1, 2, 3) feeds the output of teacher stage b
through an adapter (1×1 conv + BN + ReLU to the supernet block's input width) into supernet blocks
b+1…4.

The objective of one batch (:func:`graft_loss`):

    CE(z_T, y) + (1/3) Σ_b [CE(z_b, y) + α·KL(softmax(z_T/τ) ‖ softmax(z_b/τ))]

with α = 3 and τ = 1 (the supplementary's CIFAR-100 values) and the teacher not detached, so the KL
term makes the teacher student-friendly. Options (our reading where the supplementary is silent):
the KL direction, one path for all branches or one per branch, and one supernet shared by the
branches or one per branch. SFTN is the same objective with one fixed student as every branch.
"""
import random
from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from hyperkd.gtn.supernet import Supernet
from hyperkd.models import mobilenetv2, nas, repvgg, resnet, shufflenetv2, vgg
from hyperkd.models.nas import Spec, check_spec

KL_DIRECTIONS = ("teacher_student", "student_teacher")
BRANCHES = 3


_flatten = partial(torch.flatten, start_dim=1)


def _global_pool(h: torch.Tensor) -> torch.Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)


def _spatial_mean(h: torch.Tensor) -> torch.Tensor:
    return h.mean((2, 3))


def teacher_sequence(net: nn.Module) -> List[Callable]:
    """The modules (and parameter-free functions) of a zoo net in execution order: running them one
    after the other gives ``net(x)``."""
    if isinstance(net, resnet.CifarResNet):
        return [net.conv1, net.bn1, net.relu, *net.layer1, *net.layer2, *net.layer3, net.avgpool,
                _flatten, net.fc]
    if isinstance(net, vgg.VGG):
        return [*net.features, _flatten, *net.classifier]
    if isinstance(net, mobilenetv2.MobileNetV2):
        return [*net.features, _global_pool, *net.classifier]
    if isinstance(net, shufflenetv2.ShuffleNetV2):
        return [net.conv1, *net.stage2, *net.stage3, *net.stage4, net.conv5, _spatial_mean, net.fc]
    if isinstance(net, repvgg.RepVGG):
        return [net.stage0, *net.stage1, *net.stage2, *net.stage3, *net.stage4, net.gap, _flatten,
                net.linear]
    if isinstance(net, nas.NasNet):
        return [net.stem, *net.layers, net.head.mix, _global_pool, net.head.fc]
    raise ValueError(f"teacher: grafting needs the stages of a zoo net (CIFAR ResNet, VGG, MobileNetV2, "
                     f"ShuffleNetV2, RepVGG or a NAS student); {type(net).__name__} is not supported")


class TeacherStages(nn.Module):
    """The teacher run module by module, keeping the outputs of its stages at the given
    resolutions. ``forward(x)`` returns (logits, [stage outputs])."""

    def __init__(self, teacher: nn.Module, resolutions: Sequence[int], example: torch.Tensor):
        super().__init__()
        self.teacher = teacher
        self._sequence = teacher_sequence(teacher)
        self.cuts = self._find_cuts(resolutions, example)

    def _run(self, x: torch.Tensor, keep: Sequence[int]):
        kept = []
        for index, fn in enumerate(self._sequence):
            x = fn(x)
            if index in keep:
                kept.append(x)
        return x, kept

    @torch.no_grad()
    def _probe(self, example: torch.Tensor, keep: Sequence[int]) -> List[torch.Tensor]:
        """The kept outputs on ``example`` in eval mode (running statistics untouched)."""
        mode = self.teacher.training
        self.teacher.eval()
        try:
            return self._run(example, keep)[1]
        finally:
            self.teacher.train(mode)

    def _find_cuts(self, resolutions, example) -> List[int]:
        """Index of the last module whose output has each resolution (raises if one is missing)."""
        outputs = self._probe(example, keep=range(len(self._sequence)))
        sizes = [tuple(h.shape[-2:]) if h.dim() == 4 else None for h in outputs]
        cuts = []
        for r in resolutions:
            found = [i for i, s in enumerate(sizes) if s == (r, r)]
            if not found:
                seen = sorted({s[0] for s in sizes if s is not None}, reverse=True)
                raise ValueError(f"teacher: {type(self.teacher).__name__} has no stage at resolution {r}×{r} "
                                 f"(its feature maps are {seen}); the supernet's blocks start at {list(resolutions)}")
            cuts.append(found[-1])
        if cuts != sorted(cuts):
            raise ValueError(f"teacher: its stages at {list(resolutions)} do not come in that order")
        return cuts

    def widths(self, example: torch.Tensor) -> List[int]:
        """Channel counts of the stage outputs."""
        return [h.shape[1] for h in self._probe(example, keep=self.cuts)]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        return self._run(x, keep=self.cuts)


def adapter(c_in: int, c_out: int) -> nn.Sequential:
    """1×1 conv + BN + ReLU from a teacher stage's width to a supernet block's input width."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def supernet_block_starts(supernet: Supernet) -> List[int]:
    """The reconfigurable layers where supernet blocks 2, 3 and 4 start: its stride-2 layers."""
    starts = [i for i, s in enumerate(supernet.config.strides) if s == 2]
    if len(starts) != BRANCHES:
        raise ValueError(f"supernet: grafting cuts it into 4 blocks at its stride-2 layers and needs "
                         f"exactly 3 of them, got strides {supernet.config.strides}")
    return starts


class GraftedBranches(nn.Module):
    """The three student branches of a grafted teacher.

    ``shared``: one supernet for the branches (default) or one per branch. ``per_branch_paths``: each
    branch samples its own path (default: one path per batch for all). ``fixed``: SFTN's one student
    spec for every branch, never resampled.
    """

    def __init__(self, supernet: Supernet, teacher_widths: Sequence[int], *, shared: bool = True,
                 per_branch_paths: bool = False, fixed: Optional[Spec] = None):
        super().__init__()
        self.starts = supernet_block_starts(supernet)
        count = 1 if shared else BRANCHES
        self.supernets = nn.ModuleList([supernet] + [Supernet(supernet.config, supernet.num_classes)
                                                     for _ in range(count - 1)])
        c_ins = [supernet.config.layer_shapes()[s][0] for s in self.starts]
        self.adapters = nn.ModuleList(adapter(c, w) for c, w in zip(teacher_widths, c_ins))
        self.per_branch_paths = per_branch_paths
        self.fixed = None if fixed is None else check_spec(fixed, supernet.config)
        self.paths: List[Spec] = []

    def _supernet(self, branch: int) -> Supernet:
        return self.supernets[branch % len(self.supernets)]

    def sample(self, rng: Optional[random.Random] = None, probs=None) -> List[Spec]:
        """This batch's path of each branch (the fixed spec for SFTN); ``probs``: per-layer weights
        as :meth:`Supernet.sample` takes them (default: each supernet's own)."""
        if self.fixed is not None:
            self.paths = [self.fixed] * BRANCHES
        elif self.per_branch_paths:
            self.paths = [self._supernet(b).sample(rng, probs) for b in range(BRANCHES)]
        else:
            self.follow(self.supernets[0].sample(rng, probs))
        return self.paths

    def follow(self, spec: Spec) -> None:
        """Every branch on the path ``spec`` until the next :meth:`sample`."""
        self.paths = [check_spec(spec, self.supernets[0].config)] * BRANCHES

    def forward(self, stage_outputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The logits z_b of each branch on the paths of the last :meth:`sample`."""
        if not self.paths:
            self.sample()
        logits = []
        for b, (h, adapt, start) in enumerate(zip(stage_outputs, self.adapters, self.starts)):
            net = self._supernet(b)
            net.activate(self.paths[b])
            logits.append(net.forward_from(adapt(h), start))
        return logits


class GraftedTeacher(nn.Module):
    """The teacher and its branches as one module: ``forward(x)`` returns (z_T, [z_b]) on the
    branches' current paths. One module, so that DDP sees (and synchronises) every parameter the
    grafted objective trains."""

    def __init__(self, stages: TeacherStages, branches: GraftedBranches):
        super().__init__()
        self.stages, self.branches = stages, branches

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        z_teacher, stage_outputs = self.stages(x)
        return z_teacher, self.branches(stage_outputs)


def graft(teacher: nn.Module, supernet: Supernet, example: torch.Tensor, **options) -> Tuple[TeacherStages, GraftedBranches]:
    """Teacher stages aligned with the supernet's blocks by resolution, and the branches.
    ``example``: one input batch (any size ≥ 1) at the training resolution."""
    starts = supernet_block_starts(supernet)
    size = example.shape[-1]
    resolutions = []
    for start in starts:
        stride = 1
        for s in supernet.config.strides[:start]:
            stride *= s
        resolutions.append(size // stride)
    stages = TeacherStages(teacher, resolutions, example)
    return stages, GraftedBranches(supernet, stages.widths(example), **options)


def kl_divergence(z_teacher: torch.Tensor, z_branch: torch.Tensor, tau: float, direction: str) -> torch.Tensor:
    """KL(softmax(z_T/τ) ‖ softmax(z_b/τ)) (``teacher_student``) or the reverse, batch mean."""
    log_t = F.log_softmax(z_teacher / tau, dim=1)
    log_b = F.log_softmax(z_branch / tau, dim=1)
    if direction == "teacher_student":
        return F.kl_div(log_b, log_t, reduction="batchmean", log_target=True)
    if direction == "student_teacher":
        return F.kl_div(log_t, log_b, reduction="batchmean", log_target=True)
    raise ValueError(f"kl_direction: expected one of {KL_DIRECTIONS}, got {direction!r}")


def graft_loss(z_teacher: torch.Tensor, z_branches: Sequence[torch.Tensor], y: torch.Tensor, *,
               alpha: float = 3.0, tau: float = 1.0, kl_direction: str = "teacher_student"):
    """(terms to minimise, logs): ``ce`` = CE(z_T, y) and ``branches`` = (1/n) Σ_b [CE(z_b, y) +
    α·KL_b]; the logs hold each branch's CE, KL and train accuracy. The teacher is not detached."""
    terms = {"ce": F.cross_entropy(z_teacher, y)}
    logs, branch_sum = {}, 0
    for b, z in enumerate(z_branches, start=1):
        ce = F.cross_entropy(z, y)
        kl = kl_divergence(z_teacher, z, tau, kl_direction)
        branch_sum = branch_sum + ce + alpha * kl
        logs.update({f"branch{b}/ce": ce, f"branch{b}/kl": kl,
                     f"branch{b}/train_acc": (z.argmax(1) == y).float().mean()})
    if z_branches:
        terms["branches"] = branch_sum / len(z_branches)
    return terms, logs
