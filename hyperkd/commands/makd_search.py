"""``hyperkd makd-search``: the combinatorial search over the 80 mAKD variants (Li & Maki §3.2)."""
from pathlib import Path

HELP = "score every mAKD variant: train a student's features with it alone, then a LinearSVC on them"


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="the student, a name from `hyperkd models`")
    parser.add_argument("--teacher-model", required=True, help="the teacher's architecture")
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher's checkpoint (best.pt)")
    parser.add_argument("--data", default="digits", help="digits (bundled), cifar10 or cifar100")
    parser.add_argument("--data-root", default=None, help="folder with the CIFAR files ($HYPERKD_DATA)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per variant")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--lr", type=float, default=0.05, help="initial learning rate (the CE recipe's)")
    parser.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    parser.add_argument("--calibration-models", type=int, default=3,
                        help="fresh students whose mean initial ||dCE/dz|| sets each variant's lambda")
    parser.add_argument("--variants", default=None,
                        help="comma-separated aff-norm-loss names (e.g. cs-l2-sl1,ip-max-kl); all 80 by default")
    parser.add_argument("--seed", type=int, default=0, help="seed of the students, the split and the shuffling")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: results.csv (finished variants are skipped) and the figures")


def run(args) -> int:
    from hyperkd.train.makd_search import SearchConfig, run_search, selected_variants

    variants = args.variants.split(",") if args.variants else None
    selected_variants(variants)  # a bad name fails before any training
    for name in ("epochs", "batch_size", "calibration_models"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    cfg = SearchConfig(model=args.model, teacher_model=args.teacher_model, teacher=args.teacher, data=args.data,
                       epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                       weight_decay=args.weight_decay, calibration_models=args.calibration_models,
                       variants=variants, seed=args.seed, data_root=args.data_root, device=args.device)
    rows = run_search(cfg, args.out)
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    print(f"{len(rows)} variants in {args.out / 'results.csv'}; best {best['aff']}-{best['norm']}-{best['loss']} "
          f"val {float(best['val_accuracy']):.4f}")
    return 0
