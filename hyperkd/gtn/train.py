"""Teacher training with grafted student branches: ``vanilla`` (CE only), ``sftn`` (one fixed student
as every branch, Park et al. 2021) and ``gtn`` (a path of the supernet sampled per batch), all with
the same optimizer, schedule and epochs (the GTN supplementary's rule for a fair comparison).

``best.pt`` holds the teacher alone under ``model`` (what ``hyperkd.models.create(...,
checkpoint=)`` loads for the KD stage); the branches and adapters are under ``stateful`` in
``best.pt`` and ``last.pt``. ``metrics.jsonl`` adds, per epoch, each branch's CE, KL and train
accuracy on the sampled paths and its validation accuracy on paths drawn per batch from a fixed
seed (the supplementary's Figure 1); ``accuracy.png`` plots them.

``path_distribution="learnt"`` (``gtn`` only) samples the paths from per-layer logits that Adam
updates every ``arch_every`` steps on a held-out part of the train split with the REINFORCE
estimate (:mod:`hyperkd.gtn.path_distribution`); α, Adam's state and the baseline are checkpointed
under ``stateful``, and each epoch's record adds the ``arch/...`` keys.

Under ``torchrun`` the teacher and its branches train as one DDP module (``batch_size`` per rank,
unused parameters found per step: only the sampled path runs). Every rank draws the same paths (the
same seeded sampler, stepped in lockstep), rank 0's checkpoint restores them all, and a learnt
distribution's reward is averaged over the ranks, so α stays the same everywhere.
"""
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from hyperkd import data, models
from hyperkd.gtn.graft import KL_DIRECTIONS, BRANCHES, GraftedTeacher, graft, graft_loss
from hyperkd.gtn.holdout import check_fraction, holdout_loaders
from hyperkd.gtn.path_distribution import (BASELINE_DECAY, PathDistribution, PathLearner, branch_reward,
                                           check_arch_settings)
from hyperkd.gtn.supernet import Supernet
from hyperkd.models.nas import NAS_STUDENTS, PRESETS
from hyperkd.train import distributed
from hyperkd.train.loop import Trainer
from hyperkd.train.optim import lr_schedule, sgd
from hyperkd.train.run_identity import teacher_identity
from hyperkd.train.step import StepOutput
from hyperkd.runtime import resolve_device
from hyperkd.train.teacher import check_teacher, teacher_settings

METHODS = ("vanilla", "sftn", "gtn")
PATH_DISTRIBUTIONS = ("uniform", "learnt")
# The learnt distribution's settings, part of a run's identity only when it is learnt.
ARCH_SETTINGS = ("arch_lr", "arch_every", "arch_holdout_fraction", "arch_baseline_decay")
# Seed of the paths drawn when the branches are evaluated, so that every epoch sees the same ones.
EVAL_PATH_SEED = 0


@dataclass
class GraftConfig:
    """How the branches are grafted and weighted. ``alpha``/``tau``: the KL weight and temperature
    (3 and 1, the supplementary's CIFAR-100 values); ``preset``: the supernet's widths;
    ``sftn_student``: the fixed student of ``sftn`` (a name of ``NAS_STUDENTS``);
    ``freeze_teacher_epochs``: epochs at the start with the teacher frozen (eval mode, no
    gradients) while the branches warm up; ``milestones``: fractions of the run where a multistep
    schedule divides the lr by 10 (the supplementary's 150/180/210 of 240 are 0.625, 0.75, 0.875).
    ``path_distribution``: ``uniform`` or ``learnt`` (``gtn`` only; our reading, see
    :mod:`hyperkd.gtn.path_distribution`): Adam at ``arch_lr`` on the logits every ``arch_every``
    training steps, on batches of the ``arch_holdout_fraction`` of the train split held out from
    the weights, with a reward baseline decaying by ``arch_baseline_decay``."""

    method: str = "gtn"
    alpha: float = 3.0
    tau: float = 1.0
    kl_direction: str = "teacher_student"
    preset: str = "small"
    shared: bool = True
    per_branch_paths: bool = False
    sftn_student: str = "s_nas_s"
    freeze_teacher_epochs: int = 0
    milestones: Sequence[float] = field(default=(0.5, 0.75))
    path_distribution: str = "uniform"
    arch_lr: float = 1e-3
    arch_every: int = 5
    arch_holdout_fraction: float = 0.1
    arch_baseline_decay: float = BASELINE_DECAY

    def check(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.kl_direction not in KL_DIRECTIONS:
            raise ValueError(f"kl_direction: expected one of {KL_DIRECTIONS}, got {self.kl_direction!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.sftn_student not in NAS_STUDENTS:
            raise ValueError(f"sftn_student: expected one of {', '.join(NAS_STUDENTS)}, got {self.sftn_student!r}")
        if not self.alpha >= 0 or not self.tau > 0:
            raise ValueError(f"alpha/tau: expected alpha >= 0 and tau > 0, got {self.alpha!r}, {self.tau!r}")
        if isinstance(self.freeze_teacher_epochs, bool) or not isinstance(self.freeze_teacher_epochs, int) \
                or self.freeze_teacher_epochs < 0:
            raise ValueError(f"freeze_teacher_epochs: expected an integer >= 0, got {self.freeze_teacher_epochs!r}")
        if not all(0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones: expected fractions of the run in (0, 1), got {self.milestones!r}")
        self._check_path_distribution()

    def _check_path_distribution(self) -> None:
        if self.path_distribution not in PATH_DISTRIBUTIONS:
            raise ValueError(f"path_distribution (--path-distribution): expected one of {PATH_DISTRIBUTIONS}, "
                             f"got {self.path_distribution!r}")
        if self.path_distribution == "learnt" and self.method != "gtn":
            raise ValueError(f"path_distribution (--path-distribution): 'learnt' needs --method gtn (the paths "
                             f"of a supernet), got method {self.method!r}")
        check_arch_settings(self.arch_lr, self.arch_every, self.arch_baseline_decay)
        check_fraction(self.arch_holdout_fraction)


class GraftTrainer(Trainer):
    """The Trainer, with the branches in train mode while the teacher trains and their validation
    accuracy added to each epoch's record (its time as ``branch_eval_s``, part of
    ``epoch_time_s``), and the learnt path distribution's record when there is one."""

    grafted: Optional[GraftedTeacher] = None
    learner: Optional[PathLearner] = None

    def train_epoch(self, epoch: int) -> dict:
        if self.grafted is None:  # vanilla
            return super().train_epoch(epoch)
        self.grafted.branches.train()
        record = super().train_epoch(epoch)
        if self.learner is not None:
            record.update(self.learner.record())
        began = time.perf_counter()
        record.update(self.branch_accuracy(self.val_loader))
        record["branch_eval_s"] = time.perf_counter() - began
        return record

    @torch.no_grad()
    def branch_accuracy(self, loader) -> dict:
        """Each branch's top-1 accuracy, paths drawn per batch from :data:`EVAL_PATH_SEED`."""
        self.grafted.eval()
        rng = random.Random(EVAL_PATH_SEED)
        correct, total = [0] * BRANCHES, 0
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            self.grafted.branches.sample(rng)
            for b, z in enumerate(self.grafted(x)[1]):
                correct[b] += int((z.argmax(1) == y).sum())
            total += len(y)
        *correct, total = distributed.sum_across_ranks(correct + [total], self.device)
        return {f"branch{b + 1}/val_acc": c / max(total, 1) for b, c in enumerate(correct)}


def train_grafted_teacher(model: str, dataset: str, out: Path, graft_cfg: GraftConfig, *, epochs: int,
                          batch_size: int = 128, data_root=None, lr: float = 0.05, momentum: float = 0.9,
                          weight_decay: float = 5e-4, schedule: str = "multistep", seed: int = 0,
                          workers: int = 0, device: str = "auto", resume: bool = False,
                          overwrite: bool = False, progress: bool = True) -> dict:
    """Trains teacher ``model`` by ``graft_cfg.method``; returns the best epoch's {epoch, val_acc,
    test_acc} (selected on the teacher's validation accuracy). Under ``torchrun`` it runs as DDP,
    ``batch_size`` per rank."""
    graft_cfg.check()
    settings = teacher_settings(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                                weight_decay=weight_decay, schedule=schedule, seed=seed)
    check_teacher(model, dataset, device=device, **settings)
    distributed.init_from_env()
    torch.manual_seed(seed)
    random.seed(seed)  # the path sampler: the same on every rank
    dev = resolve_device(device)
    train, holdout, val, test = _loaders(dataset, batch_size, graft_cfg, data_root, workers, seed)
    classes = data.NUM_CLASSES[dataset]
    teacher = models.create(model, num_classes=classes).to(dev)
    net, branches = teacher, None
    if graft_cfg.method != "vanilla":
        example = next(iter(val))[0][:2].to(dev)
        fixed = NAS_STUDENTS[graft_cfg.sftn_student] if graft_cfg.method == "sftn" else None
        stages, branches = graft(teacher, Supernet(PRESETS[graft_cfg.preset], classes).to(dev), example,
                                 shared=graft_cfg.shared, per_branch_paths=graft_cfg.per_branch_paths,
                                 fixed=fixed)
        branches.to(dev)
        net = GraftedTeacher(stages, branches)
    optimizer = sgd(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    learner = None
    if holdout is not None:
        candidates = branches.supernets[0].candidates()
        learner = PathLearner(PathDistribution(candidates, range(branches.starts[0], len(candidates))),
                              lr=graft_cfg.arch_lr, every=graft_cfg.arch_every,
                              baseline_decay=graft_cfg.arch_baseline_decay)
    step = _train_step(_parallel(net, dev, find_unused=branches is not None), teacher, net, graft_cfg,
                       learner, holdout)

    def on_epoch(epoch):
        frozen = epoch < graft_cfg.freeze_teacher_epochs
        teacher.requires_grad_(not frozen)
        return {"teacher_frozen": frozen}

    identity = grafted_identity(model, dataset, settings, graft_cfg)
    trainer = GraftTrainer(teacher, optimizer, step, train, val, test, out_dir=out, device=dev,
                           scheduler=lr_schedule(optimizer, schedule, epochs, milestones=graft_cfg.milestones),
                           stateful=_stateful(branches, learner),
                           on_epoch=on_epoch, progress=progress, identity=identity, overwrite=overwrite)
    trainer.grafted, trainer.learner = (None if branches is None else net), learner
    best = trainer.fit(epochs, resume=resume)
    if distributed.is_main():
        plot_accuracy(Path(out) / "metrics.jsonl", Path(out) / "accuracy.png")
    return best


def _loaders(dataset: str, batch_size: int, cfg: GraftConfig, root, workers: int, seed: int):
    """(train, held-out batches or None, val, test); under DDP each rank's shard of train, val and
    test, while every rank scores the same held-out batches."""
    if cfg.path_distribution == "learnt":
        train, holdout, val, test = holdout_loaders(dataset, batch_size, cfg.arch_holdout_fraction, root=root,
                                                    workers=workers, seed=seed)
    else:
        (train, val, test), holdout = data.loaders(dataset, batch_size, root=root, workers=workers, seed=seed), None
    return (distributed.shard(train, shuffle=True, seed=seed), holdout, distributed.shard(val, shuffle=False),
            distributed.shard(test, shuffle=False))


def _parallel(net: torch.nn.Module, device: torch.device, find_unused: bool) -> torch.nn.Module:
    """``net`` under DDP when torchrun started this process, else itself. ``find_unused``: some
    parameters get no gradient in a step (a supernet's inactive operations, a frozen teacher)."""
    if not distributed.active():
        return net
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                                     find_unused_parameters=find_unused)


def _stateful(branches, learner) -> dict:
    """What the checkpoints keep beside the teacher: the branches and the learnt distribution."""
    stateful = {} if branches is None else {"branches": branches}
    if learner is not None:
        stateful["path_distribution"] = learner
    return stateful


def grafted_identity(model: str, dataset: str, settings: dict, graft_cfg: GraftConfig) -> dict:
    """The run identity of a grafted teacher: the canonical teacher's settings and the graft's (the
    learnt distribution's settings only when it is learnt, so uniform runs keep their identity)."""
    graft_settings = asdict(graft_cfg)
    if graft_cfg.path_distribution == "uniform":
        graft_settings = {k: v for k, v in graft_settings.items() if k not in ("path_distribution", *ARCH_SETTINGS)}
    return teacher_identity(model=model, data=dataset, **settings, **graft_settings)


def add_graft_arguments(parser) -> None:
    """``hyperkd teacher``'s flags for grafted training (``--method`` and its options)."""
    group = parser.add_argument_group("grafted student branches (SFTN / GTN)")
    group.add_argument("--method", choices=METHODS, default=None,
                       help="vanilla (CE only), sftn (one fixed student as every branch) or gtn (a supernet "
                            "path per batch); unset: the canonical teacher recipe")
    group.add_argument("--alpha", type=float, default=3.0, help="weight of each branch's KL term")
    group.add_argument("--tau", type=float, default=1.0, help="softmax temperature of the KL terms")
    group.add_argument("--kl-direction", choices=KL_DIRECTIONS, default="teacher_student",
                       help="KL(teacher || branch) or the reverse")
    group.add_argument("--preset", choices=tuple(PRESETS), default="small", help="supernet widths")
    group.add_argument("--separate-branches", action="store_true",
                       help="one supernet per branch instead of one shared by the three")
    group.add_argument("--per-branch-paths", action="store_true",
                       help="each branch samples its own path (default: one path per batch for all)")
    group.add_argument("--sftn-student", choices=tuple(NAS_STUDENTS), default="s_nas_s",
                       help="the fixed student of --method sftn")
    group.add_argument("--freeze-teacher-epochs", type=int, default=0,
                       help="epochs at the start with the teacher frozen while the branches warm up")
    group.add_argument("--milestones", type=float, nargs="+", default=[0.5, 0.75],
                       help="fractions of the run where --schedule multistep divides the lr by 10")
    group.add_argument("--path-distribution", choices=PATH_DISTRIBUTIONS, default="uniform",
                       help="how --method gtn samples paths: uniform per layer, or from per-layer logits "
                            "learnt by REINFORCE on held-out train batches (our reading of the paper's "
                            "trainable distribution)")
    group.add_argument("--arch-lr", type=float, default=1e-3,
                       help="Adam learning rate of the learnt path distribution's logits")
    group.add_argument("--arch-every", type=int, default=5,
                       help="training steps per update of the learnt path distribution")
    group.add_argument("--arch-holdout-fraction", type=float, default=0.1,
                       help="fraction of the train split held out from the weights for the learnt "
                            "path distribution's updates (validation stays untouched)")
    group.add_argument("--arch-baseline-decay", type=float, default=BASELINE_DECAY,
                       help="decay of the moving-average reward baseline of the learnt path distribution")


def run_grafted(args, settings: dict) -> int:
    """``hyperkd teacher --method ...``: checks everything, writes config.yaml, trains."""
    from hyperkd.config import save_config
    from hyperkd.train.run_identity import check_out_dir

    cfg = GraftConfig(method=args.method, alpha=args.alpha, tau=args.tau, kl_direction=args.kl_direction,
                      preset=args.preset, shared=not args.separate_branches,
                      per_branch_paths=args.per_branch_paths, sftn_student=args.sftn_student,
                      freeze_teacher_epochs=args.freeze_teacher_epochs, milestones=tuple(args.milestones),
                      path_distribution=args.path_distribution, arch_lr=args.arch_lr, arch_every=args.arch_every,
                      arch_holdout_fraction=args.arch_holdout_fraction,
                      arch_baseline_decay=args.arch_baseline_decay)
    cfg.check()
    check_teacher(args.model, args.data, device=args.device, **settings)
    check_out_dir(args.out, grafted_identity(args.model, args.data, settings, cfg),
                  resume=args.resume, overwrite=args.overwrite)
    distributed.init_from_env()  # under torchrun, so that only rank 0 writes the config
    if distributed.is_main():
        save_config(args, args.out)
    best = train_grafted_teacher(args.model, args.data, args.out, cfg, data_root=args.data_root,
                                 workers=args.workers, device=args.device, resume=args.resume,
                                 overwrite=args.overwrite, **settings)
    if distributed.is_main():
        print(f"best epoch {best['epoch']}: val {best['val_acc']:.4f}, test {best['test_acc']:.4f} "
              f"-> {args.out / 'best.pt'}")
    return 0


def _train_step(net, teacher, grafted, cfg: GraftConfig, learner: Optional[PathLearner] = None,
                holdout=None):
    """The step: the teacher's CE, plus the branches' CE and α·KL on this batch's paths. ``net`` runs
    the batch (the teacher for vanilla, else ``grafted``, a :class:`GraftedTeacher`; under DDP
    wrapped). With a learnt distribution, an update of it first when one is due, then this batch's
    paths from it."""
    def step(x, y, epoch):
        if epoch < cfg.freeze_teacher_epochs and teacher.training:
            teacher.eval()  # frozen: its batch-norm statistics stay as loaded
        if grafted is teacher:
            z_t = net(x)
            return StepOutput.of(z_t, {"ce": torch.nn.functional.cross_entropy(z_t, y)})
        if learner is not None and learner.tick():
            _update_paths(grafted, learner, holdout, x.device)
        grafted.branches.sample(probs=None if learner is None else learner.weights)
        z_t, z_branches = net(x)
        terms, logs = graft_loss(z_t, z_branches, y, alpha=cfg.alpha, tau=cfg.tau, kl_direction=cfg.kl_direction)
        return StepOutput.of(z_t, terms, logs)
    return step


def _update_paths(grafted: GraftedTeacher, learner: PathLearner, holdout, device) -> None:
    """One update of the learnt distribution: a path from it, every branch on that path, its reward
    on the next held-out batch (the ranks' mean, so that every rank takes the same step)."""
    x, y = holdout.batch(learner.updates)
    spec = grafted.branches.supernets[0].sample(probs=learner.weights)
    grafted.branches.follow(spec)
    reward = branch_reward(grafted, x.to(device), y.to(device))
    learner.update(spec, distributed.sum_across_ranks([reward], device)[0] / distributed.world_size())


def plot_accuracy(metrics: Path, png: Path) -> None:
    """Teacher and branch accuracies per epoch (validation: solid, train: dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hyperkd.train.sweep import finish_accuracy_plot

    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not records:
        return
    epochs = [r["epoch"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = [("teacher", "val_acc", "train_acc")] + [
        (f"branch {b}", f"branch{b}/val_acc", f"branch{b}/train_acc") for b in range(1, BRANCHES + 1)]
    for label, val_key, train_key in curves:
        if val_key not in records[0]:
            continue
        line, = ax.plot(epochs, [100 * r[val_key] for r in records], label=f"{label} (val)")
        ax.plot(epochs, [100 * r[train_key] for r in records], "--", color=line.get_color(), alpha=0.6)
    finish_accuracy_plot(fig, ax, png, None, "teacher and grafted branches", "top-1 accuracy (%)")
