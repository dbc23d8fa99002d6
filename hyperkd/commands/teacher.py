"""``hyperkd teacher``: train a teacher canonically and keep the best on validation."""
from pathlib import Path

HELP = "train a teacher canonically (SGD, Nesterov momentum, cosine/multistep lr); saves best.pt"


def add_arguments(parser):
    from hyperkd.train.optim import SCHEDULES

    parser.add_argument("--model", required=True, help="a name from `hyperkd models`")
    parser.add_argument("--data", default="digits", help="digits (bundled), cifar10 or cifar100")
    parser.add_argument("--data-root", default=None, help="folder with the CIFAR files ($HYPERKD_DATA)")
    parser.add_argument("--epochs", type=int, required=True, help="epochs to train")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (per rank under torchrun)")
    parser.add_argument("--lr", type=float, default=0.1, help="initial learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="learning-rate schedule")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, the split and the shuffling")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT from last.pt (a larger --epochs extends it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an OUT that holds a run (its log and checkpoints are deleted)")
    from hyperkd.gtn.train import add_graft_arguments

    add_graft_arguments(parser)


def run(args) -> int:
    from hyperkd.config import save_config
    from hyperkd.train import distributed
    from hyperkd.train.run_identity import check_out_dir, teacher_identity
    from hyperkd.train.teacher import check_teacher, teacher_settings, train_teacher

    settings = teacher_settings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay,
                                schedule=args.schedule, seed=args.seed)
    if args.method is not None:  # SFTN / GTN branches, or vanilla on the same code path
        from hyperkd.gtn.train import run_grafted

        return run_grafted(args, settings)
    # Everything is checked before config.yaml is written: a refused command changes nothing.
    check_teacher(args.model, args.data, device=args.device, **settings)
    check_out_dir(args.out, teacher_identity(model=args.model, data=args.data, **settings),
                  resume=args.resume, overwrite=args.overwrite)
    distributed.init_from_env()  # under torchrun, so that only rank 0 writes the config
    if distributed.is_main():
        save_config(args, args.out)
    best = train_teacher(args.model, args.data, args.out, data_root=args.data_root, workers=args.workers,
                         device=args.device, resume=args.resume, overwrite=args.overwrite, **settings)
    if distributed.is_main():
        print(f"best epoch {best['epoch']}: val {best['val_acc']:.4f}, test {best['test_acc']:.4f} "
              f"-> {args.out / 'best.pt'}")
    return 0
