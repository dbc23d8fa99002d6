"""The combinatorial search of mAKD (Li & Maki §3.2, §4.1): every variant trains a fresh student's
feature extractor with that mAKD loss alone, and a linear classifier on its features scores it.

- Isolation (requirement 1): the loss is λ·L_mAKD(z_S, z_T) at the penultimate features only; the
  classifier is not trained with the net. Features of the training split fit scikit-learn's
  ``LinearSVC(dual=False)`` (the paper's setting, other parameters default); its accuracy on the
  validation split is the variant's score.
- Equal effect (requirement 2): λ is fixed per variant so that the initial ‖∂(λL)/∂z‖ equals the
  mean initial ‖∂CE/∂z‖ of ``calibration_models`` freshly initialised students (the paper measured
  0.07 on CIFAR-100; it is measured here), both on the first training batch.
- Every variant starts from the same student initialisation (``seed``) and sees the same batches,
  with the CE recipe's optimiser (SGD, Nesterov momentum, cosine schedule).

Results go to ``results.csv`` (one row per variant, written as each finishes, so a rerun skips the
finished ones), ``figure2_sorted.png`` (Figure 2: variants sorted by accuracy) and
``figure3_heatmap.png`` (Figure 3: affinity × (normalisation, loss), accuracy / the best).
"""
import csv
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from hyperkd import data, models
from hyperkd.kd import layerwise_loss, make_method
from hyperkd.kd.taps import FeatureTaps, classifier_name, tap_points
from hyperkd.ops.affinity import AFFINITIES, LOSSES, NORMALISATIONS
from hyperkd.train.optim import lr_schedule, sgd
from hyperkd.runtime import resolve_device

VARIANTS = tuple(itertools.product(AFFINITIES, NORMALISATIONS, LOSSES))
FIELDS = ("aff", "norm", "loss", "lambda", "ce_grad_norm", "final_kd_loss", "val_accuracy")


@dataclass
class SearchConfig:
    model: str
    teacher_model: str
    teacher: Path
    data: str = "digits"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    calibration_models: int = 3
    variants: Optional[Sequence[str]] = None  # "aff-norm-loss" names; all 80 when None
    seed: int = 0
    data_root: Optional[Path] = None
    device: str = "auto"


def variant_name(variant) -> str:
    return "-".join(variant)


def selected_variants(names) -> List[tuple]:
    if names is None:
        return list(VARIANTS)
    known = {variant_name(v): v for v in VARIANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"variants: unknown {unknown[0]!r}; expected aff-norm-loss names such as "
                         f"'cs-l2-sl1' (aff in {AFFINITIES}, norm in {NORMALISATIONS}, loss in {LOSSES})")
    return [known[n] for n in names]


class Penultimate:
    """Runs a net and hands back (logits, z): z is the input of its classifier, in the graph."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.taps = FeatureTaps(model, tap_points(model, "penultimate"), "net")

    def __call__(self, x):
        with self.taps.capture() as captured:
            logits = self.model(x)
        return logits, captured.values()[0]


def ce_grad_norm(cfg: SearchConfig, x, y, classes: int) -> float:
    """The mean initial ‖∂CE/∂z‖ over freshly initialised students (§3.2)."""
    norms = []
    for k in range(cfg.calibration_models):
        torch.manual_seed(cfg.seed + 1000 + k)
        net = Penultimate(models.create(cfg.model, num_classes=classes).to(x.device).train())
        logits, z = net(x)
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(logits, y), z)
        norms.append(float(grad.norm()))
    return sum(norms) / len(norms)


def train_variant(cfg: SearchConfig, variant, teacher: Penultimate, loaders, target: float, classes: int,
                  device) -> dict:
    """One variant: λ fitted to ``target`` on the first batch, the feature extractor trained with
    λ·L_mAKD alone, then a LinearSVC on its features."""
    train_loader, val_loader = loaders
    method = make_method("makd:aff={},norm={},loss={}".format(*variant))
    torch.manual_seed(cfg.seed)
    student_model = models.create(cfg.model, num_classes=classes).to(device)
    student = Penultimate(student_model)
    head = student_model.get_submodule(classifier_name(student_model))
    extractor = [p for p in student_model.parameters() if all(p is not q for q in head.parameters())]
    optimizer = sgd(extractor, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = lr_schedule(optimizer, "cosine", cfg.epochs)
    lam, kd = None, torch.tensor(float("nan"))
    for _ in range(cfg.epochs):
        student_model.train()
        for x, _ in train_loader:
            x = x.to(device)
            with torch.no_grad():
                _, zt = teacher(x)
            _, zs = student(x)
            kd = layerwise_loss(method, zs, zt)
            if lam is None:
                (grad,) = torch.autograd.grad(kd, zs, retain_graph=True)
                lam = target / max(float(grad.norm()), 1e-30)
            optimizer.zero_grad(set_to_none=True)
            (lam * kd).backward()
            optimizer.step()
        scheduler.step()
    return {"lambda": lam, "final_kd_loss": float(kd), "val_accuracy": linear_probe(student, train_loader,
                                                                                   val_loader, device)}


@torch.no_grad()
def features(net: Penultimate, loader, device):
    net.model.eval()
    zs, ys = [], []
    for x, y in loader:
        zs.append(net(x.to(device))[1].flatten(1).float().cpu())
        ys.append(y)
    return torch.cat(zs).numpy(), torch.cat(ys).numpy()


def linear_probe(net: Penultimate, train_loader, val_loader, device) -> float:
    """Validation accuracy of ``LinearSVC(dual=False)`` fitted on the training features."""
    from sklearn.svm import LinearSVC

    svc = LinearSVC(dual=False).fit(*features(net, train_loader, device))
    return float(svc.score(*features(net, val_loader, device)))


def read_rows(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def run_search(cfg: SearchConfig, out: Path, progress: bool = True) -> List[dict]:
    """Every selected variant not yet in ``out/results.csv``; then the two figures."""
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    classes = data.NUM_CLASSES[cfg.data]
    train_loader, val_loader, _ = data.loaders(cfg.data, cfg.batch_size, root=cfg.data_root, augment=False,
                                               seed=cfg.seed)
    teacher_model = models.create(cfg.teacher_model, num_classes=classes, checkpoint=cfg.teacher)
    teacher = Penultimate(teacher_model.to(device).eval())
    x, y = next(iter(train_loader))
    target = ce_grad_norm(cfg, x.to(device), y.to(device), classes)
    path = out / "results.csv"
    done = {(r["aff"], r["norm"], r["loss"]) for r in read_rows(path)}
    todo = [v for v in selected_variants(cfg.variants) if v not in done]
    for variant in tqdm(todo, desc="mAKD variants", disable=not progress):
        row = dict(zip(("aff", "norm", "loss"), variant), ce_grad_norm=target,
                   **train_variant(cfg, variant, teacher, (train_loader, val_loader), target, classes, device))
        new_file = not path.is_file()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, FIELDS)
            if new_file:
                writer.writeheader()
            writer.writerow(row)
    rows = read_rows(path)
    plot_sorted(rows, out / "figure2_sorted.png")
    plot_heatmap(rows, out / "figure3_heatmap.png")
    return rows


def plot_sorted(rows, path: Path) -> None:
    """Figure 2: every variant's validation accuracy, sorted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: float(r["val_accuracy"]), reverse=True)
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(rows)), 4))
    ax.bar(range(len(rows)), [float(r["val_accuracy"]) for r in rows])
    ax.set_xticks(range(len(rows)), [f"{r['aff']} {r['norm']} {r['loss']}".upper() for r in rows],
                  rotation=90, fontsize=7)
    ax.set_ylabel("validation accuracy (LinearSVC)")
    low = min(float(r["val_accuracy"]) for r in rows)
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heatmap(rows, path: Path) -> None:
    """Figure 3: one panel per affinity, normalisations × losses, accuracy / the best variant's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    best = max(float(r["val_accuracy"]) for r in rows)
    low = min(float(r["val_accuracy"]) for r in rows) / best
    fig, axes = plt.subplots(1, len(AFFINITIES), figsize=(3.2 * len(AFFINITIES), 3.4), sharey=True)
    for ax, aff in zip(axes, AFFINITIES):
        grid = np.full((len(NORMALISATIONS), len(LOSSES)), np.nan)
        for r in rows:
            if r["aff"] == aff:
                grid[NORMALISATIONS.index(r["norm"]), LOSSES.index(r["loss"])] = float(r["val_accuracy"]) / best
        ax.imshow(grid, vmin=low, vmax=1.0, cmap="viridis")
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_title(aff.upper())
        ax.set_xticks(range(len(LOSSES)), [s.upper() for s in LOSSES])
        ax.set_yticks(range(len(NORMALISATIONS)), [s.upper() for s in NORMALISATIONS])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
