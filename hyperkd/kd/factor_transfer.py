"""Factor transfer (FT, Kim et al. 2018), LayerKD-HN appendix A.3.2 and §3.4.

Per tapped layer m, a paraphraser u_m = dec ∘ enc (a conv autoencoder whose middle layer has
``rate``·C channels) is pretrained on teacher features with the reconstruction loss of Eq. 12
(mean squared error here) by :func:`pretrain_paraphrasers`. During KD a translator v_m maps the
student feature to the factor space, and Eq. 13 compares L2-normalised factors:
L_m = Σ_i ‖v_m(f_i)/‖v_m(f_i)‖ − enc_m(g_i)/‖enc_m(g_i)‖‖_p / B (p = 1, averaged over the batch).
The teacher keeps only its normalised factor, computed in the forward hook.
"""
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hyperkd.kd.base import LayerwiseMethod
from hyperkd.kd.taps import FeatureTaps


def _conv_block(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """u_m: enc widens C to F = round(rate·C) channels at the same spatial size, dec maps back."""

    def __init__(self, channels: int, rate: float = 2.0):
        super().__init__()
        factor = max(1, round(channels * rate))
        self.encoder = nn.Sequential(*_conv_block(channels, channels), *_conv_block(channels, factor))
        self.decoder = nn.Sequential(*_conv_block(factor, channels), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, g):
        return self.decoder(self.encoder(g))


class Translator(nn.Module):
    """v_m: maps a student feature of C channels to the paraphraser's F factor channels."""

    def __init__(self, channels: int, rate: float = 2.0):
        super().__init__()
        factor = max(1, round(channels * rate))
        self.body = nn.Sequential(*_conv_block(channels, channels), *_conv_block(channels, factor))

    def forward(self, f):
        return self.body(f)


class FactorTransfer(LayerwiseMethod):
    """Eq. 13 at every tapped layer. :meth:`build` creates the per-layer paraphrasers and
    translators from the channel counts; pretrain the paraphrasers with
    :func:`pretrain_paraphrasers`, and give :meth:`parameters` (the translators) to the student's
    optimiser."""

    native_reduction = "mean"  # Eq. 13 is per sample; the op averages it over the batch

    def __init__(self, rate: float = 2.0, p: float = 1.0):
        self.rate, self.p = rate, p
        self.name = f"ft:rate={rate:g},p={p:g}"
        self.paraphrasers: Optional[nn.ModuleList] = None
        self.translators: Optional[nn.ModuleList] = None

    def build(self, channels: Sequence[int]) -> "FactorTransfer":
        self.paraphrasers = nn.ModuleList(Paraphraser(c, self.rate) for c in channels)
        self.translators = nn.ModuleList(Translator(c, self.rate) for c in channels)
        return self

    def parameters(self):
        return self._built()[1].parameters()

    def _built(self):
        if self.paraphrasers is None:
            raise RuntimeError("ft: call build(channels) and pretrain_paraphrasers() before the KD loss")
        return self.paraphrasers, self.translators

    def summarise(self, g, layer):
        paraphraser = self._built()[0][layer]
        paraphraser.eval()
        return F.normalize(paraphraser.encoder(g).flatten(1), dim=1)

    def layer_losses(self, student, summaries):
        translators = self._built()[1]
        return torch.stack([
            (F.normalize(translators[m](f).flatten(1), dim=1) - t).norm(p=self.p, dim=1).mean()
            for m, (f, t) in enumerate(zip(student, summaries))
        ])


#: §3.4: "For layers conv5.0 and conv5.1, the learning rates of the corresponding Adam optimisers
#: were set to 0.0001, while all optimisers corresponding to other layers were set to 0.001"
#: (ShuffleNetV2's last 1×1 conv and its BatchNorm; names absent from a net change nothing).
PAPER_PARAPHRASER_LRS = {"conv5.0": 1e-4, "conv5.1": 1e-4}


def pretrain_paraphrasers(method: FactorTransfer, teacher: nn.Module, layers: Sequence[str],
                          batches: Iterable, epochs: int = 20, lr: float = 1e-3,
                          lrs: Optional[Dict[str, float]] = None) -> List[List[float]]:
    """Trains each paraphraser on the teacher's features at ``layers`` with the reconstruction loss
    of Eq. 12, for ``epochs`` passes over ``batches`` (inputs, or (inputs, labels) pairs), each
    moved to the teacher's device.

    As in §3.4: one Adam optimiser per layer (learning rate ``lrs[name]`` or ``lr``; ``lrs``
    defaults to the paper's :data:`PAPER_PARAPHRASER_LRS`) and one ReduceLROnPlateau per layer
    (mode min, patience 3, factor 0.5) stepped on the epoch's mean loss. Returns the mean
    reconstruction loss per epoch and layer, to check that it converged (A.6).
    """
    paraphrasers, _ = method._built()
    lrs = PAPER_PARAPHRASER_LRS if lrs is None else lrs
    device = next(teacher.parameters()).device
    optimisers = [torch.optim.Adam(p.parameters(), lr=lrs.get(name, lr)) for name, p in zip(layers, paraphrasers)]
    schedulers = [torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode="min", patience=3, factor=0.5)
                  for o in optimisers]
    taps = FeatureTaps(teacher, layers, "teacher")
    history = []
    teacher.eval()
    paraphrasers.train()
    try:
        for _ in range(epochs):
            sums, count = [0.0] * len(layers), 0
            for batch in batches:
                x = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
                with torch.no_grad(), taps.capture() as captured:
                    teacher(x)
                for m, (g, p, o) in enumerate(zip(captured.values(), paraphrasers, optimisers)):
                    loss = F.mse_loss(p(g), g)
                    o.zero_grad()
                    loss.backward()
                    o.step()
                    sums[m] += loss.item()
                count += 1
            means = [s / max(count, 1) for s in sums]
            for scheduler, mean in zip(schedulers, means):
                scheduler.step(mean)
            history.append(means)
    finally:
        taps.remove()
        paraphrasers.eval()
    return history
