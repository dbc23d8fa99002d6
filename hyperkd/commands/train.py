"""``hyperkd train``: Algorithm 1 — a fully hypernetised student distilled layer by layer from a
teacher checkpoint of the same architecture."""
import argparse
from pathlib import Path

HELP = "train a MIP-hypernetised student with layer-wise KD from a teacher (Algorithm 1)"


def comma_ints(text: str) -> tuple:
    """``16,64,128`` → (16, 64, 128); () when ``text`` is not a comma-separated list of integers."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        return ()


def hidden_widths(text: str) -> tuple:
    """``16,64,128`` → (16, 64, 128)."""
    widths = comma_ints(text)
    if not widths or min(widths) < 1:
        raise ValueError(f"expected positive widths separated by commas, e.g. 16,64,128; got {text!r}")
    return widths


def _hidden_flag(text: str) -> tuple:
    try:
        return hidden_widths(text)
    except ValueError as err:  # argparse shows an ArgumentTypeError's message, not a ValueError's
        raise argparse.ArgumentTypeError(str(err)) from None


def add_student_arguments(parser, *, single_run: bool = True) -> None:
    """The flags of one student run, shared with ``hyperkd sweep``, which sets the method and the
    seed itself and resumes on its own (``single_run=False``)."""
    from hyperkd.data import DATASETS
    from hyperkd.train.optim import SCHEDULES as LR_SCHEDULES
    from hyperkd.train.student import AMP, OPTIMIZERS, SCHEDULES

    parser.add_argument("--model", required=True, help="a name from `hyperkd models`")
    parser.add_argument("--data", default="digits", choices=DATASETS,
                        help="digits (bundled, default), cifar10 or cifar100")
    parser.add_argument("--data-root", type=Path, default=None, help="folder with the CIFAR files ($HYPERKD_DATA)")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher checkpoint (from `hyperkd teacher`)")
    if single_run:
        parser.add_argument("--kd", default="at0", help="KD method, e.g. at0, at1:p=2, ab (`--kd list` lists them)")
        parser.add_argument("--no-kd", action="store_true", help="the MIP baseline: cross-entropy only")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="uniform",
                        help="λ_m: uniform or the moving Gaussian spike (A.4)")
    parser.add_argument("--hidden", type=_hidden_flag, default=(16, 64, 128),
                        help="hypernetwork hidden widths (default 16,64,128)")
    parser.add_argument("--gamma", default="uniform", help="'uniform' (γ ~ U[0,1] per step) or a fixed γ")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=16, help="per rank under torchrun (default 16)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine")
    parser.add_argument("--lambda0", type=float, default=0.1, help="weight of the cross-entropy term (A.4)")
    parser.add_argument("--kd-weight", type=float, default=1.0, help="factor β on the KD sum Σ λ_m L_m")
    parser.add_argument("--ft-epochs", type=int, default=20, help="FT paraphraser pretraining epochs")
    parser.add_argument("--fused-step", action="store_true", help="update W in place inside backward")
    parser.add_argument("--amp", choices=sorted(AMP), default=None, help="autocast dtype")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--grad-norm", action="store_true", help="log the gradient norm per epoch")
    parser.add_argument("--debug", action="store_true", help="name the first layer whose KD term is NaN/inf")


def add_arguments(parser) -> None:
    add_student_arguments(parser)


def student_config(args, **overrides):
    """The :class:`StudentConfig` the parsed flags describe."""
    from dataclasses import fields

    from hyperkd.train.student import StudentConfig

    values = {f.name: getattr(args, f.name) for f in fields(StudentConfig) if hasattr(args, f.name)}
    values.update(overrides)
    return StudentConfig(**values)


def run(args) -> int:
    from hyperkd.config import save_config
    from hyperkd.kd import describe
    from hyperkd.train import distributed
    from hyperkd.train.student import train_student

    if args.kd == "list":
        print(describe())
        return 0
    cfg = student_config(args, kd="none" if args.no_kd else args.kd)
    cfg.check()
    distributed.init_from_env()  # under torchrun, so that only rank 0 writes the config
    if distributed.is_main():
        save_config(args, args.out)
    best = train_student(cfg, args.out, resume=args.resume)
    if distributed.is_main():
        print(f"best epoch {best['epoch']}: val {best['val_acc']:.4f}, test {best['test_acc']:.4f} "
              f"-> {args.out / 'best.pt'}")
    return 0
