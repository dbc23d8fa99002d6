"""``hyperkd siren``: represent a trained CNN's conv weights with a predictor and train it.

Phases (paper §3): ``reconstruct`` (L_recon, or the joint baseline with --kd-weight),
``progressive --rounds R`` and ``decouple`` (logit KD only, from --from's phase-1 checkpoint);
``analyse`` plots per-layer S_ratio and the interpolation curve of --from's decoded net.
"""
from pathlib import Path

HELP = "NeRN/SIREN weight predictors: reconstruct, progressive rounds, decoupled KD"
PHASES = ("reconstruct", "progressive", "decouple", "analyse")


def add_arguments(parser):
    from hyperkd.data import DATASETS
    from hyperkd.siren import ENCODINGS, PERMUTATIONS

    parser.add_argument("phase", choices=PHASES)
    parser.add_argument("--model", required=True, help="a name from `hyperkd models`")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the original net (best.pt)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--data", default="digits", choices=DATASETS, help="data set")
    parser.add_argument("--data-root", default=None, help="folder with the CIFAR files ($HYPERKD_DATA)")
    parser.add_argument("--encoding", choices=ENCODINGS, default="siren")
    parser.add_argument("--width", type=int, default=128, help="hidden width of the predictor")
    parser.add_argument("--depth", type=int, default=5, help="linear layers of the predictor")
    parser.add_argument("--permutation", choices=PERMUTATIONS, default="in-filter")
    parser.add_argument("--epochs", type=int, default=None, help="required by the training phases")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--lr", type=float, default=None,
                        help="reconstruction: 3e-4 (siren) or 1e-3 (nern); decouple: 2e-6")
    parser.add_argument("--kernel-batch", type=int, default=4096, help="kernels per reconstruction step")
    parser.add_argument("--kd-weight", type=float, default=None,
                        help="α of L_KD: joint baseline in reconstruct (default 0), decouple (default 1)")
    parser.add_argument("--fmd-weight", type=float, default=0.0,
                        help="β of L_FMD in reconstruct (joint baseline; default 0)")
    parser.add_argument("--rounds", type=int, default=1, help="progressive rounds (≥ 1)")
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help="decouple: the phase-1 checkpoint to fine-tune; analyse: the one to study")
    parser.add_argument("--teacher-model", default=None, help="decouple: teacher name (default --model)")
    parser.add_argument("--teacher-checkpoint", type=Path, default=None,
                        help="decouple: the teacher's weights (required)")
    parser.add_argument("--noise", action="store_true", help="decouple on U[-1,1] inputs (data-free)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the predictor and the data")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")


def run(args) -> int:
    import json

    import torch

    from hyperkd import data, models
    from hyperkd.config import save_config
    from hyperkd.siren import Representation, phases
    from hyperkd.train.run_identity import check_out_dir
    from hyperkd.runtime import resolve_device
    from hyperkd.train.teacher import check_seed

    if args.phase == "decouple" and (args.teacher_checkpoint is None or args.source is None):
        raise ValueError("decouple: needs --teacher-checkpoint (the teacher to distil from) and "
                         "--from (the phase-1 predictor checkpoint)")
    if args.phase != "analyse" and (args.epochs is None or args.epochs < 1):
        raise ValueError(f"epochs: {args.phase} needs --epochs ≥ 1, got {args.epochs}")
    if args.phase == "analyse" and args.source is None:
        raise ValueError("analyse: needs --from (a phase checkpoint to study)")
    if args.rounds < 1:
        raise ValueError(f"rounds: expected an integer ≥ 1, got {args.rounds}")
    check_seed(args.seed)
    device = resolve_device(args.device)
    classes = data.NUM_CLASSES[args.data]
    original = models.create(args.model, classes, args.checkpoint).eval()
    options = dict(encoding=args.encoding, width=args.width, depth=args.depth,
                   permutation=args.permutation)
    rep = _predictor(phases, original, args.source, options) if args.phase in ("analyse", "decouple") else None
    if args.phase == "decouple":
        teacher = models.create(args.teacher_model or args.model, classes, args.teacher_checkpoint)
    if args.phase != "analyse":
        for folder in (args.out, *sorted(args.out.glob("round*"))):  # progressive: one run per round
            check_out_dir(folder, resume=args.resume, can_overwrite=False)
    save_config(args, args.out)  # once everything above has passed: a refused command writes nothing
    torch.manual_seed(args.seed)
    # Reconstruction alone never looks at the images: skip their augmentation.
    uses_images = args.phase == "decouple" or bool(args.kd_weight) or bool(args.fmd_weight)
    loaders = data.loaders(args.data, args.batch_size, root=args.data_root, seed=args.seed,
                           augment=uses_images)
    common = dict(epochs=args.epochs, resume=args.resume, device=device)
    if args.phase == "analyse":
        return analyse(original, rep, loaders[2], args.out)
    if args.phase == "decouple":
        result = phases.decouple(rep, teacher, loaders, args.out, lr=args.lr or phases.DECOUPLE_LR,
                                 kd_weight=1.0 if args.kd_weight is None else args.kd_weight,
                                 noise=args.noise, **common)
    elif args.phase == "reconstruct":
        rep = Representation(original, **options)
        print(f"compression ratio CR = {rep.compression_ratio():.4f}")
        result = phases.reconstruct(rep, original, loaders, args.out, lr=args.lr or reconstruction_lr(args.encoding),
                                    kernel_batch=args.kernel_batch, kd_weight=args.kd_weight or 0.0,
                                    fmd_weight=args.fmd_weight,
                                    **common)
    else:
        baseline = evaluate(original, loaders[1], device)
        result = phases.progressive(original, loaders, args.out, rounds=args.rounds,
                                    baseline_val=baseline, representation_options=options,
                                    lr=args.lr or reconstruction_lr(args.encoding), kernel_batch=args.kernel_batch, **common)
    print(json.dumps(result))
    return 0


def _predictor(phases, original, source: Path, options: dict):
    """The predictor checkpoint ``--from``, or an error naming the flag when it is none (another
    command's checkpoint, or a predictor of other --encoding/--width/--depth/--permutation)."""
    try:
        return phases.load_representation(original, source, **options)
    except (RuntimeError, KeyError, TypeError) as err:
        raise ValueError(f"--from: {source} is not a predictor checkpoint of this --model with these "
                         f"--encoding/--width/--depth/--permutation ({str(err).splitlines()[0]})") from err


def evaluate(net, loader, device) -> float:
    from hyperkd.runtime import accuracy

    return accuracy(net.to(device).eval(), loader, device)


def analyse(original, rep, loader, out: Path) -> int:
    """Writes s_ratio.png, interpolation.png and analysis.json (paper §3.1, App. E–F) into ``out``."""
    import json

    from hyperkd.siren import analysis

    reconstructed = rep.materialise()
    curve = analysis.interpolation_curve(original, reconstructed, loader)
    analysis.plot_s_ratios(original, reconstructed, out / "s_ratio.png")
    analysis.plot_interpolation(curve, out / "interpolation.png")
    record = {"s_ratio": {"original": analysis.s_ratios(original),
                          "reconstructed": analysis.s_ratios(reconstructed)},
              "interpolation": curve}
    (out / "analysis.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 's_ratio.png'}, {out / 'interpolation.png'}, {out / 'analysis.json'}")
    return 0


def reconstruction_lr(encoding: str) -> float:
    """Adam's reconstruction lr (cosine-decayed over the epochs), from pilots on ResNet-20/digits
    (docs/siren.md): SIREN (ω0 = 30) collapses to a ~0 output at a constant 1e-3 and crawls at
    1e-4, 3e-4 reaches 3 % relative kernel error in 1000 steps; NeRN's ReLU predictor stalls at
    NeRN's 5e-3 (with Adam; NeRN used Ranger) and learns at 1e-3."""
    return 3e-4 if encoding == "siren" else 1e-3
