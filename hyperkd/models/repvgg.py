"""RepVGG-A0/A1/A2 for CIFAR (Ding et al., 2021), stem and first stage at stride 1.

Training form: every block sums a 3×3 conv-BN, a 1×1 conv-BN and (when shapes allow) a BN-only
identity branch. ``reparameterize()`` folds the three into one biased 3×3 conv per block, the
deploy form. Names in both forms follow the pytorch-cifar-models hub (``rbr_dense``, ``rbr_1x1``,
``rbr_identity``, ``rbr_reparam``), so its checkpoints load in either.
"""
from functools import partial
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

BLOCKS_PER_STAGE = (2, 4, 14, 1)
WIDTHS = {
    "repvgg_a0": (0.75, 0.75, 0.75, 2.5),
    "repvgg_a1": (1.0, 1.0, 1.0, 2.5),
    "repvgg_a2": (1.5, 1.5, 1.5, 2.75),
}
FUSED_NAME = "rbr_reparam"


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    """A bias-free conv followed by batch norm, registered as ``conv`` and ``bn``."""
    branch = nn.Sequential()
    branch.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                        kernel_size // 2, bias=False))
    branch.add_module("bn", nn.BatchNorm2d(out_channels))
    return branch


def fold_batch_norm(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of the conv that equals ``conv(kernel)`` followed by ``bn`` in eval mode."""
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepVGGBlock(nn.Module):
    """ReLU(3×3 conv-BN + 1×1 conv-BN + BN(x)), or ReLU(conv3×3(x) + b) once reparameterised."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.nonlinearity = nn.ReLU()
        has_identity = in_channels == out_channels and stride == 1
        self.rbr_identity = nn.BatchNorm2d(in_channels) if has_identity else None
        self.rbr_dense = conv_bn(in_channels, out_channels, 3, stride)
        self.rbr_1x1 = conv_bn(in_channels, out_channels, 1, stride)
        self.rbr_reparam: Optional[nn.Conv2d] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rbr_reparam is not None:
            return self.nonlinearity(self.rbr_reparam(x))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.nonlinearity(out)

    def equivalent_kernel_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The single 3×3 kernel and bias equal to the three branches with eval-mode BN."""
        kernel, bias = fold_batch_norm(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        kernel_1x1, bias_1x1 = fold_batch_norm(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        kernel = kernel + nn.functional.pad(kernel_1x1, [1, 1, 1, 1])
        bias = bias + bias_1x1
        if self.rbr_identity is not None:
            # The identity is a 3×3 conv whose kernel is 1 at the centre of channel i -> i.
            identity = torch.zeros_like(kernel)
            channels = torch.arange(self.in_channels, device=kernel.device)
            identity[channels, channels, 1, 1] = 1.0
            kernel_id, bias_id = fold_batch_norm(identity, self.rbr_identity)
            kernel, bias = kernel + kernel_id, bias + bias_id
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> "RepVGGBlock":
        """Replace the branches with one biased 3×3 conv, in place; a no-op when already fused."""
        if self.rbr_reparam is not None:
            return self
        kernel, bias = self.equivalent_kernel_bias()
        dense = self.rbr_dense.conv
        fused = nn.Conv2d(dense.in_channels, dense.out_channels, 3, dense.stride, 1, bias=True,
                          device=kernel.device, dtype=kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity
        self.rbr_identity = None
        self.rbr_reparam = fused
        return self


class RepVGG(nn.Module):
    """RepVGG-A with per-stage width multipliers ``widths`` (stages 1-4)."""

    def __init__(self, widths: Sequence[float], num_classes: int = 100):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths needs 4 entries (one per stage), got {len(widths)}")
        stage_channels = [int(base * w) for base, w in zip((64, 128, 256, 512), widths)]
        stem_channels = min(64, stage_channels[0])
        self.stage0 = RepVGGBlock(3, stem_channels, stride=1)
        in_channels = stem_channels
        for index, (channels, blocks) in enumerate(zip(stage_channels, BLOCKS_PER_STAGE), start=1):
            stride = 1 if index == 1 else 2
            stage = [RepVGGBlock(in_channels, channels, stride)]
            stage += [RepVGGBlock(channels, channels) for _ in range(blocks - 1)]
            setattr(self, f"stage{index}", nn.Sequential(*stage))
            in_channels = channels
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage0(x)
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.linear(torch.flatten(self.gap(x), 1))

    def reparameterize(self) -> "RepVGG":
        """Fuse every block into its deploy form, in place, and return the model.

        The fused network equals the training form evaluated with running BN statistics, so
        call this on a trained model; it cannot be undone.
        """
        for module in self.modules():
            if isinstance(module, RepVGGBlock):
                module.reparameterize()
        return self

    @staticmethod
    def is_fused_state_dict(state_dict) -> bool:
        """Whether ``state_dict`` was saved from a reparameterised (deploy-form) RepVGG."""
        return any(FUSED_NAME in key.split(".") for key in state_dict)


MODELS = {name: partial(RepVGG, widths) for name, widths in WIDTHS.items()}
