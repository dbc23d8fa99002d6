"""Renders the benchmark results data (``bench/results/<suite>.jsonl``, one row per measurement) as
markdown: ``bench/results/README.md`` (one table per suite and machine, each case's latest run) and
the README's headline table (per op family, the fused op against eager and torch.compile).

    python bench/render_results.py              # rewrites bench/results/README.md (and the
                                                # peers bar plot, bench/results/peers.png)
    python bench/render_results.py --readme     # the headline table: into README.md between its
                                                # markers, or on stdout when it has none
    python bench/render_results.py --suite relational   # one suite's tables on stdout
    python bench/render_results.py --docs       # the docs' generated "Measured" blocks
"""
import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.measure when run as a script
from bench.measure import read_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
HEADLINE_BEGIN, HEADLINE_END = "<!-- headline:begin -->", "<!-- headline:end -->"
# The stamp every row carries; everything else describes the case or what was measured.
STAMP = ("device", "cpu", "threads", "vector_bits", "torch", "triton", "commit", "date", "malloc_env",
         "machine_rates", "hyperlight", "torchdistill", "note")
# What names a case in each suite; the implementations of one case are compared within one run.
# A peers case's two sides may come from separate processes (a VGG-11-bn peer step needs most of the
# machine's memory alone), so each side is its own case there.
CASE_KEYS = {"hyper": ("network", "impl", "hidden", "optimizer"), "siren_quality": ("table", "name"),
             "peers": ("network", "batch", "kind", "impl"), "makd_floor": ("batch", "width", "kind")}
OP_CASE = ("network", "batch", "kind")
BASELINES = ("eager", "compiled")
MIB = 2 ** 20
# Op families of the headline, by suite and the case kinds that measure them.
FAMILIES = {
    "attention_transfer": {"*": "attention transfer (AT)"},
    "activation_boundary": {"ab": "activation boundary (AB)"},
    "relational": {"sp": "similarity-preserving (SP)", "rkd-d": "relational KD, distance (RKD-D)",
                   "rkd-a": "relational KD, angle (RKD-A)"},
    "channelwise": {"cwd": "channel-wise distillation (CwD)", "fitnets": "FitNets hint"},
    "siren": {"fwd+bwd": "SIREN weight decode, fwd+bwd (4096 kernels)",
              "fwd": "SIREN weight decode, every kernel (forward)"},
    "makd": {"*": "affinity KD (mAKD), every variant"},  # "*": the label of any kind
}
# The suites of layer-wise KD losses over every conv output of a network: the headline's default
# machine is the newest of their runs'.
LAYERWISE = ("attention_transfer", "activation_boundary", "relational", "channelwise")


def machine(row: dict) -> str:
    """The machine a row was measured on, as the tables name it."""
    if row.get("device", "cpu") != "cpu":
        return row["device"]
    parts = [row.get("cpu") or "CPU, model not recorded"]
    if row.get("threads"):
        parts.append(f"{row['threads']} thread{'' if row['threads'] == 1 else 's'}")
    if row.get("vector_bits"):
        parts.append(f"{row['vector_bits']}-bit vectors")
    return ", ".join(parts)


def case_of(row: dict, suite: str) -> tuple:
    return tuple(row.get(k) for k in CASE_KEYS.get(suite, OP_CASE))


def latest(rows: list, suite: str) -> dict:
    """{machine: rows of each case's latest run on it}: a later run of some cases replaces those
    cases only, so a machine's table combines its newest measurement of every case."""
    runs = defaultdict(lambda: defaultdict(list))
    for row in rows:
        runs[(machine(row), case_of(row, suite))][row["date"]].append(row)
    out = defaultdict(list)
    for (name, _), by_date in sorted(runs.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        out[name] += by_date[max(by_date)]
    return dict(out)


def _impls(rows: list) -> dict:
    """{(network, batch, kind): {impl: (median s, peak bytes, output bytes)}}."""
    cases = defaultdict(dict)
    for r in rows:
        cases[(r["network"], r["batch"], r["kind"])][r["impl"]] = (
            r["median_s"], r.get("peak_extra_bytes"), r.get("output_bytes", 0))
    return cases


def _order(case: tuple) -> tuple:
    net, batch, kind = case
    return str(net), batch or 0, str(kind)


def _mib(peak) -> str:
    return "–" if peak is None else f"{peak / MIB:.1f}"


def workspace(fused, eager) -> float:
    """The fused op's workspace relative to eager's: peaks less what both return (the gradients)."""
    return (fused[1] - fused[2]) / max(eager[1] - fused[2], 1)


def case_table(rows: list) -> list:
    """Markdown lines: per case, median time and peak extra memory of each implementation, the
    fused op's speed-ups and its workspace relative to eager's. Workspace is the peak less the
    ``output_bytes`` a case declares (the gradients every implementation returns). A baseline that
    was skipped shows as "–"; other libraries' rows (peers) follow in a second table, or stand
    alone where no case has a baseline."""
    cases = _impls(rows)
    lines = ["| case | fused ms | eager ms | compiled ms | vs eager | vs compiled "
             "| fused MiB | eager MiB | compiled MiB | fused/eager workspace |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    peers = []
    for (net, batch, kind), impls in sorted(cases.items(), key=lambda kv: _order(kv[0])):
        if "fused" not in impls or impls["fused"][0] is None:
            continue
        fused = impls["fused"]
        base = [impls.get(name) if impls.get(name, (None,))[0] is not None else None for name in BASELINES]
        times = " | ".join(f"{b[0] * 1e3:.2f}" if b else "–" for b in base)
        ratios = " | ".join(f"{b[0] / fused[0]:.2f}x" if b else "–" for b in base)
        mems = " | ".join(_mib(b[1]) if b else "–" for b in base)
        eager = impls.get("eager")
        space = f"{workspace(fused, eager):.0%}" if eager and eager[1] is not None else "–"
        lines.append(f"| {net} B={batch} {kind} | {fused[0] * 1e3:.2f} | {times} | {ratios} "
                     f"| {_mib(fused[1])} | {mems} | {space} |")
        for name, (tp, mp, _) in impls.items():
            if name not in ("fused",) + BASELINES and tp is not None:
                peers.append(f"| {net} B={batch} {kind} | {name} | {fused[0] * 1e3:.2f} | {tp * 1e3:.2f} "
                             f"| {tp / fused[0]:.2f}x | {_mib(fused[1])} | {_mib(mp)} "
                             f"| {mp / max(fused[1], 1):.1f}x |")
    peer_table = ["| case | peer | fused ms | peer ms | vs peer | fused MiB | peer MiB | peer/fused MiB |",
                  "|---|---|---|---|---|---|---|---|", *peers]
    if not any(name in impls for impls in cases.values() for name in BASELINES):
        return peer_table if peers else lines  # a suite of peers only (bench_peers.py)
    return lines + ([""] + peer_table if peers else [])


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def plain_table(rows: list) -> list:
    """Markdown lines of every row's case and measurement fields (lists left out)."""
    columns = list(dict.fromkeys(k for r in rows for k, v in r.items()
                                 if k not in STAMP and not isinstance(v, (list, dict))))
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows)]


def run_line(rows: list) -> str:
    """The dates, commits and versions behind one machine's table."""
    dates = sorted({r["date"][:10] for r in rows})
    commits = sorted({r["commit"] for r in rows if r.get("commit")})
    versions = sorted({f"torch {r['torch']}, triton {r.get('triton', '?')}" for r in rows if r.get("torch")})
    span = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    gemm = [rate["gemm_gflops"] for r in rows for rate in r.get("machine_rates", {}).values()]
    load = f"; the machine's fp32 GEMM ran at {min(gemm)}–{max(gemm)} GFLOP/s during the runs" if gemm else ""
    return (f"{span}; {'; '.join(versions) or 'versions not recorded'}; "
            f"commits {', '.join(c[:7] + ('+dirty' if c.endswith('+dirty') else '') for c in commits) or 'not recorded'}"
            f"{load}")


def rows_table(rows: list) -> list:
    """:func:`case_table` for the rows of op cases (implementations of one network, batch and
    kind), else :func:`plain_table` (e.g. the hypernetised training step's rows)."""
    is_op = all(k in rows[0] for k in ("impl", "median_s", "network", "batch", "kind"))
    return case_table(rows) if is_op else plain_table(rows)


def suite_markdown(suite: str, rows: list, level: str = "##") -> list:
    lines = [f"{level} {suite}", ""]
    for name, chosen in latest(rows, suite).items():
        lines += [f"{level}# {name}", "", run_line(chosen), "", *rows_table(chosen), ""]
    return lines


def suites() -> dict:
    return {p.stem: read_rows(p) for p in sorted(RESULTS.glob("*.jsonl"))}


PEERS_PLOT = RESULTS / "peers.png"


def peers_plot(rows: list, path: Path = PEERS_PLOT) -> str:
    """Bar plot of the peers suite on the machine of its newest row: step time and peak memory per
    case, hyperkd beside the peer composition. Returns that machine's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = machine(max(rows, key=lambda r: r["date"]))
    cases = _impls(latest(rows, "peers")[name])
    labels = [f"{net}\nB={batch} {kind}" for net, batch, kind in sorted(cases, key=_order)]
    impls = sorted({impl for by_impl in cases.values() for impl in by_impl}, key=lambda i: i != "fused")
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(labels)), 4.2))
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        values = [cases[c].get(impl, (None, None, 0)) for c in sorted(cases, key=_order)]
        xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(labels))]
        label = "hyperkd" if impl == "fused" else impl
        axes[0].bar(xs, [v[0] * 1e3 if v[0] else 0 for v in values], width, label=label)
        axes[1].bar(xs, [v[1] / MIB if v[1] else 0 for v in values], width, label=label)
    for ax, title in zip(axes, ("step time (ms, median)", "peak memory above the step's start (MiB)")):
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"One LayerKD-HN training step, {name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return name


def results_readme(data: dict) -> str:
    lines = ["# Benchmark results", "",
             "Generated by `python bench/render_results.py` from the rows in this folder: one "
             "`<suite>.jsonl` per suite, one JSON object per measurement, each stamped with the machine "
             "(device, CPU model, threads, the vector width the C++ kernels use), torch and triton "
             "versions, commit and the run's date. `hyperkd bench --suite SUITE` appends a run's rows. "
             "Times are medians of forward+backward (or of one training step); MiB are peak bytes "
             "allocated above what was live before the step; workspace is the peak less the "
             "gradients every implementation returns, relative to eager's. Each table shows, per "
             "machine, the latest run of every case.", ""]
    for suite, rows in data.items():
        lines += suite_markdown(suite, rows)
        if suite == "peers" and PEERS_PLOT.exists():
            lines += [f"![peers]({PEERS_PLOT.name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _family(suite: str, kind: str) -> str:
    names = FAMILIES.get(suite, {})
    if kind in names:
        return names[kind]
    suffix = kind.split(" ")[-1]
    return names.get(suffix, names.get("*", kind))


def _span(values: list, fmt: str, unit: str) -> str:
    """"lo–hi" of ``values`` in ``fmt`` with ``unit`` (one number where they agree), "–" for none."""
    if not values:
        return "–"
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return (lo if lo == hi else f"{lo}–{hi}") + unit


def family_table(data: dict, suites, machine_name: str):
    """(markdown lines, the rows behind them by suite): per op family of ``suites``, the range over the
    latest cases on the machines matching ``machine_name`` of the fused op's speed-up over eager
    and torch.compile and of its workspace relative to eager's."""
    families = defaultdict(lambda: defaultdict(list))
    chosen_rows = defaultdict(list)
    for suite in suites:
        matches = [rows for name, rows in latest(data.get(suite, []), suite).items() if machine_name in name]
        for rows in matches:
            chosen_rows[suite] += rows
            for (net, batch, kind), impls in _impls(rows).items():
                fused = impls.get("fused")
                if not fused or fused[0] is None:
                    continue
                cell = families[_family(suite, kind)]
                for name in BASELINES:
                    if impls.get(name, (None,))[0] is not None:
                        cell[name].append(impls[name][0] / fused[0])
                eager = impls.get("eager")
                if eager and eager[1] is not None and fused[1] is not None:
                    cell["workspace"].append(workspace(fused, eager))
    order = [name for names in FAMILIES.values() for name in names.values()]
    lines = ["| op family | vs eager | vs torch.compile | workspace (fused / eager) |",
             "|---|---|---|---|"]
    for family in sorted(families, key=lambda f: order.index(f) if f in order else len(order)):
        cell = families[family]
        lines.append(f"| {family} | {_span(cell['eager'], '{:.1f}', 'x')} | {_span(cell['compiled'], '{:.1f}', 'x')} "
                     f"| {_span([100 * w for w in cell['workspace']], '{:.0f}', '%')} |")
    return lines, chosen_rows


def _conditions(by_suite: dict) -> str:
    rows = [r for suite_rows in by_suite.values() for r in suite_rows]
    dates = sorted({r["date"][:10] for r in rows})
    nets = sorted({r["network"] for r in rows})
    batches = sorted({r["batch"] for suite in LAYERWISE for r in by_suite.get(suite, [])})
    kd = f" (KD: every conv output, B = {'/'.join(map(str, batches))})" if batches else ""
    decode = " (SIREN's full decode: forward)" if any(str(r.get("kind", "")).endswith(" fwd") for r in rows) else ""
    return (f"torch {rows[0]['torch']}; measured {dates[0] if len(dates) == 1 else dates[0] + ' to ' + dates[-1]}. "
            f"Medians of forward+backward{decode} over {', '.join(nets)}{kd}; ranges span those cases.")


def headline(data: dict, machine_name: str = None) -> str:
    """The README's headline: :func:`family_table` of the op-family suites on one machine
    (default: the machine of the newest row of the layer-wise KD suites), with its conditions."""
    if machine_name is None:
        layerwise = [r for suite in LAYERWISE for r in data.get(suite, [])]
        if not layerwise:
            raise SystemExit(f"no rows of the layer-wise suites ({', '.join(LAYERWISE)}) to choose a machine by")
        machine_name = machine(max(layerwise, key=lambda r: r["date"]))
    lines, rows = family_table(data, FAMILIES, machine_name)
    if not rows:
        raise SystemExit(f"--machine: no op-family rows measured on a machine matching {machine_name!r}")
    first = next(iter(rows.values()))[0]
    lines += ["", f"CPU: {machine(first)}, {_conditions(rows)} Every case: "
              f"[bench/results/README.md](bench/results/README.md)."]
    return "\n".join(lines)


def grid_summary(rows: list) -> list:
    """Markdown lines: per width D and batch B of a grid of variants (the mAKD suite's 80), how many
    variants the fused op runs at ≥ 2× eager and no slower than torch.compile, and the slowest
    ratio of each with its variant; and the fused op's largest workspace (peak less the returned
    gradients) in units of B² floats."""
    groups = defaultdict(list)
    for (net, batch, kind), impls in _impls(rows).items():
        if all(impls.get(name, (None,))[0] is not None for name in ("fused",) + BASELINES):
            groups[(net, batch)].append((kind, impls))
    lines = ["| D | B | variants | ≥ 2× eager | ≥ 1× compiled | slowest vs eager | slowest vs compiled "
             "| fused workspace, max (B² floats) |", "|---|---|---|---|---|---|---|---|"]
    for (net, batch), cases in sorted(groups.items(), key=lambda kv: (int(str(kv[0][0]).lstrip("D")), kv[0][1])):
        vs = {name: [(impls[name][0] / impls["fused"][0], kind) for kind, impls in cases] for name in BASELINES}
        space = max((impls["fused"][1] or 0) - impls["fused"][2] for _, impls in cases) / (4 * batch * batch)
        eager_min, compiled_min = min(vs["eager"]), min(vs["compiled"])
        lines.append(f"| {str(net).lstrip('D')} | {batch} | {len(cases)} | {sum(r >= 2 for r, _ in vs['eager'])} "
                     f"| {sum(r >= 1 for r, _ in vs['compiled'])} | {eager_min[0]:.2f}× ({eager_min[1]}) "
                     f"| {compiled_min[0]:.2f}× ({compiled_min[1]}) | {space:.1f} |")
    return lines


# Generated blocks of the docs that are not a suite's family table: marker name → (suite, renderer).
GRID_BLOCKS = {"makd_grid": ("makd", grid_summary)}


def grid_block(data: dict, name: str) -> str:
    """A doc's generated grid summary (:data:`GRID_BLOCKS`), per machine and thread count, newest first."""
    suite, render = GRID_BLOCKS[name]
    out = []
    by_machine = latest(data.get(suite, []), suite)
    for machine_name in sorted(by_machine, key=lambda m: max(r["date"] for r in by_machine[m]), reverse=True):
        lines = render(by_machine[machine_name])
        if len(lines) > 2:
            out += [f"**{machine_name}**: {run_line(by_machine[machine_name])}", "", *lines, ""]
    out.append(f"Generated by `python bench/render_results.py --docs` from `bench/results/{suite}.jsonl`; "
               f"every case: [bench/results/README.md](../bench/results/README.md#{suite}).")
    return "\n".join(out)


def docs_block(data: dict, spec: str) -> str:
    """A doc's generated "Measured" table: :func:`family_table` of the suites of ``spec`` (one
    suite, or several comma-separated) per machine, newest first."""
    suites = spec.split(",")
    newest = {}
    for suite in suites:
        for name, rows in latest(data.get(suite, []), suite).items():
            newest[name] = max(newest.get(name, ""), *(r["date"] for r in rows))
    out = []
    for name in sorted(newest, key=newest.get, reverse=True):
        lines, rows = family_table(data, suites, name)
        if len(lines) > 2:
            out += [f"**{name}**: {_conditions(rows)}", "", *lines, ""]
    files = ", ".join(f"`bench/results/{suite}.jsonl`" for suite in suites)
    links = ", ".join(f"[{'bench/results/README.md' if len(suites) == 1 else suite}]"
                      f"(../bench/results/README.md#{suite})" for suite in suites)
    out.append(f"Generated by `python bench/render_results.py --docs` from {files}; every case: {links}.")
    return "\n".join(out)


def write_block(text: str, path: Path, begin: str, end: str) -> bool:
    """Replaces the block between the markers ``begin`` and ``end`` of ``path``; False when it has none."""
    content = path.read_text()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(content):
        return False
    path.write_text(pattern.sub(lambda _: f"{begin}\n{text}\n{end}", content))
    return True


def write_headline(text: str, readme: Path = README) -> bool:
    """Replaces the block between the headline markers of ``readme``; False when it has none."""
    return write_block(text, readme, HEADLINE_BEGIN, HEADLINE_END)


def write_docs(data: dict) -> list:
    """Regenerates every ``<!-- results:SUITE[,SUITE...]:begin -->`` … ``end`` block of docs/*.md;
    the files changed."""
    changed = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for spec in re.findall(r"<!-- results:([\w,]+):begin -->", doc.read_text()):
            if spec in GRID_BLOCKS:
                text = grid_block(data, spec) if GRID_BLOCKS[spec][0] in data else None
            else:
                text = docs_block(data, spec) if all(suite in data for suite in spec.split(",")) else None
            if text and write_block(text, doc, f"<!-- results:{spec}:begin -->", f"<!-- results:{spec}:end -->"):
                changed.append(doc)
    return changed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="render the README's headline table")
    parser.add_argument("--machine", default=None,
                        help="headline machine: a substring of its name (default: the newest run's of "
                             "the layer-wise KD suites)")
    parser.add_argument("--suite", default=None, help="print this suite's tables instead")
    parser.add_argument("--docs", action="store_true",
                        help="regenerate the results blocks of docs/*.md (<!-- results:SUITE:begin -->, "
                             "several suites comma-separated)")
    args = parser.parse_args(argv)
    data = suites()
    if args.suite:
        if args.suite not in data:
            parser.error(f"--suite: expected one of {sorted(data)}, got {args.suite!r}")
        print("\n".join(suite_markdown(args.suite, data[args.suite], level="###")))
    elif args.docs:
        for doc in write_docs(data):
            print(f"updated {doc}")
    elif args.readme:
        text = headline(data, args.machine)
        if not write_headline(text):
            print(text)
    else:
        if data.get("peers"):
            peers_plot(data["peers"])
        (RESULTS / "README.md").write_text(results_readme(data))


if __name__ == "__main__":
    main()
