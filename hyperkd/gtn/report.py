"""The GTN comparison's results: one CSV row per KD run, a Markdown table of test accuracy (mean ± std
over seeds) per student × teacher method × KD method, and a bar plot."""
import csv
import statistics
from pathlib import Path
from typing import Dict, List, Sequence

POOL = "random"  # label prefix of the pool's random students


def mean_std(values: Sequence[float]) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:  # no spread to show: say so rather than print ± 0
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)} seeds)"


def summarise(rows: List[dict]) -> Dict[tuple, List[float]]:
    """(student, teacher, kd) → test accuracies over seeds; (``pool mean``, teacher, kd) → the
    per-seed means over the random students (so its ± is over seeds, not students)."""
    cells: Dict[tuple, List[float]] = {}
    for r in rows:
        cells.setdefault((r["student"], r["teacher"], r["kd"]), []).append(r["test_acc"])
    pool: Dict[tuple, Dict[int, List[float]]] = {}
    for r in rows:
        if r["student"].startswith(POOL):
            pool.setdefault((r["teacher"], r["kd"]), {}).setdefault(r["seed"], []).append(r["test_acc"])
    for (teacher, kd), by_seed in pool.items():
        cells[("pool mean", teacher, kd)] = [statistics.fmean(v) for _, v in sorted(by_seed.items())]
    return cells


def write_report(rows: List[dict], out: Path) -> None:
    out = Path(out)
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cells = summarise(rows)
    students = list(dict.fromkeys(k[0] for k in cells))
    columns = list(dict.fromkeys((k[2], k[1]) for k in cells))  # (kd, teacher), KD outermost
    lines = ["| student | " + " | ".join(f"{kd} / {t}" for kd, t in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for s in students:
        lines.append(f"| {s} | " + " | ".join(mean_std(cells[(s, t, kd)]) if (s, t, kd) in cells else "–"
                                             for kd, t in columns) + " |")
    (out / "table.md").write_text("Test accuracy (%), mean ± std over seeds.\n\n" + "\n".join(lines) + "\n")
    plot(cells, students, columns, out / "gtn_eval.png")


def plot(cells, students, columns, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kds = list(dict.fromkeys(kd for kd, _ in columns))
    teachers = list(dict.fromkeys(t for _, t in columns))
    fig, axes = plt.subplots(1, len(kds), figsize=(4 + 1.2 * len(students), 3.5), squeeze=False)
    width = 0.8 / len(teachers)
    for ax, kd in zip(axes[0], kds):
        for i, t in enumerate(teachers):
            xs = [j + i * width for j, s in enumerate(students) if (s, t, kd) in cells]
            vals = [cells[(s, t, kd)] for s in students if (s, t, kd) in cells]
            ax.bar(xs, [100 * statistics.fmean(v) for v in vals], width,
                   yerr=[100 * statistics.stdev(v) if len(v) > 1 else 0 for v in vals], label=t, capsize=2)
        ax.set_xticks([j + width * (len(teachers) - 1) / 2 for j in range(len(students))])
        ax.set_xticklabels(students, rotation=30, ha="right", fontsize=7)
        low = min(100 * min(v) for (s, t, k), v in cells.items() if k == kd)
        ax.set_ylim(bottom=max(0.0, low - 5))  # the differences, not the bars' common base
        ax.set_title(f"KD: {kd}")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
