"""Flow of solution procedure (FSP) KD, LayerKD-HN appendix A.3.7 (Yim et al. 2017).

For adjacent tapped layers a = f_m, b = f_{m+1} (Eq. 28), the larger map is adaptive-average-pooled
to the smaller spatial size h×w, then S_i = a_i · b_iᵀ / (h·w) (C_a × C_b per sample i).
Eq. 29: L_m = Σ_i ‖S_s,i − S_t,i‖²_F / B, one term per pair of layers.
"""
import torch
import torch.nn.functional as F


def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """S of Eq. 28, B × C_a × C_b."""
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    a = a if tuple(a.shape[2:]) == size else F.adaptive_avg_pool2d(a, size)
    b = b if tuple(b.shape[2:]) == size else F.adaptive_avg_pool2d(b, size)
    return torch.bmm(a.flatten(2), b.flatten(2).transpose(1, 2)) / (size[0] * size[1])


def fsp_losses(student_pairs, teacher_pairs):
    """One term of Eq. 29 per layer pair: lists of (f_m, f_m') for the student and the teacher."""
    return torch.stack([
        (fsp_matrix(s0, s1) - fsp_matrix(t0, t1)).pow(2).sum() / s0.shape[0]
        for (s0, s1), (t0, t1) in zip(student_pairs, teacher_pairs)
    ])
