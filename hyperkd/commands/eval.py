"""``hyperkd eval``: top-1 and top-5 accuracy of a zoo model on a data set's test split. A
hypernetised student's checkpoint (from ``hyperkd train``) is materialised at ``--gamma`` first."""
from typing import Dict

import torch
from torch import nn
from tqdm import tqdm

HELP = "report top-1/top-5 accuracy of a model checkpoint on the test split"
TOP_K = (1, 5)


def add_arguments(parser) -> None:
    from hyperkd.data import DATASETS

    parser.add_argument("--model", required=True,
                        help="zoo name, e.g. resnet20 (see `hyperkd models`)")
    parser.add_argument("--checkpoint", required=True,
                        help="local checkpoint file holding a state_dict")
    parser.add_argument("--data", default="cifar100", choices=DATASETS,
                        help="data set (default: cifar100)")
    parser.add_argument("--data-root", default=None,
                        help="folder containing cifar-100-python/ or cifar-10-batches-py/ "
                             "(default: $HYPERKD_DATA)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="images per batch (default: 256)")
    parser.add_argument("--workers", type=int, default=0,
                        help="data loader processes (default: 0)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--gamma", type=float, default=0.5,
                        help="γ at which a hypernetised checkpoint generates its weights (default 0.5)")


def _device(name) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device: {name!r} is not a torch device ({err})") from err


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device,
             progress: bool = True) -> Dict[str, float]:
    """Top-k accuracies in percent over ``loader`` and the number of images seen."""
    model.eval().to(device)
    correct = dict.fromkeys(TOP_K, 0)
    seen = 0
    for images, labels in tqdm(loader, desc="eval", unit="batch", disable=not progress):
        logits = model(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        ranked = logits.topk(min(max(TOP_K), logits.shape[1]), dim=1).indices
        hits = ranked == labels.unsqueeze(1)
        for k in TOP_K:
            correct[k] += hits[:, :k].any(dim=1).sum().item()
        seen += labels.numel()
    if seen == 0:
        raise ValueError("the evaluated split is empty")
    return {**{f"top{k}": 100.0 * correct[k] / seen for k in TOP_K}, "images": seen}


def load_model(name: str, checkpoint, num_classes: int, gamma: float) -> nn.Module:
    """The plain network of ``checkpoint``: loaded strictly, or, for a hypernetised student,
    rebuilt around its hypernetwork and materialised at ``gamma``."""
    from hyperkd import models
    from hyperkd.hyper import hypernetized_from_state

    state = models.read_state_dict(checkpoint)
    if "hypernet.W" not in state:
        return models.create(name, num_classes=num_classes, checkpoint=checkpoint)
    return hypernetized_from_state(models.create(name, num_classes=num_classes), state).materialize(gamma)


def run(args) -> int:
    from hyperkd import data, models

    device = _device(args.device)
    model = load_model(args.model, args.checkpoint, data.NUM_CLASSES[args.data], args.gamma)
    _, _, test = data.loaders(args.data, args.batch_size, root=args.data_root,
                              workers=args.workers, augment=False)
    result = evaluate(model, test, device)
    print(f"{args.model} on {args.data} test ({result['images']} images): "
          f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%")
    return 0
