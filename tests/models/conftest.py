"""Helpers shared by the model-zoo tests."""
import pytest
import torch
from torch import nn


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial affine parameters and running statistics.

    Fresh BNs are identities in eval mode, which would hide mistakes in BN folding or in which
    buffers a checkpoint restores.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor, low, high in ((module.weight, 0.5, 1.0), (module.bias, -0.1, 0.1),
                                          (module.running_mean, -0.1, 0.1),
                                          (module.running_var, 0.5, 1.5)):
                    tensor.copy_(torch.empty(tensor.shape).uniform_(low, high, generator=generator))
    return model


@pytest.fixture
def randomized_bn():
    return randomize_batch_norm
