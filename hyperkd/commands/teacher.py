"""``hyperkd teacher``: train a teacher canonically and keep the best on validation."""
from pathlib import Path

from hyperkd.train.optim import SCHEDULES

HELP = "train a teacher canonically (SGD, Nesterov momentum, cosine/multistep lr); saves best.pt"


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="a name from `hyperkd models`")
    parser.add_argument("--data", default="digits", help="digits (bundled), cifar10 or cifar100")
    parser.add_argument("--data-root", default=None, help="folder with the CIFAR files ($HYPERKD_DATA)")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")


def run(args) -> int:
    from hyperkd.config import save_config
    from hyperkd.train import distributed
    from hyperkd.train.teacher import train_teacher

    distributed.init_from_env()  # under torchrun, so that only rank 0 writes the config
    if distributed.is_main():
        save_config(args, args.out)
    best = train_teacher(args.model, args.data, args.out, epochs=args.epochs, batch_size=args.batch_size,
                         data_root=args.data_root, lr=args.lr, momentum=args.momentum,
                         weight_decay=args.weight_decay, schedule=args.schedule, seed=args.seed,
                         workers=args.workers, device=args.device, resume=args.resume)
    if distributed.is_main():
        print(f"best epoch {best['epoch']}: val {best['val_acc']:.4f}, test {best['test_acc']:.4f} "
              f"-> {args.out / 'best.pt'}")
    return 0
