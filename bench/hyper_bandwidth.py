"""Achieved fraction of memory bandwidth of the W-bound hypernetwork kernels, on CUDA (the GPU
target) or, with ``--device cpu``, on the CPU: generation forward (``hyper_generate``, Eq. 2–3)
and the fused backward, i.e. the generation's backward (``hyper_generate_backward``: dz and dθ)
followed by the in-place W step (``hyper_fused_step_``), timed alone and together, and the W step
that also generates the next step's W·z (the chained step's pass).

fraction = bytes moved / median time / peak bandwidth. Bytes moved count every tensor a kernel
must read or write once (see the ``*_bytes`` functions): the least DRAM traffic the operation
can have, so a fraction near 1 means the kernel is as fast as the memory allows. The peak is
measured here, not read off a datasheet: the best of ``--repeats`` copies of a ``--copy-gib``
buffer on the device, counted as read + write. Times are those of one op call each (CUDA events;
wall clock on the CPU), the op's host-side set-up (layer tables) included, median of ``--repeats``
after two warm-up calls (the first compiles the Triton kernels).

Usage: ``PYTHONPATH=. python bench/hyper_bandwidth.py [--network vgg19_bn] [--hidden 16,64,128]
[--gammas 1] [--optimizer sgd_momentum] [--weight-dtype bf16] [--state-dtype bf16] [--device cpu]
[--out FILE]``. With the default ``--device cuda`` and no CUDA it exits at once, saying so.
"""
import argparse
import itertools
import json
import statistics
import sys

import torch

from bench._hyper_step import create_network, resolve_device
from bench.measure import stamp, timed
from hyperkd.ops.hyper_generate import ADAM, ADAMW, SGD

FP32 = 4
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STATE_SLOTS = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}  # P×d state tensors
ALGORITHMS = {"sgd": SGD, "sgd_momentum": SGD, "adam": ADAM, "adamw": ADAMW}


def generation_bytes(P: int, d: int, B: int, w_size: int) -> int:
    """Eq. 2–3 forward: W read once for all B_γ codes (P·d), θ0 read (P), z read (B·d), the B_γ
    weight sets written (B·P, fp32)."""
    return P * d * w_size + (P + B * d + B * P) * FP32


def backward_bytes(P: int, d: int, B: int, w_size: int, programs: int) -> int:
    """``hyper_generate_backward``: W read once (P·d), the upstream gradients read and packed into
    dθ (B·P each way), every program's partial dz written and then summed (programs·B·d each way)
    and dz written (B·d)."""
    return P * d * w_size + (2 * B * P + 2 * programs * B * d + B * d) * FP32


def step_bytes(P: int, d: int, B: int, w_size: int, slots: int, state_size: int) -> int:
    """``hyper_fused_step_``: W and each of its ``slots`` state tensors read and written in place
    (P·d each way), the factors dθ (B·P) and z (B·d) read once."""
    return 2 * P * d * (w_size + slots * state_size) + (B * P + B * d) * FP32


def next_generation_bytes(P: int, d: int, B: int) -> int:
    """What a chained W step adds to ``step_bytes``: the next codes read (B·d), W·z written (B·P)."""
    return (B * d + B * P) * FP32


def training_step_bytes(P: int, d: int, B: int, w_size: int, slots: int, state_size: int, chained: bool) -> int:
    """The W-bound traffic of one fused training step: generation, its backward and the W step.
    Unchained, generation reads W (``generation_bytes``); chained, the step also reads the next
    codes and writes the next W·z (B·d + B·P), and generation reads that instead of W (the carried
    B·P and θ0, the B·P weights written). Per-program partial sums of dz are left out (they are
    B·d per BLOCK of rows, a few MiB at most)."""
    if chained:
        generate = (2 * B * P + P) * FP32
        step = step_bytes(P, d, B, w_size, slots, state_size) + next_generation_bytes(P, d, B)
    else:
        generate = generation_bytes(P, d, B, w_size)
        step = step_bytes(P, d, B, w_size, slots, state_size)
    return generate + backward_bytes(P, d, B, w_size, 0) + step


def call_seconds(fn, device: torch.device) -> float:
    """Seconds one call of ``fn`` takes: CUDA events on CUDA, the wall clock elsewhere."""
    if device.type != "cuda":
        return timed(fn, device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def median_seconds(fn, device: torch.device, repeats: int) -> float:
    """Median time of one call of ``fn`` on ``device``, after two warm-up calls."""
    for _ in range(2):
        fn()
    return statistics.median(call_seconds(fn, device) for _ in range(repeats))


def peak_bandwidth(nbytes: int, repeats: int, device: torch.device) -> float:
    """Bytes/s of the best of ``repeats`` copies of ``nbytes`` on ``device`` (read + write)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * nbytes / min(call_seconds(lambda: dst.copy_(src), device) for _ in range(repeats))


def parse_args(argv):
    parser = argparse.ArgumentParser(description="achieved memory bandwidth of generation and the fused "
                                                 "backward, on CUDA or the CPU")
    parser.add_argument("--network", default="vgg19_bn", help="zoo network whose Conv2d layers are generated")
    parser.add_argument("--hidden", default="16,64,128", help="hidden widths; d is the last")
    parser.add_argument("--gammas", type=int, default=1, help="B_γ, codes per call")
    parser.add_argument("--optimizer", choices=sorted(STATE_SLOTS), default="sgd_momentum")
    parser.add_argument("--weight-dtype", choices=sorted(DTYPES), default="fp32", help="W's storage")
    parser.add_argument("--state-dtype", choices=sorted(DTYPES), default="fp32", help="the state's storage")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--copy-gib", type=float, default=1.0, help="size of the peak-bandwidth copy")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", help="JSON file for the results (default: print only)")
    args = parser.parse_args(argv)
    if args.gammas < 1 or args.repeats < 1 or not args.copy_gib > 0:
        parser.error("--gammas and --repeats: expected positive counts; --copy-gib: a positive size")
    return args


def run(args, device: torch.device) -> dict:
    """Every row measured on ``device``: bytes, median seconds and fraction of the measured peak."""
    from hyperkd.hyper import LayoutPlan, find_modules
    from hyperkd.kernels.hyper_generate import block_schedule
    from hyperkd.ops.hyper_generate import op_geometry

    peak = peak_bandwidth(int(args.copy_gib * 2 ** 30), args.repeats, device)  # before W takes the memory
    net = create_network(args.network)
    plan = LayoutPlan.from_modules(net, find_modules(net))
    geometry = op_geometry([e.shape for e in plan], [False] * len(plan))
    P, d, B = plan.total, int(args.hidden.split(",")[-1]), args.gammas
    w_dtype, s_dtype = DTYPES[args.weight_dtype], DTYPES[args.state_dtype]
    slots = STATE_SLOTS[args.optimizer]
    W = torch.randn(P, d, dtype=w_dtype, device=device).mul_(0.01)
    z = torch.randn(B, d, device=device)
    theta0 = torch.randn(P, device=device)
    empty = W.new_empty(0, dtype=torch.float32)
    state = [torch.zeros(P, d, dtype=s_dtype, device=device) if i < slots else empty for i in range(2)]
    grads = list(torch.ops.hyperkd.hyper_generate(W, z, theta0, *geometry))  # same shapes and layout
    programs = block_schedule(plan.numels, device)[2]
    step_count = itertools.count(1)  # Adam's bias corrections need the 1-based step

    def generate():
        torch.ops.hyperkd.hyper_generate(W, z, theta0, *geometry)

    def backward():
        return torch.ops.hyperkd.hyper_generate_backward(grads, W, z, *geometry)[1]

    beta1 = 0.0 if args.optimizer == "sgd" else 0.9  # plain SGD: no momentum buffer

    def step(dtheta, z_next=None):
        t = next(step_count)
        torch.ops.hyperkd.hyper_fused_step_(W, state[0], state[1], dtheta, z, ALGORITHMS[args.optimizer],
                                            1e-6, beta1, 0.999, 1e-8, 0.0, t, t, z_next)

    dtheta = backward()
    w_size, s_size = W.element_size(), torch.finfo(s_dtype).bits // 8
    moved = {"generation forward": generation_bytes(P, d, B, w_size),
             "generation backward": backward_bytes(P, d, B, w_size, programs),
             "fused W step": step_bytes(P, d, B, w_size, slots, s_size)}
    moved["fused backward"] = moved["generation backward"] + moved["fused W step"]
    moved["fused W step + next generation"] = moved["fused W step"] + next_generation_bytes(P, d, B)
    calls = {"generation forward": generate, "generation backward": backward,
             "fused W step": lambda: step(dtheta), "fused backward": lambda: step(backward()),
             "fused W step + next generation": lambda: step(dtheta, z)}
    rows = {name: (moved[name], median_seconds(calls[name], device, args.repeats)) for name in moved}
    return {"network": args.network, "P": P, "d": d, "gammas": B, "optimizer": args.optimizer,
            "weight_dtype": args.weight_dtype, "state_dtype": args.state_dtype,
            "peak_bytes_per_s": peak, "peak_from": f"best of {args.repeats} {device.type} copies of "
                                                  f"{args.copy_gib:g} GiB, read + write counted",
            "rows": {name: {"bytes": n, "seconds": s, "fraction_of_peak": n / s / peak}
                     for name, (n, s) in rows.items()}}


def main(argv) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)  # exits with the reason for cuda on a machine without CUDA
    result = run(args, device)
    print(f"{result['network']}: P = {result['P']:,}, d = {result['d']}, B_γ = {result['gammas']}, "
          f"{result['optimizer']}, W {result['weight_dtype']}, state {result['state_dtype']}")
    print(f"peak {result['peak_bytes_per_s'] / 1e9:.0f} GB/s ({result['peak_from']})")
    for name, row in result["rows"].items():
        print(f"  {name:30s} {row['bytes'] / 2 ** 30:8.3f} GiB  {row['seconds'] * 1e3:8.3f} ms  "
              f"{row['bytes'] / row['seconds'] / 1e9:7.0f} GB/s  {row['fraction_of_peak']:.2f} of peak")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**stamp(device), **result}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
