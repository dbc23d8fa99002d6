"""GNoRP's share of a training step (Li & Maki Eq. 15): a full distillation step of ResNet-20 on
digits-sized batches (3×32×32, 10 classes) with mAKD (CS, L2, SL1) at the penultimate features from
a ResNet-20 teacher, once with a fixed KD weight and once with ``gnorp:r=3.5``, interleaved.

A step is what the training loop runs (:class:`hyperkd.train.step.DistillStep`): teacher forward,
student forward, the losses, GNoRP's update where it is on (two ``torch.autograd.grad`` calls w.r.t.
z and its Adam step), the student's backward and its SGD step. The two steps alternate, each on its
own copy of the same student and teacher, so that a shared machine's load falls on both alike; the
overhead is median(GNoRP step) / median(fixed step) − 1. On a loaded machine that difference of two
noisy medians can be smaller than their noise, so GNoRP's own work is also timed inside its steps
(each ``GNoRP.update`` call: both gradient norms and the Adam step) and given as a share of the
fixed step. Rows go to ``bench/results/gnorp.jsonl``.

    python bench/bench_gnorp.py [--batch 64] [--steps 30] [--results FILE]
"""
import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from bench.measure import append_rows, machine_rates, stamp, timed
from hyperkd import data, models
from hyperkd.kd import parse_weight
from hyperkd.kd.layerkd import LayerKD
from hyperkd.train.step import DistillStep, KDTerm

METHOD = "makd:aff=cs,norm=l2,loss=sl1"
WEIGHTS = ("1.0", "gnorp:r=3.5")
RESULTS = Path(__file__).resolve().parent / "results" / "gnorp.jsonl"


def timing_updates(gnorp, times: list):
    """``gnorp`` whose every :meth:`~hyperkd.kd.gnorp.GNoRP.update` appends its seconds to ``times``."""
    update = gnorp.update

    def timed_update(*args):
        began = time.perf_counter()
        out = update(*args)
        times.append(time.perf_counter() - began)
        return out
    gnorp.update = timed_update
    return gnorp


def training_step(student, teacher, weight: str, update_times: list):
    """One SGD step of ``student`` distilled from ``teacher``, as a closure over a batch."""
    layerkd = LayerKD(METHOD, student, teacher)
    weight = parse_weight(weight)
    if isinstance(weight, torch.nn.Module):
        weight = timing_updates(weight, update_times)
    step = DistillStep(student, teacher, [KDTerm("makd", layerkd, weight)], epochs=1, lambda0=0.1)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def run(x, y):
        out = step(x, y, 0)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
    return run


def measure(batch: int, steps: int):
    """({weight: per-step seconds} of the interleaved steps after two warm-up steps each, the
    seconds of GNoRP's updates within the timed steps)."""
    torch.manual_seed(0)
    train, _, _ = data.loaders("digits", batch, augment=False)
    x, y = next(iter(train))
    student = models.create("resnet20", num_classes=data.NUM_CLASSES["digits"])
    teacher = models.create("resnet20", num_classes=data.NUM_CLASSES["digits"]).eval().requires_grad_(False)
    updates = []
    runs = {w: training_step(copy.deepcopy(student), copy.deepcopy(teacher), w, updates) for w in WEIGHTS}
    device = torch.device("cpu")
    for run in runs.values():
        for _ in range(2):
            run(x, y)
    updates.clear()
    times = {w: [] for w in WEIGHTS}
    for _ in range(steps):
        for w, run in runs.items():
            times[w].append(timed(lambda: run(x, y), device))
    return times, updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each weighting")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON-lines file the rows are appended to")
    args = parser.parse_args()
    device = torch.device("cpu")
    run_stamp = {**stamp(device), "machine_rates": {"before": machine_rates(device)}}
    times, updates = measure(args.batch, args.steps)
    run_stamp["machine_rates"]["after"] = machine_rates(device)
    medians = {w: statistics.median(t) for w, t in times.items()}
    overhead = medians[WEIGHTS[1]] / medians[WEIGHTS[0]] - 1
    update = statistics.median(updates)
    update_share = update / medians[WEIGHTS[0]]
    rows = []
    for w, t in times.items():
        q = statistics.quantiles(t, n=4)
        rows.append({**run_stamp, "network": "resnet20", "data": "digits", "batch": args.batch, "kind": METHOD,
                     "kd_weight": w, "median_s": medians[w], "iqr_s": q[2] - q[0], "rounds": len(t),
                     "gnorp_overhead": overhead if w == WEIGHTS[1] else None,
                     "gnorp_update_s": update if w == WEIGHTS[1] else None,
                     "gnorp_update_share": update_share if w == WEIGHTS[1] else None})
    append_rows(args.results, rows)
    print(f"ResNet-20 digits B={args.batch}, {METHOD}, threads={torch.get_num_threads()}: "
          + ", ".join(f"{w} {medians[w] * 1e3:.1f} ms" for w in WEIGHTS)
          + f"; GNoRP overhead {overhead:+.1%}; its update {update * 1e3:.2f} ms, {update_share:.1%} of the "
          f"fixed step (rows: {args.results})")


if __name__ == "__main__":
    main()
