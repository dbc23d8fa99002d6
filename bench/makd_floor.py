"""What bounds the fused mAKD call against eager for the inner-product affinities (docs/makd.md).

Two floors, measured on this machine and appended as rows to ``bench/results/makd_floor.jsonl``:

- *Products* (long features): eager IP computes the teacher's and the student's Gram and the two
  products of Q·Qᵀ's backward, 4·B²·D multiply-adds; the fused call needs half of each Gram (they
  are symmetric) and dQ = S·Q, 2·B²·D. At the machine's GEMM rate (``machine_rates``) the row gives
  both times: their ratio is 2 before any epilogue, so ≥ 2× eager needs products faster than MKL's.
- *Calls* (pooled features): per-call times of the fused loss through the registry, the eager
  reference, the two ops alone (teacher summary; loss with gradients) and ``torch.autograd.grad`` of
  a one-op graph, each the best of five loops of ``--calls`` calls.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/makd_floor.py [--cases 64:64:ip-none-l1 ...] [--out FILE]
"""
import argparse
import json
import os
import time

import torch

import hyperkd.kd as kd
from hyperkd.ops import affinity as aff_ops
from hyperkd.reference import affinity as reference

from bench.measure import append_rows, machine_rates, stamp

DEFAULT_CASES = ("64:64:ip-none-l1", "256:64:ip-none-l2", "256:16384:ip-none-l2", "256:16384:cs-l2-sl1")
RESULTS = os.path.join(os.path.dirname(__file__), "results", "makd_floor.jsonl")


def per_call_us(fn, calls: int) -> float:
    """Best of five loops of ``calls`` calls, in µs per call, after a warm-up loop."""
    for _ in range(max(1, calls // 10)):
        fn()
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - began) / calls)
    return best * 1e6


def measure(B: int, D: int, variant: str, calls: int, gemm_gflops: float) -> dict:
    aff, norm, loss = variant.split("-")
    torch.manual_seed(0)
    student = torch.randn(B, D).relu_().requires_grad_()
    teacher = torch.randn(B, D).relu_()
    method = kd.make_method(f"makd:aff={aff},norm={norm},loss={loss}")
    summary = aff_ops.affinity_teacher_summary(teacher, aff, norm)
    detached, scalar = student.detach(), torch.ones(4, requires_grad=True)
    macs = B * B * D
    timings = {
        "fused_us": lambda: torch.autograd.grad(kd.layerwise_loss(method, student, teacher), [student]),
        "eager_us": lambda: torch.autograd.grad(reference.makd_loss(student, teacher, aff, norm, loss), [student]),
        "summary_op_us": lambda: torch.ops.hyperkd.affinity([teacher], aff, norm),
        "loss_with_grad_op_us": lambda: torch.ops.hyperkd.affinity_loss_with_grad([detached], [summary], aff,
                                                                                   norm, loss),
        "trivial_grad_us": lambda: torch.autograd.grad(scalar.sum(), [scalar]),
    }
    row = {"batch": B, "width": D, "kind": variant, "gemm_gflops": gemm_gflops,
           # multiply-adds at the GEMM rate: 2 flops each
           "eager_products_us": 4 * macs * 2 / (gemm_gflops * 1e3),
           "fused_products_us": 2 * macs * 2 / (gemm_gflops * 1e3)}
    for name, fn in timings.items():
        row[name] = round(per_call_us(fn, calls if B * B * D < 2 ** 22 else max(3, calls // 300)), 2)
    row["eager_over_fused"] = round(row["eager_us"] / row["fused_us"], 3)
    return row


def case_of(parser, text: str):
    """(B, D, "aff-norm-loss") from ``--cases``' B:D:AFF-NORM-LOSS, or the parser's error."""
    parts = text.split(":")
    if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() and int(parts[0]) >= 2 and int(parts[1]) >= 1:
        aff_norm_loss = parts[2].split("-")
        if len(aff_norm_loss) != 3:
            parser.error(f"--cases: {text!r}: expected AFF-NORM-LOSS after the second colon")
        try:
            aff_ops.check_variant(*aff_norm_loss)
        except ValueError as e:
            parser.error(f"--cases: {text!r}: {e}")
        return int(parts[0]), int(parts[1]), parts[2]
    parser.error(f"--cases: expected B:D:AFF-NORM-LOSS with B ≥ 2 and D ≥ 1 (e.g. 64:64:ip-none-l1), got {text!r}")


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, metavar="B:D:AFF-NORM-LOSS")
    parser.add_argument("--calls", type=int, default=3000, help="calls per timed loop at small sizes")
    parser.add_argument("--out", default=RESULTS, help="JSON-lines file the rows are appended to")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error(f"--calls: expected a positive number of calls, got {args.calls}")
    cases = [case_of(parser, case) for case in args.cases]  # all checked before any timing
    device = torch.device("cpu")
    gemm = machine_rates(device)["gemm_gflops"]
    rows = []
    for B, D, variant in cases:
        row = {**stamp(device), **measure(B, D, variant, args.calls, gemm)}
        append_rows(args.out, [row])
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
