"""The layer-wise learning-rate grid of docs/layerwise-lr.md: for each map (and CE alone) the three
learning-rate rows None / Constant / Layerwise, over seeds; one JSON line per finished run, runs
already in the file skipped (so an interrupted grid resumes), then the table as mean ± std.

    python bench/layer_lr_grid.py --teacher runs/r18q/best.pt --out runs/grid --epochs 6 --every 2

``--derivative-options per=batch`` takes the Jacobian and Hessian maps once per batch instead of per
sample (the registry's ``jsd`` options; the attention map has none of them).
"""
import argparse
import json
import statistics
import time
from pathlib import Path

from hyperkd.train.layer_lr_run import LR_MODES, train_with_layer_lr

DERIVATIVE_MAPS = ("jacobian", "hessian")


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's best.pt")
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs and grid.jsonl")
    parser.add_argument("--teacher-model", default="resnet18_x0_25")
    parser.add_argument("--model", default="resnet10_x0_25")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--maps", default="ce,attention,jacobian,hessian")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--derivative-options", default="",
                        help="extra jsd options of the jacobian and hessian maps, e.g. per=batch")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def main():
    args = arguments()
    rows_file = args.out / "grid.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    done = {(r["map"], r["lr_mode"], r["seed"]) for r in rows}
    derivative = f",{args.derivative_options}" if args.derivative_options else ""
    for seed in map(int, args.seeds.split(",")):
        for name in args.maps.split(","):
            for mode in LR_MODES:
                if (name, mode, seed) in done or (name == "ce" and mode == "layerwise"):
                    continue
                began = time.time()
                best = train_with_layer_lr(
                    args.out / f"{name}-{mode}-{seed}", teacher_checkpoint=args.teacher,
                    teacher_model=args.teacher_model, model=args.model,
                    kd="none" if name == "ce" else f"jsd:map={name}{derivative if name in DERIVATIVE_MAPS else ''}", lr_mode=mode, every=args.every,
                    epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, dataset=args.data,
                    data_root=args.data_root, seed=seed, device=args.device, overwrite=True)
                row = {"map": name, "lr_mode": mode, "seed": seed, "epochs": args.epochs, "every": args.every,
                       "map_options": args.derivative_options if name in DERIVATIVE_MAPS else "",
                       **best, "time_s": time.time() - began}
                rows.append(row)
                with rows_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print("| map | LR update | test accuracy (mean ± std) | seeds |\n| --- | --- | --- | --- |")
    for name in args.maps.split(","):
        for mode in LR_MODES:
            accs = [100 * r["test_acc"] for r in rows if r["map"] == name and r["lr_mode"] == mode]
            if accs:
                std = statistics.stdev(accs) if len(accs) > 1 else float("nan")
                print(f"| {name} | {mode} | {statistics.mean(accs):.2f} ± {std:.2f} | {len(accs)} |")


if __name__ == "__main__":
    main()
