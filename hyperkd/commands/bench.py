"""``hyperkd bench``: runs the pytest-benchmark suites under bench/ and prints their tables."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HELP = "run the fused-op benchmarks (fused vs eager vs torch.compile) and print their tables"
REPO = Path(__file__).resolve().parents[2]
# One suite per op family (bench/bench_<family>.py), the hypernetised training step and the
# end-to-end comparison with other libraries.
SUITES = {"attention_transfer": "bench/bench_attention_transfer.py",
          "activation_boundary": "bench/bench_activation_boundary.py",
          "relational": "bench/bench_relational.py", "channelwise": "bench/bench_channelwise.py",
          "makd": "bench/bench_affinity.py", "jsd_map": "bench/bench_jsd_map.py",
          "siren": "bench/bench_siren.py", "hyper": "bench/bench_hyper.py", "peers": "bench/bench_peers.py"}
# Suites that were split, by the suites that now hold their cases.
SPLIT = {"kd": ("attention_transfer", "activation_boundary", "relational", "channelwise")}
# glibc returns freed blocks above its trim threshold to the OS, so each step's freshly allocated
# gradients are page-faulted in again: on the 2-core CI machines that cost more than the kernels
# being timed and varied from run to run. PyTorch's CPU tuning guide swaps in a caching allocator
# (jemalloc/tcmalloc) for the same reason; raising glibc's thresholds does it without a dependency.
# Values already in the environment win.
CACHING_MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(1 << 32), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


def add_arguments(parser):
    parser.add_argument("--suite", type=suite_name, choices=sorted(SUITES), default="attention_transfer")
    parser.add_argument("--full", action="store_true", help="every network, batch size and kind")
    parser.add_argument("-k", "--select", metavar="EXPR", default=None,
                        help="only the cases whose id matches this pytest -k expression")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON-lines file the run's rows are appended to, or a folder for "
                             "<suite>.jsonl (default: bench/results/<suite>.jsonl of the source checkout)")
    parser.add_argument("--source", type=Path, default=Path(os.environ.get("HYPERKD_SOURCE", REPO)),
                        help="the hyperkd source checkout whose bench/ suites run (default: $HYPERKD_SOURCE, "
                             "else the checkout this hyperkd is installed from)")


def suite_name(name: str) -> str:
    """``--suite``'s value; a split suite's name says which suites hold its cases now."""
    if name in SPLIT:
        raise argparse.ArgumentTypeError(f"the {name} suite is split by op family: run --suite "
                                         f"{', '.join(SPLIT[name])} (one at a time)")
    return name


def suite_path(source: Path, suite: str) -> Path:
    """The suite's file in the source checkout ``source``; a clear error where there is none: the
    suites are pytest-benchmark files of the checkout (its bench/ harness, results data and
    renderer), not part of the installed package."""
    path = Path(source) / SUITES[suite]
    if not path.is_file():
        raise FileNotFoundError(
            f"benchmark suite {SUITES[suite]} not found under {source}: `hyperkd bench` runs the suites "
            f"in bench/ of a hyperkd source checkout, and this hyperkd is installed without one. Clone "
            f"the repository, then run `hyperkd bench --source PATH/TO/CHECKOUT` (or set HYPERKD_SOURCE, "
            f"or run `make bench` inside the checkout)")
    return path


def run(args) -> int:
    source = Path(args.source).resolve()
    suite = suite_path(source, args.suite)
    out = results_path(args.out or source / "bench" / "results" / f"{args.suite}.jsonl", args.suite)
    with tempfile.TemporaryDirectory() as tmp:
        run_json = Path(tmp) / "run.json"
        cmd = [sys.executable, "-m", "pytest", str(suite), "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={run_json}", f"--results={Path(out).resolve()}",
               "--benchmark-columns=median,iqr,rounds", "--rootdir", str(source)]
        if args.full:
            cmd.append("--full")
        if args.select:
            cmd += ["-k", args.select]
        env = {**CACHING_MALLOC_ENV, **os.environ}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
        code = subprocess.call(cmd, cwd=source, env=env)
        if code != 0:
            return code
        sys.path.insert(0, str(source))  # bench.render_results for the table
        print(render(json.loads(run_json.read_text())))
    print(f"\nrows appended to {out}; `python bench/render_results.py` renders every run")
    return 0


def results_path(out: Path, suite: str) -> Path:
    """Where the rows go: ``out``, or ``out/<suite>.jsonl`` when ``out`` is a folder. Checked
    before the run, so that a long benchmark never ends unable to write what it measured."""
    path = Path(out) / f"{suite}.jsonl" if Path(out).is_dir() else Path(out)
    folder = next(p for p in (path.parent, *path.parent.absolute().parents) if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out: cannot write {path}: {folder} is not a writable folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def machine_line(stamp: dict) -> list:
    """The machine's rates before → after the run, as one line (none for results without them)."""
    rates = stamp.get("machine_rates")
    if not rates:
        return []
    before, after = rates["before"], rates["after"]
    return [f"machine: GEMM {before['gemm_gflops']} → {after['gemm_gflops']} GFLOP/s, "
            f"copy {before['copy_gbps']} → {after['copy_gbps']} GB/s (before → after the run)"]


def render(results: dict) -> str:
    """One run's pytest-benchmark JSON as markdown: its stamp, the machine's rates, and
    ``bench/render_results.py``'s table: per op case fused vs eager vs torch.compile (peers apart),
    or the measured fields of each row (the hypernetised step)."""
    from bench.measure import rows_from_benchmark_json
    from bench.render_results import machine, rows_table

    stamp = results.get("hyperkd", {})
    rows = rows_from_benchmark_json(results)
    return "\n".join([f"{machine(stamp)}; torch {stamp.get('torch', '?')}, triton {stamp.get('triton', '?')}, "
                      f"commit {stamp.get('commit', '?')}, {stamp.get('date', '?')}", *machine_line(stamp), "",
                      *(rows_table(rows) if rows else ["no case was timed"])])
