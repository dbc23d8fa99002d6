"""``hyperkd plan``: the memory a hypernetised training run needs, before building it, and which
switches make it fit a budget.

The estimate is :func:`hyperkd.hyper.memory.memory_estimate` on a model built on the meta device,
so nothing of the model's size is allocated. When the run does not fit, the switches are tried in
the order they change training, least first: the fused step (same maths), bf16 optimizer state,
bf16 W (both stochastically rounded), a narrow hypernetwork (16,16,16), then halving the batch down
to 1. Each switch is tried alone, then on top of all earlier ones; the first that fits is the
suggestion, so no switch is proposed while a gentler set of switches would do.
"""
from dataclasses import dataclass, replace
from functools import partial

from hyperkd.commands.train import hidden_widths

HELP = "estimate a hypernetised training run's memory and suggest the switches that fit a budget"
NARROW_HIDDEN = (16, 16, 16)
# Storage dtypes by the spellings of train's --state-dtype/--weight-dtype; torch's dtypes are looked
# up only when estimating, so that `hyperkd --help` imports no torch.
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
ROWS = (("W", "W"), ("W_grad", "W gradient"), ("optimizer_state", "optimizer state"),
        ("activations", "activations"), ("teacher", "teacher"), ("other", "other"), ("total", "total"))


@dataclass(frozen=True)
class Setup:
    """What the estimate depends on that a switch may change."""
    hidden: tuple
    batch_size: int
    fused: bool
    weight_dtype: str = "fp32"  # a key of DTYPES
    state_dtype: str = "fp32"


def add_arguments(parser) -> None:
    from hyperkd.data import DATASETS
    from hyperkd.hyper.memory import OPTIMIZERS

    parser.add_argument("--model", required=True, help="a name from `hyperkd models`")
    parser.add_argument("--hidden", default="16,64,128", help="hypernetwork hidden widths (default: 16,64,128)")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="sgd_momentum",
                        help="sets the optimizer state's size (default: sgd_momentum)")
    parser.add_argument("--fused-step", action="store_true",
                        help="W is stepped from its gradient's factors, never holding its P×d gradient "
                             "(as train's flag)")
    parser.add_argument("--state-dtype", choices=tuple(DTYPES), default="fp32",
                        help="W's optimizer state storage, as train's flag (bf16 needs --fused-step)")
    parser.add_argument("--weight-dtype", choices=tuple(DTYPES), default="fp32",
                        help="W's storage, as train's flag (bf16 needs --fused-step)")
    parser.add_argument("--kd", default="none",
                        help="KD method (a name from hyperkd.kd.methods()) or none: no teacher (default)")
    parser.add_argument("--data", choices=DATASETS, default="digits", help="sets the classifier's size")
    parser.add_argument("--budget", default=None,
                        help="memory available, e.g. 15GiB, 512MiB (binary, 2^30 per GiB) or 16GB (10^9 per "
                             "GB); exit status 1 when the run does not fit")


def run(args) -> int:
    from hyperkd.hyper.memory import format_size, parse_size

    model = _meta_model(args.model, args.data)
    kd = _kd_method(args.kd)
    for flag, value in (("--state-dtype", args.state_dtype), ("--weight-dtype", args.weight_dtype)):
        if value == "bf16" and not args.fused_step:
            raise ValueError(f"{flag}: bf16 storage is stepped only by the fused step (stochastic "
                             "rounding); add --fused-step")
    base = Setup(_flag("--hidden", hidden_widths, args.hidden), _batch_size(args.batch_size), args.fused_step,
                 weight_dtype=args.weight_dtype, state_dtype=args.state_dtype)
    budget = None if args.budget is None else _flag("--budget", parse_size, args.budget)
    estimate = partial(_estimate, model, args.optimizer, kd is not None)
    totals = estimate(base)
    print(f"{args.model} on {args.data}, {_describe(base, args.optimizer)}, KD: {kd or 'none'}")
    _print_table(totals, base, args.optimizer, kd)
    if budget is None:
        return 0
    if totals["total"] <= budget:
        print(f"fits the budget of {format_size(budget)} ({format_size(budget - totals['total'])} to spare)")
        return 0
    print(f"does not fit the budget of {format_size(budget)} "
          f"({format_size(totals['total'] - budget)} over)")
    _print_suggestion(base, _switches(base, args.optimizer), estimate, budget)
    return 1


def _flag(flag: str, parse, value):
    """``parse(value)``, its ValueError prefixed with the flag so the message names it."""
    try:
        return parse(value)
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from None


def _meta_model(name: str, data: str):
    """The zoo model on the meta device: planning VGG-19-bn or RepVGG-A2 allocates nothing."""
    import torch

    from hyperkd import models
    from hyperkd.data import NUM_CLASSES

    with torch.device("meta"):
        return _flag("--model", partial(models.create, num_classes=NUM_CLASSES[data]), name)


def _kd_method(spec: str):
    """``spec`` once the registry has validated it; None for ``none`` (no KD, no teacher)."""
    from hyperkd.kd import parse_method

    name, _ = _flag("--kd", parse_method, spec)
    return None if name == "none" else spec


def _batch_size(n: int) -> int:
    if n < 1:
        raise ValueError(f"--batch-size: expected a positive integer, got {n}")
    return n


def _estimate(model, optimizer: str, teacher: bool, setup: Setup) -> dict:
    import torch

    from hyperkd.hyper.memory import memory_estimate

    return memory_estimate(model, hidden=setup.hidden, optimizer=optimizer,
                           dtype=getattr(torch, DTYPES[setup.weight_dtype]), fused=setup.fused,
                           batch_size=setup.batch_size, state_dtype=getattr(torch, DTYPES[setup.state_dtype]),
                           teacher=teacher)


def _widths(hidden) -> str:
    return ",".join(map(str, hidden))


def _describe(s: Setup, optimizer: str) -> str:
    step = "fused step" if s.fused else "unfused step"
    return f"hidden {_widths(s.hidden)}, batch {s.batch_size}, {optimizer}, {step}"


def _print_table(totals: dict, s: Setup, optimizer: str, kd) -> None:
    """One aligned row per component: name, size, what it holds."""
    from hyperkd.hyper.memory import OPTIMIZERS, format_size

    slots = OPTIMIZERS[optimizer]
    notes = {
        "W": f"output layer, P×d ({s.weight_dtype})",
        "W_grad": ("the B_γ×P factor dθ and the step's copy, which then carries the next W·z (fused step)"
                   if s.fused else "P×d (fp32)"),
        "optimizer_state": f"{slots} × P×d ({s.state_dtype})" if slots else "none (plain SGD)",
        "activations": f"student's leaf-module outputs at batch {s.batch_size} (fp32)",
        "teacher": f"parameters + conv outputs tapped for {kd}" if kd else "no KD",
        "other": "MLP, θ0, non-generated layers, with gradients and state",
        "total": "",
    }
    sizes = {key: format_size(totals[key]) for key, _ in ROWS}
    name_width = max(len(label) for _, label in ROWS)
    size_width = max(map(len, sizes.values()))
    for key, label in ROWS:
        print(f"  {label:<{name_width}}  {sizes[key]:>{size_width}}  {notes[key]}".rstrip())


def _switches(base: Setup, optimizer: str) -> list:
    """The switches, each a Setup → Setup function, from the one that changes training least.

    bf16 storage needs the fused step (only it rounds stochastically), so it switches that on too.
    """
    from hyperkd.hyper.memory import OPTIMIZERS

    switches = [partial(replace, fused=True)]
    if OPTIMIZERS[optimizer]:
        switches.append(partial(replace, fused=True, state_dtype="bf16"))
    switches += [partial(replace, fused=True, weight_dtype="bf16"), partial(replace, hidden=NARROW_HIDDEN)]
    n = base.batch_size // 2
    while n >= 1:
        switches.append(partial(replace, batch_size=n))
        n //= 2
    return switches


def _candidates(base: Setup, switches: list):
    """Each switch alone, then on top of all earlier ones; no Setup twice, never the baseline."""
    seen, stacked = {base}, base
    for switch in switches:
        stacked = switch(stacked)
        for setup in (switch(base), stacked):
            if setup not in seen:
                seen.add(setup)
                yield setup


def _changes(base: Setup, s: Setup) -> list:
    """(what changes, the `hyperkd train` flag that asks for it) from ``base`` to ``s``."""
    out = []
    if s.fused != base.fused:
        out.append(("fused step", "--fused-step"))
    if s.state_dtype != base.state_dtype:
        out.append(("bf16 optimizer state", "--state-dtype bf16"))
    if s.weight_dtype != base.weight_dtype:
        out.append(("bf16 W", "--weight-dtype bf16"))
    if s.hidden != base.hidden:
        out.append((f"hidden {_widths(s.hidden)}", f"--hidden {_widths(s.hidden)}"))
    if s.batch_size != base.batch_size:
        out.append((f"batch size {s.batch_size}", f"--batch-size {s.batch_size}"))
    return out


def _print_suggestion(base: Setup, switches: list, estimate, budget: int) -> None:
    """Tries the candidates in order, printing each, and stops at the first that fits."""
    from hyperkd.hyper.memory import format_size

    print("switches, alone and stacked, least change to training first:")
    for setup in _candidates(base, switches):
        total = estimate(setup)["total"]
        changes = _changes(base, setup)
        label = " + ".join(what for what, _ in changes)
        verdict = "fits" if total <= budget else f"over by {format_size(total - budget)}"
        print(f"  {format_size(total):>10}  {verdict:<19}  {label}")
        if total <= budget:
            print(f"suggestion: {label} -> {format_size(total)}")
            print("  hyperkd train flags: " + " ".join(flag for _, flag in changes))
            return
    print(f"nothing fits {format_size(budget)}: even with every switch the run needs {format_size(total)}")
