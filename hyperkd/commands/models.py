"""``hyperkd models``: list the model zoo with parameter counts."""

HELP = "list the CIFAR model zoo with parameter counts"


def add_arguments(parser) -> None:
    parser.add_argument("--num-classes", type=int, default=100,
                        help="size of the classifier the counts assume")


def run(args) -> int:
    import torch

    from hyperkd import models

    print(f"{'model':<20} {'params (M)':>10} {'parameters':>12}")
    for name in models.available():
        # The meta device allocates nothing, so counting the 27M-parameter RepVGG-A2 is instant.
        with torch.device("meta"):
            count = models.parameter_count(models.create(name, num_classes=args.num_classes))
        print(f"{name:<20} {count / 1e6:>10.2f} {count:>12,}")
    return 0
