"""Method sweeps: one student run per (KD method, seed), a Table-1-style summary and one
convergence plot (LayerKD-HN Table 1 and Figures 2–5).

Each run lives in ``OUT/<method>/seed<k>/``. A run whose ``summary.json`` exists is finished and
skipped; one with only ``last.pt`` was killed and is resumed, so a sweep can be restarted at will.
The MIP baseline (``none``) is always part of a sweep: every Δ is read against it and the teacher.
"""
import csv
import gc
import json
import re
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from hyperkd import data, models
from hyperkd.commands.eval import evaluate
from hyperkd.kd import parse_method
from hyperkd.train.student import StudentConfig, train_student

BASELINE = "none"


def parse_methods(text: str) -> List[str]:
    """``at0,at1:p=2,ab`` → ["at0", "at1:p=2", "ab"]. A comma followed by ``key=value`` continues
    the previous method's parameters (``ft:rate=2,p=1``). Each name is validated; the baseline
    is added first when missing."""
    specs: List[str] = []
    for token in filter(None, (t.strip() for t in text.split(","))):
        if "=" in token and ":" not in token and specs:
            specs[-1] += "," + token
        else:
            specs.append(token)
    if not specs:
        raise ValueError(f"methods: expected a comma-separated list such as at0,ab, got {text!r}")
    for spec in specs:
        parse_method(spec)
    if BASELINE not in specs:
        specs.insert(0, BASELINE)
    if len(set(specs)) != len(specs):
        raise ValueError(f"methods: {text!r} names a method twice")
    return specs


def run_dir(out: Path, method: str, seed: int) -> Path:
    """A file-system-safe folder per run: ``at1:p=2`` → ``at1_p=2``."""
    return Path(out) / re.sub(r"[^A-Za-z0-9_.=+-]", "_", method) / f"seed{seed}"


def run_sweep(base: StudentConfig, methods: Sequence[str], seeds: Sequence[int], out: Path,
              progress: bool = True) -> Dict[str, List[dict]]:
    """Trains every (method, seed) that is not finished; returns each method's run summaries."""
    results: Dict[str, List[dict]] = {}
    for method in methods:
        for seed in seeds:
            folder = run_dir(out, method, seed)
            summary = folder / "summary.json"
            if not summary.exists():
                cfg = replace(base, kd=method, seed=seed)
                if progress:
                    print(f"[sweep] {method} seed {seed} -> {folder}")
                train_student(cfg, folder, resume=(folder / "last.pt").exists(), progress=progress)
                gc.collect()  # free this run's nets before the next run measures its peak memory
            results.setdefault(method, []).append(json.loads(summary.read_text()))
    return results


def teacher_accuracy(cfg: StudentConfig, device: torch.device) -> float:
    """The teacher checkpoint's top-1 test accuracy on the sweep's data set."""
    net = models.create(cfg.model, num_classes=data.NUM_CLASSES[cfg.data], checkpoint=cfg.teacher)
    _, _, test = data.loaders(cfg.data, 256, root=cfg.data_root, augment=False)
    return evaluate(net, test, device, progress=False)["top1"] / 100


def _mean_std(values: Sequence[float]) -> tuple:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summary_rows(results: Dict[str, List[dict]], teacher_acc: float = None) -> List[dict]:
    """One row per method: test accuracy mean/std over seeds (%), Δ to the baseline and to the
    teacher, the best epoch, mean epoch time and peak memory."""
    base, _ = _mean_std([r["test_acc"] for r in results[BASELINE]])
    rows = []
    for method, runs in results.items():
        acc, std = _mean_std([r["test_acc"] for r in runs])
        rows.append({
            "method": "No-KD (MIP)" if method == BASELINE else method,
            "test_acc": 100 * acc, "std": 100 * std, "seeds": len(runs),
            "delta_no_kd": 100 * (acc - base),
            "delta_teacher": None if teacher_acc is None else 100 * (acc - teacher_acc),
            "best_epoch": statistics.fmean(r["epoch"] for r in runs),
            "epoch_time_s": statistics.fmean(r["mean_epoch_time_s"] for r in runs),
            "peak_memory_mib": max(r["peak_memory_bytes"] for r in runs) / 2 ** 20,
        })
    return rows


def markdown_table(rows: List[dict], teacher_acc: float = None) -> str:
    """The rows as a markdown table, the teacher first when known."""
    lines = ["| method | test acc (%) | Δ No-KD | Δ teacher | best epoch | s / epoch | peak MiB |",
             "|---|---|---|---|---|---|---|"]
    if teacher_acc is not None:
        lines.append(f"| Teacher | {100 * teacher_acc:.2f} | | | | | |")
    for r in rows:
        teacher = "" if r["delta_teacher"] is None else f"{r['delta_teacher']:+.2f}"
        spread = f" ± {r['std']:.2f}" if r["seeds"] > 1 else ""
        lines.append(f"| {r['method']} | {r['test_acc']:.2f}{spread} | {r['delta_no_kd']:+.2f} | {teacher} "
                     f"| {r['best_epoch']:.1f} | {r['epoch_time_s']:.1f} | {r['peak_memory_mib']:.0f} |")
    return "\n".join(lines)


def write_csv(rows: List[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def validation_curves(out: Path, methods: Sequence[str], seeds: Sequence[int]) -> Dict[str, List[float]]:
    """Per method, validation accuracy per epoch averaged over seeds (from ``metrics.jsonl``)."""
    curves = {}
    for method in methods:
        per_seed = []
        for seed in seeds:
            lines = (run_dir(out, method, seed) / "metrics.jsonl").read_text().splitlines()
            per_seed.append([json.loads(line)["val_acc"] for line in lines if line.strip()])
        length = min(len(c) for c in per_seed)
        curves[method] = [statistics.fmean(c[e] for c in per_seed) for e in range(length)]
    return curves


def plot_curves(curves: Dict[str, List[float]], path: Path, teacher_acc: float = None,
                title: str = "") -> Path:
    """Validation accuracy per epoch for each method, like the paper's Figure 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, curve in curves.items():
        label = "No-KD (MIP)" if method == BASELINE else method
        ax.plot(range(1, len(curve) + 1), [100 * a for a in curve], marker="o", markersize=3, label=label)
    if teacher_acc is not None:
        ax.axhline(100 * teacher_acc, color="black", linestyle="--", linewidth=1, label="Teacher (test)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(results, out: Path, methods, seeds, teacher_acc=None, title="") -> str:
    """Writes ``results.md``, ``results.csv`` and ``convergence.png`` into ``out``; returns the table."""
    rows = summary_rows(results, teacher_acc)
    table = markdown_table(rows, teacher_acc)
    (Path(out) / "results.md").write_text(table + "\n")
    write_csv(rows, Path(out) / "results.csv")
    plot_curves(validation_curves(out, methods, seeds), Path(out) / "convergence.png", teacher_acc, title)
    return table

