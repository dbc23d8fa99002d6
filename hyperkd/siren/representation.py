"""A CNN whose conv weights are decoded by a predictor (paper §2): the object every phase trains.

BatchNorm, biases and the classifier stay those of the original network (``seed``); only the conv
kernels come from the predictor. ``logits(x)`` runs the seed with the decoded kernels through
``torch.func.functional_call``, so gradients reach the predictor; ``materialise()`` writes them
into a plain copy of the network for evaluation and export.
"""
import copy
from typing import Dict

import torch
from torch import nn

from hyperkd.siren.layout import KernelLayout
from hyperkd.siren.permutation import permuted_coords
from hyperkd.siren.predictor import WeightPredictor, parameter_count


class Representation(nn.Module):
    """``predictor`` decoding every conv kernel of ``seed`` at coordinates permuted by ``permutation``."""

    def __init__(self, seed: nn.Module, *, permutation: str = "none", backend: str = "fused",
                 **predictor_options):
        super().__init__()
        self.layout = KernelLayout(seed)
        self.seed = copy.deepcopy(seed).eval()
        for p in self.seed.parameters():
            p.requires_grad_(False)
        self.backend = backend
        self.register_buffer("coords", permuted_coords(self.layout, seed, permutation).cpu())
        output_size = predictor_options.pop("output_size", self.layout.output_size)
        check_output_size(output_size, self.layout)
        self.predictor = WeightPredictor(self.layout.grid, output_size, **predictor_options)
        self._eval_decoded = None

    def decode(self) -> torch.Tensor:
        """N×P² decoded kernels, in the layout's kernel numbering."""
        return self.predictor(self.coords, backend=self.backend)

    def conv_weights(self, decoded=None) -> Dict[str, torch.Tensor]:
        """``{"<conv>.weight": tensor}`` of every conv, centre-cropped from the decoded kernels."""
        decoded = self.decode() if decoded is None else decoded
        return {f"{s.name}.weight": w for s, w in zip(self.layout.slots, self.layout.crop(decoded))}

    def logits(self, x: torch.Tensor, decoded=None) -> torch.Tensor:
        """The decoded CNN's output. In eval mode without grad the decode is cached for as long
        as the predictor's parameters are unchanged, so evaluating a split decodes once rather
        than once per batch, and the val and test splits of one epoch share one decode."""
        if decoded is None and not self.training and not torch.is_grad_enabled():
            key = self._parameter_key()
            if self._eval_decoded is None or self._eval_decoded[0] != key:
                self._eval_decoded = (key, self.decode())
            decoded = self._eval_decoded[1]
        return torch.func.functional_call(self.seed, self.conv_weights(decoded), (x,))

    def _parameter_key(self) -> tuple:
        """Identity and in-place version of every predictor parameter and buffer (an optimizer
        step or ``load_state_dict`` bumps the versions) and the coordinates."""
        tensors = [*self.predictor.parameters(), *self.predictor.buffers(), self.coords]
        return tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)

    def train(self, mode: bool = True):
        if mode:
            self._eval_decoded = None  # training changes the predictor: drop the cached decode
        super().train(mode)
        self.seed.eval()  # BatchNorm statistics are the original's, never updated
        return self

    def materialise(self) -> nn.Module:
        """A copy of the seed network holding the decoded kernels (no link to the predictor)."""
        net = copy.deepcopy(self.seed)
        with torch.no_grad():
            self.layout.scatter(self.decode(), net)
        return net

    def compression_ratio(self) -> float:
        return compression_ratio(self.predictor, self.layout)


def check_output_size(output_size: int, layout: KernelLayout) -> None:
    """The predictor's output must be a square P² ≥ K², K the net's largest kernel."""
    side = int(round(output_size ** 0.5)) if isinstance(output_size, int) and output_size > 0 else 0
    if side * side != output_size or side < layout.kernel_size:
        raise ValueError(f"output_size: expected a square ≥ {layout.output_size} (the largest kernel "
                         f"is {layout.kernel_size}×{layout.kernel_size}), got {output_size!r}")


def compression_ratio(predictor: nn.Module, layout: KernelLayout) -> float:
    """CR = S(P)/S(O): learnable predictor parameters over represented conv parameters (paper §3.2)."""
    return parameter_count(predictor) / layout.represented_parameters
