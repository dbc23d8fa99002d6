"""``hyperkd bench``: runs the pytest-benchmark suites under bench/ and prints their tables."""
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HELP = "run the fused-op benchmarks (fused vs eager vs torch.compile) and print their tables"
REPO = Path(__file__).resolve().parents[2]
SUITES = {"attention_transfer": "bench/bench_attention_transfer.py", "kd": "bench/bench_kd.py",
          "siren": "bench/bench_siren.py"}
# glibc returns freed blocks above its trim threshold to the OS, so each step's freshly allocated
# gradients are page-faulted in again: on the 2-core CI machines that cost more than the kernels
# being timed and varied from run to run. PyTorch's CPU tuning guide swaps in a caching allocator
# (jemalloc/tcmalloc) for the same reason; raising glibc's thresholds does it without a dependency.
# Values already in the environment win.
CACHING_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(1 << 32), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


def add_arguments(parser):
    parser.add_argument("--suite", choices=sorted(SUITES), default="attention_transfer")
    parser.add_argument("--full", action="store_true", help="every network, batch size and kind")
    parser.add_argument("-k", "--select", metavar="EXPR", default=None,
                        help="only the cases whose id matches this pytest -k expression")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results path (default bench/results/<suite>-<device>.json)")


def run(args) -> int:
    suite = REPO / SUITES[args.suite]
    if not suite.exists():
        raise FileNotFoundError(f"benchmark suite {suite} not found: `hyperkd bench` runs from a "
                                f"source checkout of hyperkd")
    out = args.out or REPO / "bench" / "results" / f"{args.suite}-latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", str(suite), "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={out}", "--benchmark-columns=median,iqr,rounds", "--rootdir", str(REPO)]
    if args.full:
        cmd.append("--full")
    if args.select:
        cmd += ["-k", args.select]
    code = subprocess.call(cmd, cwd=REPO, env={**CACHING_MALLOC_ENV, **os.environ})
    if code != 0:
        return code
    print(render(json.loads(out.read_text())))
    print(f"\nresults: {out}")
    return 0


BASELINES = ("eager", "compiled")


def machine_line(stamp: dict) -> list:
    """The machine's rates before → after the run, as one line (none for results without them)."""
    rates = stamp.get("machine_rates")
    if not rates:
        return []
    before, after = rates["before"], rates["after"]
    return [f"machine: GEMM {before['gemm_gflops']} → {after['gemm_gflops']} GFLOP/s, "
            f"copy {before['copy_gbps']} → {after['copy_gbps']} GB/s (before → after the run)"]


def render(results: dict) -> str:
    """A markdown table: per case, median time and peak extra memory of each implementation, the
    fused op's speed-ups, and its workspace relative to eager's. Workspace is the peak less the
    ``output_bytes`` a case declares (the gradients every implementation returns). A baseline that
    was skipped shows as "–"; other libraries' rows (peers) follow in a second table."""
    rows = defaultdict(dict)
    for b in results["benchmarks"]:
        info = b["extra_info"]
        key = (info["network"], info["batch"], info["kind"])
        rows[key][info["impl"]] = (b["stats"]["median"], info["peak_extra_bytes"], info.get("output_bytes", 0))
    stamp = results.get("hyperkd", {})
    mib = 2 ** 20
    lines = [f"device: {stamp.get('device', '?')}, torch {stamp.get('torch', '?')}, "
             f"triton {stamp.get('triton', '?')}, {stamp.get('date', '?')}", *machine_line(stamp), "",
             "| case | fused ms | eager ms | compiled ms | vs eager | vs compiled "
             "| fused MiB | eager MiB | compiled MiB | fused/eager workspace |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    peers = []
    for (net, batch, kind), impls in sorted(rows.items()):
        if "fused" not in impls:
            continue
        tf, mf, out = impls["fused"]
        base = [impls.get(name) for name in BASELINES]
        times = " | ".join(f"{b[0] * 1e3:.2f}" if b else "–" for b in base)
        ratios = " | ".join(f"{b[0] / tf:.2f}x" if b else "–" for b in base)
        mems = " | ".join(f"{b[1] / mib:.1f}" if b else "–" for b in base)
        eager = impls.get("eager")
        workspace = f"{(mf - out) / max(eager[1] - out, 1):.0%}" if eager else "–"
        lines.append(f"| {net} B={batch} {kind} | {tf * 1e3:.2f} | {times} | {ratios} | {mf / mib:.1f} "
                     f"| {mems} | {workspace} |")
        for name, (tp, mp, _) in impls.items():
            if name not in ("fused",) + BASELINES:
                peers.append(f"| {net} B={batch} {kind} | {name} | {tf * 1e3:.2f} | {tp * 1e3:.2f} "
                             f"| {tp / tf:.2f}x | {mf / mib:.1f} | {mp / mib:.1f} | {mp / max(mf, 1):.1f}x |")
    if peers:
        lines += ["", "| case | peer | fused ms | peer ms | vs peer | fused MiB | peer MiB | peer/fused MiB |",
                  "|---|---|---|---|---|---|---|---|", *peers]
    return "\n".join(lines)
