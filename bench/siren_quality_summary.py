"""Collects the runs of bench/siren_quality.sh into rows of the results data (one per run, round or
analysis, appended to bench/results/siren_quality.jsonl) and prints the tables (markdown) of the
runs it finds: reconstruction only, CR ≈ 0.5, progressive rounds.

    PYTHONPATH=. python bench/siren_quality_summary.py [--runs runs] [--out bench/results/siren_quality.jsonl]

Every number is read from the runs (summary.json, metrics.jsonl, config.yaml, best.pt); the kernel
error of each run's selected predictor is recomputed from its best.pt against the original net.
The analysis plots of runs/recon320/analysis are copied to docs/img/.
"""
import argparse
import json
import math
import shutil
from pathlib import Path

import torch
import yaml

from bench.measure import append_rows, stamp
from hyperkd import data, models
from hyperkd.siren import analysis, phases

ROOT = Path(__file__).resolve().parents[1]


def records(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def run_config(run: Path):
    """A run's config.yaml as keyword names, and the predictor options it was trained with."""
    config = {k.replace("-", "_"): v for k, v in yaml.safe_load((run / "config.yaml").read_text()).items()}
    return config, dict(encoding=config["encoding"], width=config["width"], depth=config["depth"],
                        permutation=config["permutation"])


def describe(run: Path, original) -> dict:
    """Selected epoch, val/test accuracy, CR, steps and the kernel error of best.pt."""
    config, options = run_config(run)
    summary = json.loads((run / "summary.json").read_text())
    rep = phases.load_representation(original, run / "best.pt", **options)
    targets, mask = phases.padded_targets(rep, original), phases.valid_mask(rep)
    variance = float(targets[mask].var())
    with torch.no_grad():
        mse = float(phases.masked_mse(rep.decode(), targets, mask))
        # The last epoch too: the Trainer keeps the first epoch with the best val accuracy.
        last = phases.load_representation(original, run / "last.pt", **options)
        last_mse = float(phases.masked_mse(last.decode(), targets, mask))
        last_test = analysis.accuracy(last.materialise(), data.loaders("digits", 360, augment=False)[2])
    train_size = len(data.splits("digits", augment=False)[0])
    steps_per_epoch = math.ceil(train_size / config["batch_size"])
    log = records(run)
    return {"run": str(run), "phase": config["phase"], "width": config["width"],
            "encoding": config["encoding"], "cr": rep.compression_ratio(), "lr": config["lr"],
            "kd_weight": config["kd_weight"], "fmd_weight": config["fmd_weight"],
            "noise": config["noise"], "epochs": summary["epochs"],
            "steps": summary["epochs"] * steps_per_epoch, "best_epoch": summary["epoch"],
            "val_acc": summary["val_acc"], "test_acc": summary["test_acc"],
            "kernel_mse": mse, "kernel_mse_relative": mse / variance,
            "last_epoch_test_acc": last_test, "last_epoch_kernel_mse_relative": last_mse / variance,
            "mean_epoch_time_s": summary["mean_epoch_time_s"],
            "first_epoch_val_acc": log[0]["val_acc"]}


def describe_rounds(run: Path, original, original_val: float) -> list:
    """Per progressive round: the selected epoch's accuracies, its target's val accuracy (round 1's
    is the original's, ``original_val``) and the RMS distance of its conv weights from its target
    (the previous round's net) and from the original. Each round's predictor is restored on its
    own target, whose weights its kernel permutation was built from."""
    config, options = run_config(run)
    target, target_val, rounds = original, original_val, []
    for r in range(1, config["rounds"] + 1):
        folder = run / f"round{r}"
        if not (folder / "summary.json").is_file():
            break
        summary = json.loads((folder / "summary.json").read_text())
        rep = phases.load_representation(target, folder / "best.pt", **options)
        net = rep.materialise().eval()
        rounds.append({"round": r, "width": config["width"], "cr": rep.compression_ratio(),
                       "epochs": summary["epochs"], "best_epoch": summary["epoch"],
                       "val_acc": summary["val_acc"], "test_acc": summary["test_acc"],
                       "target_val_acc": target_val, "kept": summary["val_acc"] > target_val,
                       "distance_to_target": phases.distance(net, target),
                       "distance_to_original": phases.distance(net, original)})
        target, target_val = net, summary["val_acc"]
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "siren_quality.jsonl",
                        help="JSON-lines file the rows are appended to")
    args = parser.parse_args()
    runs = args.runs
    teacher = json.loads((runs / "teacher" / "summary.json").read_text())
    original = models.create("resnet20", 10, runs / "teacher" / "best.pt").eval()
    result = {"data": "digits (1257/180/360)", "model": "resnet20",
              "original": {"val_acc": teacher["val_acc"], "test_acc": teacher["test_acc"],
                           "best_epoch": teacher["epoch"]},
              "table1": {}, "table2": {}}
    if (runs / "recon320" / "summary.json").is_file():
        result["table1"]["recon320"] = describe(runs / "recon320", original)
    for name in ("recon210", "recon210-16", "joint210", "decoupled210", "decoupled210-noise"):
        if (runs / name / "summary.json").is_file():
            result["table2"][name] = describe(runs / name, original)
    if (runs / "prog320" / "config.yaml").is_file():
        result["progressive"] = describe_rounds(runs / "prog320", original, teacher["val_acc"])
    folder = runs / "recon320" / "analysis"
    if (folder / "analysis.json").is_file():
        record = json.loads((folder / "analysis.json").read_text())
        orig = [r[1] if isinstance(r, list) else r for r in record["s_ratio"]["original"]]
        recon = [r[1] if isinstance(r, list) else r for r in record["s_ratio"]["reconstructed"]]
        diffs = [b - a for a, b in zip(orig, recon)]
        result["analysis"] = {"s_ratio_layers": len(diffs),
                              "s_ratio_layers_higher_after": sum(d > 0 for d in diffs),
                              "s_ratio_mean_difference": sum(diffs) / len(diffs),
                              "interpolation": record["interpolation"]}
        img = ROOT / "docs" / "img"
        img.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "s_ratio.png", img / "siren-s-ratio-digits.png")
        shutil.copyfile(folder / "interpolation.png", img / "siren-interpolation-digits.png")
    append_rows(args.out, quality_rows(result, stamp(torch.device("cpu"))))
    print(tables(result))
    print(f"rows appended to {args.out}")


def quality_rows(result: dict, run_stamp: dict) -> list:
    """One row per run of the summary (``table`` names its table, ``name`` the run), each carrying
    the data set, the model and ``run_stamp``; the analysis's curve stays a list in its row."""
    base = {**run_stamp, "data": result["data"], "model": result["model"]}
    rows = [{**base, "table": "original", "name": result["model"], **result["original"]}]
    for table in ("table1", "table2"):
        rows += [{**base, "table": table, "name": name, **{k: v for k, v in r.items() if k != "run"}}
                 for name, r in result[table].items()]
    rows += [{**base, "table": "progressive", "name": f"round{r['round']}", **r}
             for r in result.get("progressive", [])]
    if "analysis" in result:
        rows.append({**base, "table": "analysis", "name": "analysis", **result["analysis"]})
    return rows


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def table1(result: dict, o: dict) -> list:
    if not result["table1"]:
        return []
    lines = ["Table 1 (reconstruction only, CR > 1)", "",
             "| net | CR | steps | kernel MSE (rel.) | val % | test % | Δ test vs original | last epoch: test % (rel. MSE) |",
             "|---|---|---|---|---|---|---|---|",
             f"| original ResNet-20 | – | – | – | {pct(o['val_acc'])} | {pct(o['test_acc'])} | – | – |"]
    for r in result["table1"].values():
        lines.append(f"| recon-only, SIREN width {r['width']} | {r['cr']:.3f} | {r['steps']} | "
                     f"{r['kernel_mse']:.2e} ({r['kernel_mse_relative']:.3f}) | {pct(r['val_acc'])} | "
                     f"{pct(r['test_acc'])} | {100 * (r['test_acc'] - o['test_acc']):+.2f} | "
                     f"{pct(r['last_epoch_test_acc'])} ({r['last_epoch_kernel_mse_relative']:.4f}) |")
    return lines


def table2(result: dict, o: dict) -> list:
    if not result["table2"]:
        return []
    labels = {"recon210": "recon-only (phase 1)", "recon210-16": "recon-only, as long as the others",
              "joint210": "joint baseline L_recon + α L_KD + β L_FMD, α = β = 1e-4 (paper)",
              "decoupled210": "decoupled: phase 1 + L_KD-only phase 2, lr 2e-6 (ours)",
              "decoupled210-noise": "decoupled on U[−1,1] noise (data-free), lr 2e-6"}
    lines = ["Table 2 (CR ≈ 0.5)", "",
             "| method | CR | steps | kernel MSE (rel.) | val % | test % | last epoch: test % |",
             "|---|---|---|---|---|---|---|",
             f"| original ResNet-20 | – | – | – | {pct(o['val_acc'])} | {pct(o['test_acc'])} | – |"]
    phase1 = result["table2"].get("recon210")
    for name, r in result["table2"].items():
        steps = r["steps"] + (phase1["steps"] if r["phase"] == "decouple" and phase1 else 0)
        lines.append(f"| {labels[name]} | {r['cr']:.3f} | {steps} | {r['kernel_mse']:.2e} "
                     f"({r['kernel_mse_relative']:.3f}) | {pct(r['val_acc'])} | {pct(r['test_acc'])} | "
                     f"{pct(r['last_epoch_test_acc'])} |")
    return lines


def table3(result: dict, o: dict) -> list:
    if not result.get("progressive"):
        return []
    lines = ["Table 3 (progressive rounds, CR > 1; a round is kept if its val accuracy beats its target's)", "",
             "| round | CR | epochs | selected epoch | val % | test % | target's val % | kept | RMS Δw to target | RMS Δw to original |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["progressive"]:
        lines.append(f"| {r['round']} | {r['cr']:.3f} | {r['epochs']} | {r['best_epoch']} | {pct(r['val_acc'])} | "
                     f"{pct(r['test_acc'])} | {pct(r['target_val_acc'])} | {'yes' if r['kept'] else 'no'} | "
                     f"{r['distance_to_target']:.2e} | {r['distance_to_original']:.2e} |")
    return lines


def tables(result: dict) -> str:
    """The tables the runs found, each separated by a blank line."""
    found = [t(result, result["original"]) for t in (table1, table2, table3)]
    return "\n\n".join("\n".join(lines) for lines in found if lines)


if __name__ == "__main__":
    main()
