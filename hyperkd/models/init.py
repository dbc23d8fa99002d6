"""Weight initialisation shared by the families that inherit torchvision's scheme."""
from typing import Optional

from torch import nn


def torchvision_init(model: nn.Module, linear_std: Optional[float] = None) -> None:
    """Initialise ``model`` in place the way the hub's torchvision-derived networks do.

    Convolutions get Kaiming-normal weights (fan-out, ReLU gain) and zero biases; batch norms start
    as the identity. Linear layers keep PyTorch's default unless ``linear_std`` is given, in which
    case they are drawn from N(0, linear_std) with zero bias (VGG and MobileNetV2 do this).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0.0, linear_std)
            nn.init.zeros_(module.bias)
