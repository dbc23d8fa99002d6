"""Crucial layers of a teacher–student pair (layer-wise learning rates, §3.1 and §4.1).

The paper maps "the crucial conversion layers of the ResNet where we observe a dimensional change
in the feature channels" and keeps those "that dimensionally match the student and the teacher".
Read here as: in each net, the convolutions whose output channel count differs from their input's,
the first of each (in, out) channel pair in module order — the main path's conv, not the 1×1
projection shortcut that repeats its channel change; then the student's and the teacher's lists
are paired in order where the weights have the same shape. For ResNet-18 → ResNet-10 that is the
stem and the first conv of stages 2–4: four layers, as in the paper.
"""
from typing import List, Sequence, Tuple

from torch import nn


def channel_changes(model: nn.Module) -> List[str]:
    """Qualified names of the convs that change the channel count, first of each (in, out) pair."""
    seen, names = set(), []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or module.in_channels == module.out_channels:
            continue
        key = (module.in_channels, module.out_channels)
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def _weight_shape(model: nn.Module, name: str, role: str) -> Tuple[int, ...]:
    module = dict(model.named_modules()).get(name)
    if module is None:
        raise ValueError(f"pairs: {role} has no module named {name!r}")
    if not isinstance(module, nn.Conv2d):
        raise ValueError(f"pairs: {role} module {name!r} is a {type(module).__name__}, expected a Conv2d")
    return tuple(module.weight.shape)


def _parse_pair(pair: str) -> Tuple[str, str]:
    if not isinstance(pair, str) or pair.count("=") != 1:
        raise ValueError(f"pairs: expected 'student.name=teacher.name', got {pair!r}")
    student, teacher = (s.strip() for s in pair.split("="))
    if not student or not teacher:
        raise ValueError(f"pairs: expected 'student.name=teacher.name', got {pair!r}")
    return student, teacher


def crucial_layers(student: nn.Module, teacher: nn.Module,
                   pairs: Sequence[str] = ()) -> List[Tuple[str, str]]:
    """(student name, teacher name) of each crucial layer.

    ``pairs`` ("s=t" strings) names them explicitly; each side must be a Conv2d and both weights
    must have one shape (the Jacobian and Hessian maps are distributions over the weights).
    Without ``pairs`` they are found as the module docstring says; no match is an error.
    """
    if pairs:
        found = []
        for pair in pairs:
            s, t = _parse_pair(pair)
            s_shape, t_shape = _weight_shape(student, s, "student"), _weight_shape(teacher, t, "teacher")
            if s_shape != t_shape:
                raise ValueError(f"pairs: {pair!r} pairs weights of shapes {s_shape} and {t_shape}; "
                                 f"crucial layers must match in shape")
            found.append((s, t))
        return found
    teacher_left = [(t, _weight_shape(teacher, t, "teacher")) for t in channel_changes(teacher)]
    found = []
    for s in channel_changes(student):
        shape = _weight_shape(student, s, "student")
        match = next((k for k, (_, t_shape) in enumerate(teacher_left) if t_shape == shape), None)
        if match is not None:
            found.append((s, teacher_left[match][0]))
            del teacher_left[:match + 1]  # keep the pairing in order: depth matches depth
    if not found:
        raise ValueError("crucial layers: no channel-changing conv of the student matches one of the "
                         f"teacher in weight shape (student candidates: {channel_changes(student)}, "
                         f"teacher: {channel_changes(teacher)}); name them with pairs=('s=t', ...)")
    return found
