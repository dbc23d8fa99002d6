"""``hyperkd sweep``: every listed KD method (and the No-KD baseline) over several seeds, with a
Table-1-style table (mean ± std) and one convergence plot. Finished runs are skipped, once their
stored flags are checked against the sweep's. A run that diverges is recorded and the sweep goes
on; the command then ends with an error line naming the diverged runs (exit status 2)."""
import argparse

from hyperkd.commands.train import add_student_arguments, comma_ints, student_config

HELP = "run several KD methods x seeds; write a Table-1-style table and one convergence plot"


def seeds(text: str) -> tuple:
    values = comma_ints(text)
    if not values or len(set(values)) != len(values):
        # argparse shows an ArgumentTypeError's message (a ValueError's only as "invalid value")
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integers such as 0,1,2, got {text!r}")
    return values


def add_arguments(parser) -> None:
    parser.add_argument("--methods", required=True,
                        help="comma-separated KD methods, e.g. at0,at1:p=2,ab (No-KD is always added)")
    parser.add_argument("--seeds", type=seeds, default=(0,), help="comma-separated seeds")
    add_student_arguments(parser, single_run=False)


def run(args) -> int:
    from hyperkd.config import save_config
    from hyperkd.train import sweep
    from hyperkd.train.run_identity import check_out_dir
    from hyperkd.runtime import resolve_device

    methods = sweep.parse_methods(args.methods)
    for seed in args.seeds:
        student_config(args, kd=methods[-1], seed=seed).check()
    base = student_config(args, kd=methods[-1], seed=args.seeds[0])
    # Everything is checked before config.yaml is written: a refused sweep changes nothing.
    check_out_dir(args.out)
    sweep.check_runs(base, methods, args.seeds, args.out)
    save_config(args, args.out)
    results = sweep.run_sweep(base, methods, args.seeds, args.out)
    teacher = sweep.teacher_accuracy(base, resolve_device(base.device)) if base.teacher else None
    student = f"MIP {','.join(map(str, base.hidden))}" if base.hyper == "mip" else "plain student"
    print(sweep.report(results, args.out, methods, args.seeds, teacher,
                       title=f"{args.model} on {args.data}, {student}", hyper=base.hyper))
    print(f"\ntable: {args.out / 'results.md'} (and .csv), plot: {args.out / 'convergence.png'}")
    diverged = sweep.diverged_runs(results)
    if diverged:
        raise FloatingPointError(f"{len(diverged)} run(s) diverged and are reported as such: "
                                 + "; ".join(diverged))
    return 0
