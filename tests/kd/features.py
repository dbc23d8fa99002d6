"""Small feature lists shared by the KD tests: odd channel counts, H·W not a multiple of any block,
and one channels_last layer, so strided reads are exercised."""
import torch


def feature_pair(shapes, dtype=torch.float32, channels_last_layer=None, requires_grad=True):
    student, teacher = [], []
    for m, shape in enumerate(shapes):
        s = torch.randn(shape, dtype=torch.float64).to(dtype)
        t = torch.randn(shape, dtype=torch.float64).to(dtype)
        if m == channels_last_layer:
            s = s.to(memory_format=torch.channels_last)
        student.append(s.requires_grad_(requires_grad))
        teacher.append(t)
    return student, teacher


ODD_SHAPES = [(3, 5, 4, 6), (3, 7, 3, 3), (3, 2, 5, 1)]
