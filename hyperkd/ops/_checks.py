"""Argument checks shared by the layer-list ops: each error names the argument and what was expected."""
from typing import Sequence

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_layer_list(value, name: str) -> list:
    """A tensor or a sequence of tensors, as a non-empty list."""
    if isinstance(value, torch.Tensor):
        return [value]
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{name}: expected a tensor or a list of tensors, got {type(value).__name__}")
    if len(value) == 0:
        raise ValueError(f"{name}: expected a non-empty list of feature maps")
    for m, t in enumerate(value):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{m}]: expected a tensor, got {type(t).__name__}")
    return list(value)


def check_features(feats: list, name: str) -> None:
    """4-D, floating, one dtype, one device and one batch size across the layers."""
    first = feats[0]
    for m, f in enumerate(feats):
        if f.dim() != 4:
            raise ValueError(f"{name}[{m}]: expected a 4-D B×C×H×W feature map, got shape {tuple(f.shape)}")
        if f.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name}[{m}]: expected a floating dtype {SUPPORTED_DTYPES}, got {f.dtype}")
        if f.dtype != first.dtype:
            raise TypeError(f"{name}[{m}]: dtype {f.dtype} differs from {name}[0]'s {first.dtype}")
        if f.device != first.device:
            raise ValueError(f"{name}[{m}]: device {f.device} differs from {name}[0]'s {first.device}")
        if f.shape[0] != first.shape[0]:
            raise ValueError(f"{name}[{m}]: batch {f.shape[0]} differs from {name}[0]'s {first.shape[0]}")
        if f.shape[0] == 0 or f.numel() == 0:
            raise ValueError(f"{name}[{m}]: expected a non-empty feature map, got shape {tuple(f.shape)}")
        if f.device.type == "cuda" and f.dtype == torch.float64:
            raise TypeError(f"{name}[{m}]: float64 runs on the CPU only; use fp32, fp16 or bf16 on CUDA")


def check_pairs(student: list, teacher: list) -> None:
    """Same layer count, and each teacher feature on the student's device with its shape."""
    if len(student) != len(teacher):
        raise ValueError(f"teacher: expected {len(student)} layers to match student, got {len(teacher)}")
    for m, (s, t) in enumerate(zip(student, teacher)):
        if t.device != s.device:
            raise ValueError(f"teacher[{m}]: device {t.device} differs from student[{m}]'s {s.device}")
        if t.dim() == 4 and t.shape != s.shape:
            raise ValueError(f"layer {m}: student shape {tuple(s.shape)} and teacher shape "
                             f"{tuple(t.shape)} differ")


def layer_weights(lambdas, count: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """λ_m as a 1-D tensor of `count` weights (all ones when None)."""
    if lambdas is None:
        return torch.ones(count, dtype=dtype, device=like.device)
    lam = torch.as_tensor(lambdas, dtype=dtype).to(like.device).reshape(-1)
    if lam.numel() != count:
        raise ValueError(f"lambdas: expected {count} weights, one per layer, got {lam.numel()}")
    return lam


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Losses and statistics are kept in fp64 for fp64 inputs and in fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_number(value, name: str, *, minimum: float, strict: bool) -> float:
    """A real number ≥ minimum (> minimum when strict), returned as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TypeError(f"{name}: expected a number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name}: expected {name} {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


def summarise_raw(teacher: list, summarise) -> list:
    """Teacher entries that are raw 4-D features go through ``summarise`` (one batched call for
    all of them); entries that are already summaries pass through unchanged."""
    raw = [m for m, t in enumerate(teacher) if t.dim() == 4]
    out = list(teacher)
    if raw:
        for m, s in zip(raw, summarise([teacher[m] for m in raw])):
            out[m] = s
    return out
