"""Eager oracle of FSP KD (LayerKD-HN Eq. 28–29), sample by sample as printed: the test reference
for :mod:`hyperkd.kd.fsp`."""
import torch
import torch.nn.functional as F


def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 28: S_i[c, c'] = Σ_{h,w} a_i[c, h, w] · b_i[c', h, w] / (h·w), both maps pooled to the
    smaller spatial size first."""
    h, w = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    a, b = F.adaptive_avg_pool2d(a, (h, w)), F.adaptive_avg_pool2d(b, (h, w))
    return torch.einsum("bchw,bdhw->bcd", a, b) / (h * w)


def fsp_losses(student_pairs, teacher_pairs):
    """Eq. 29 per layer pair: (1/B) Σ_i ‖S_s,i − S_t,i‖²_F."""
    losses = []
    for (s0, s1), (t0, t1) in zip(student_pairs, teacher_pairs):
        per_sample = [((fsp_matrix(s0[i:i + 1], s1[i:i + 1]) - fsp_matrix(t0[i:i + 1], t1[i:i + 1])) ** 2).sum()
                      for i in range(s0.shape[0])]
        losses.append(sum(per_sample) / s0.shape[0])
    return torch.stack(losses)
