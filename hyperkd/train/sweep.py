"""Method sweeps: one student run per (KD method, seed), a Table-1-style summary and one
convergence plot (LayerKD-HN Table 1 and Figures 2–5).

Each run lives in ``OUT/<method>/seed<k>/``. A run whose ``summary.json`` exists is finished and
skipped; one with only ``last.pt`` was killed and is resumed, so a sweep can be restarted at will.
Before anything trains, every run already in ``OUT`` is checked against the sweep's flags (its
stored identity, see :mod:`hyperkd.train.run_identity`): a sweep never reports a run trained with
other flags under its own.

A run whose loss becomes NaN or inf stops, as a single run does, but the sweep goes on: the run is
recorded as diverged (term, layer, epoch, step) in its ``diverged.json``, in the table and in the
plot, and skipped like a finished run when the sweep is run again.
The MIP baseline (``none``) is always part of a sweep: every Δ is read against it and the teacher.
"""
import csv
import gc
import json
import os
import re
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from hyperkd import data, models
from hyperkd.runtime import accuracy
from hyperkd.train.loop import NonFiniteLossError
from hyperkd.train.run_identity import check_same_run, stored_identity, student_identity
from hyperkd.train.student import StudentConfig, parse_term, train_student

BASELINE = "none"
# A run's record once it ended: finished, or stopped by a NaN/inf loss.
RECORDS = ("summary.json", "diverged.json")


def parse_methods(text: str) -> List[str]:
    """``at0,at1:p=2,ab`` → ["at0", "at1:p=2", "ab"]. A comma followed by ``key=value`` continues
    the previous method's parameters (``ft:rate=2,p=1``). Each entry is a ``--kd`` term, so it may
    carry its own weight and tap (``at0@0.03``, ``ab/bn``) and is validated as one; the baseline
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
        parse_term(spec)
    if BASELINE not in specs:
        specs.insert(0, BASELINE)
    if len(set(specs)) != len(specs):
        raise ValueError(f"methods: {text!r} names a method twice")
    return specs


def run_dir(out: Path, method: str, seed: int) -> Path:
    """A file-system-safe folder per run: ``at1:p=2`` → ``at1_p=2``."""
    return Path(out) / re.sub(r"[^A-Za-z0-9_.=+-]", "_", method) / f"seed{seed}"


def check_runs(base: StudentConfig, methods: Sequence[str], seeds: Sequence[int], out: Path) -> None:
    """Raises ValueError, naming the flag, when a run already in ``out`` (finished, diverged or
    killed) was trained with other settings than this sweep's."""
    for method in methods:
        for seed in seeds:
            folder = run_dir(out, method, seed)
            source = next((name for name in RECORDS + ("last.pt",) if (folder / name).exists()), None)
            if source is not None:
                check_same_run(stored_identity(folder, source), student_identity(replace(base, kd=method, seed=seed)),
                               folder, remedy="a sweep continues only runs of its own flags (see "
                                              f"{Path(out) / 'config.yaml'}); choose another --out for new ones")


def run_sweep(base: StudentConfig, methods: Sequence[str], seeds: Sequence[int], out: Path,
              progress: bool = True) -> Dict[str, List[dict]]:
    """Trains every (method, seed) that is neither finished nor diverged; returns each method's
    run records: ``summary.json`` (finished) or ``diverged.json`` (with a ``diverged`` entry), and
    the seed."""
    check_runs(base, methods, seeds, out)
    results: Dict[str, List[dict]] = {}
    for method in methods:
        for seed in seeds:
            folder = run_dir(out, method, seed)
            done = next((folder / name for name in RECORDS if (folder / name).exists()), None)
            if done is None:
                if progress:
                    print(f"[sweep] {method} seed {seed} -> {folder}")
                done = _train(replace(base, kd=method, seed=seed), folder, progress)
                gc.collect()  # free this run's nets before the next run measures its peak memory
            elif progress:
                print(f"[sweep] {method} seed {seed}: {done.stem} in {folder}, skipped")
            results.setdefault(method, []).append({**json.loads(done.read_text()), "seed": seed})
    return results


def _train(cfg: StudentConfig, folder: Path, progress: bool) -> Path:
    """Runs (or resumes) one student; a NaN/inf stop is written to ``diverged.json``, not raised."""
    try:
        train_student(cfg, folder, resume=True, progress=progress)
        return folder / "summary.json"
    except NonFiniteLossError as stop:
        if progress:
            print(f"[sweep] {cfg.kd} seed {cfg.seed} diverged: {stop}")
        record = {"diverged": divergence(stop), "identity": student_identity(cfg)}
        path = folder / "diverged.json"
        tmp = folder / ".diverged.json.tmp"
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path


def divergence(stop: NonFiniteLossError) -> dict:
    """Term, layer, epoch and step of a NaN/inf stop, with its message."""
    return {"term": stop.term, "layer": stop.layer, "epoch": stop.epoch, "step": stop.step,
            "message": str(stop)}


def teacher_accuracy(cfg: StudentConfig, device: torch.device) -> float:
    """The teacher checkpoint's top-1 test accuracy on the sweep's data set."""
    net = models.create(cfg.teacher_arch, num_classes=data.NUM_CLASSES[cfg.data], checkpoint=cfg.teacher)
    _, _, test = data.loaders(cfg.data, 256, root=cfg.data_root, augment=False)
    return accuracy(net.to(device).eval(), test, device)


def _mean_std(values: Sequence[float]) -> tuple:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def baseline_label(hyper: str = "mip") -> str:
    """The No-KD row's name: the MIP baseline for a hypernetised student, else a plain No-KD."""
    return "No-KD (MIP)" if hyper == "mip" else "No-KD"


def summary_rows(results: Dict[str, List[dict]], teacher_acc: float = None, hyper: str = "mip") -> List[dict]:
    """One row per method: test accuracy mean/std over the seeds that finished (%), Δ to the
    baseline and to the teacher, the best epoch, mean epoch time, peak memory, and the runs that
    diverged with where each stopped (``stops``). Columns without a finished run are None."""
    baseline = _finished(results.get(BASELINE, []))
    base = _mean_std([r["test_acc"] for r in baseline])[0] if baseline else None
    rows = []
    for method, runs in results.items():
        done, stopped = _finished(runs), [r for r in runs if "diverged" in r]
        acc, std = _mean_std([r["test_acc"] for r in done]) if done else (None, None)
        rows.append({
            "method": baseline_label(hyper) if method == BASELINE else method,
            "test_acc": _pct(acc), "std": _pct(std), "seeds": len(done),
            "delta_no_kd": None if acc is None or base is None else 100 * (acc - base),
            "delta_teacher": None if acc is None or teacher_acc is None else 100 * (acc - teacher_acc),
            "best_epoch": statistics.fmean(r["epoch"] for r in done) if done else None,
            "epoch_time_s": statistics.fmean(r["mean_epoch_time_s"] for r in done) if done else None,
            "peak_memory_mib": max(r["peak_memory_bytes"] for r in done) / 2 ** 20 if done else None,
            "diverged": len(stopped),
            "stops": "; ".join(_stop_text(r) for r in stopped),
        })
    return rows


def _finished(runs: List[dict]) -> List[dict]:
    return [r for r in runs if "diverged" not in r]


def _pct(value):
    return None if value is None else 100 * value


def _stop_text(run: dict) -> str:
    """``seed 1: kd at layer features.0, epoch 0, step 2``."""
    stop = run["diverged"]
    layer = f" at layer {stop['layer']}" if stop.get("layer") else ""
    return f"seed {run['seed']}: {stop['term']}{layer}, epoch {stop['epoch']}, step {stop['step']}"


def markdown_table(rows: List[dict], teacher_acc: float = None) -> str:
    """The rows as a markdown table, the teacher first when known; a method whose runs diverged
    says how many, and where each stopped follows the table."""
    lines = ["| method | test acc (%) | Δ No-KD | Δ teacher | best epoch | s / epoch | peak MiB |",
             "|---|---|---|---|---|---|---|"]
    if teacher_acc is not None:
        lines.append(f"| Teacher | {100 * teacher_acc:.2f} | | | | | |")
    for r in rows:
        runs = r["seeds"] + r["diverged"]
        if r["test_acc"] is None:
            lines.append(f"| {r['method']} | diverged ({r['diverged']}/{runs}) | | | | | |")
            continue
        spread = f" ± {r['std']:.2f}" if r["seeds"] > 1 else ""
        stopped = f" ({r['diverged']}/{runs} diverged)" if r["diverged"] else ""
        base = "" if r["delta_no_kd"] is None else f"{r['delta_no_kd']:+.2f}"
        teacher = "" if r["delta_teacher"] is None else f"{r['delta_teacher']:+.2f}"
        lines.append(f"| {r['method']} | {r['test_acc']:.2f}{spread}{stopped} | {base} | {teacher} "
                     f"| {r['best_epoch']:.1f} | {r['epoch_time_s']:.1f} | {r['peak_memory_mib']:.0f} |")
    stops = [f"- {r['method']}: {r['stops']}" for r in rows if r["stops"]]
    if stops:
        lines += ["", "Diverged (loss NaN or inf; the run stopped there):", *stops]
    return "\n".join(lines)


def write_csv(rows: List[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def validation_curves(out: Path, results: Dict[str, List[dict]]) -> Dict[str, List[float]]:
    """Per method, validation accuracy per epoch averaged over the seeds that finished (from
    ``metrics.jsonl``); no curve for a method none of whose runs finished."""
    curves = {}
    for method, runs in results.items():
        per_seed = seed_curves(out, method, runs)
        if per_seed:
            length = min(len(c) for c in per_seed)
            curves[method] = [statistics.fmean(c[e] for c in per_seed) for e in range(length)]
    return curves


def seed_curves(out: Path, method: str, runs: List[dict]) -> List[List[float]]:
    """Validation accuracy per epoch of each finished run of ``method`` (from ``metrics.jsonl``)."""
    curves = []
    for run in _finished(runs):
        lines = (run_dir(out, method, run["seed"]) / "metrics.jsonl").read_text().splitlines()
        curves.append([json.loads(line)["val_acc"] for line in lines if line.strip()])
    return curves


def divergence_points(results: Dict[str, List[dict]]) -> Dict[str, List[int]]:
    """Per method, the epoch at which each of its diverged runs stopped."""
    return {method: [r["diverged"]["epoch"] for r in runs if "diverged" in r]
            for method, runs in results.items() if any("diverged" in r for r in runs)}


def plot_curves(curves: Dict[str, List[float]], path: Path, teacher_acc: float = None,
                title: str = "", diverged: Dict[str, List[int]] = None, hyper: str = "mip") -> Path:
    """Validation accuracy per epoch for each method, like the paper's Figure 2; a diverged run
    is an × on the x axis at the epoch where it stopped, and its method's label counts them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diverged = diverged or {}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in dict.fromkeys([*curves, *diverged]):
        label = baseline_label(hyper) if method == BASELINE else method
        stops = diverged.get(method, [])
        if stops:
            label += f" ({len(stops)} diverged)"
        color = None
        if method in curves:
            curve = curves[method]
            line, = ax.plot(range(1, len(curve) + 1), [100 * a for a in curve], marker="o", markersize=3,
                            label=label)
            color, label = line.get_color(), None
        if stops:
            ax.plot([e + 1 for e in stops], [0] * len(stops), linestyle="none", marker="x", markersize=9,
                    markeredgewidth=2, color=color, clip_on=False, label=label)
    return finish_accuracy_plot(fig, ax, path, teacher_acc, title, "validation accuracy (%)")


def finish_accuracy_plot(fig, ax, path: Path, teacher_acc, title: str, ylabel: str) -> Path:
    """The teacher's line (when known), axes, legend; saves ``fig`` to ``path`` and closes it."""
    import matplotlib.pyplot as plt

    if teacher_acc is not None:
        ax.axhline(100 * teacher_acc, color="black", linestyle="--", linewidth=1, label="Teacher (test)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(results, out: Path, methods, seeds, teacher_acc=None, title="", hyper: str = "mip") -> str:
    """Writes ``results.md``, ``results.csv`` and ``convergence.png`` into ``out``; returns the
    table. ``methods`` and ``seeds`` order and select the runs of ``results`` to report; ``hyper``
    names the No-KD row (:func:`baseline_label`)."""
    results = {m: [r for r in results[m] if r["seed"] in seeds] for m in methods if m in results}
    rows = summary_rows(results, teacher_acc, hyper)
    table = markdown_table(rows, teacher_acc)
    (Path(out) / "results.md").write_text(table + "\n")
    write_csv(rows, Path(out) / "results.csv")
    plot_curves(validation_curves(out, results), Path(out) / "convergence.png", teacher_acc, title,
                divergence_points(results), hyper)
    return table


def diverged_runs(results: Dict[str, List[dict]]) -> List[str]:
    """``at0 seed 1 (loss term ...)`` for each run that diverged."""
    return [f"{method} seed {r['seed']} ({r['diverged']['message']})"
            for method, runs in results.items() for r in runs if "diverged" in r]
