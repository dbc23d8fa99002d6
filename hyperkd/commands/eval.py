"""``hyperkd eval``: top-1 and top-5 accuracy of a zoo model on a data set's test split. A
hypernetised student's checkpoint (from ``hyperkd train``) is materialised at ``--gamma`` first."""
import sys
from typing import Dict

HELP = "report top-1/top-5 accuracy of a model checkpoint on the test split"
TOP_K = (1, 5)


def add_arguments(parser) -> None:
    from hyperkd.data import DATASETS

    parser.add_argument("--model", required=True,
                        help="zoo name, e.g. resnet20 (see `hyperkd models`)")
    parser.add_argument("--checkpoint", required=True,
                        help="local checkpoint file holding a state_dict")
    parser.add_argument("--data", default="digits", choices=DATASETS,
                        help="data set (digits is bundled)")
    parser.add_argument("--data-root", default=None,
                        help="folder containing cifar-100-python/ or cifar-10-batches-py/ "
                             "(default: $HYPERKD_DATA)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="images per batch")
    parser.add_argument("--workers", type=int, default=0,
                        help="data loader processes")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda when available, else cpu), cpu or cuda[:N]")
    parser.add_argument("--gamma", type=float, default=0.5,
                        help="γ at which a hypernetised checkpoint generates its weights")


def evaluate(model, loader, device, progress: bool = True) -> Dict[str, float]:
    """Top-k accuracies in percent over ``loader`` and the number of images seen. Off a terminal
    the progress bar is drawn only at its start and end (one line in a log)."""
    from tqdm import tqdm

    from hyperkd.runtime import topk_correct

    bar = tqdm(loader, desc="eval", unit="batch", disable=not progress,
               mininterval=0.1 if sys.stderr.isatty() else float("inf"))
    correct, seen = topk_correct(model.eval().to(device), bar, device, TOP_K)
    if seen == 0:
        raise ValueError("the evaluated split is empty")
    return {**{f"top{k}": 100.0 * c / seen for k, c in zip(TOP_K, correct)}, "images": seen}


def load_model(name: str, checkpoint, num_classes: int, gamma: float):
    """The plain network of ``checkpoint``: loaded strictly, or, for a hypernetised student,
    rebuilt around its hypernetwork and materialised at ``gamma``."""
    from hyperkd import models
    from hyperkd.hyper import hypernetized_from_state

    state = models.read_state_dict(checkpoint)
    if "hypernet.W" not in state:
        return models.create(name, num_classes=num_classes, checkpoint=checkpoint)
    return hypernetized_from_state(models.create(name, num_classes=num_classes), state).materialize(gamma)


def run(args) -> int:
    from hyperkd import data
    from hyperkd.runtime import resolve_device

    device = resolve_device(args.device)
    model = load_model(args.model, args.checkpoint, data.NUM_CLASSES[args.data], args.gamma)
    _, _, test = data.loaders(args.data, args.batch_size, root=args.data_root,
                              workers=args.workers, augment=False)
    result = evaluate(model, test, device)
    print(f"{args.model} on {args.data} test ({result['images']} images): "
          f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%")
    return 0
