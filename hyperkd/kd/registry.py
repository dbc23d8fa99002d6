"""Registry of layer-wise KD methods, named by strings such as ``"at1:p=2"`` or ``"cwd:tau=4"``.

A name is ``method[:key=value[,key=value...]]``; the values are numbers, except a method's named
components (strings from a fixed set, such as ``"makd:aff=cs,norm=l2,loss=sl1"``) and the parameter
every method takes, ``reduction=sum|mean`` (how the batch Σ of its equation is reduced; see
``LayerwiseMethod.reduction``). Each entry knows its defaults and a validator, so a typo in a name
or a parameter is reported with the valid choices.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict

from hyperkd.kd.base import REDUCTIONS


@dataclass(frozen=True)
class MethodEntry:
    """One registered method: how to build it, its default parameters and what they must satisfy."""
    build: Callable[..., object]
    defaults: Dict[str, float] = field(default_factory=dict)
    # Maps a parameter to (predicate, what the predicate requires) for the error message.
    constraints: Dict[str, tuple] = field(default_factory=dict)
    summary: str = ""
    # Named components: a parameter whose value is one of these strings (its default in defaults).
    choices: Dict[str, tuple] = field(default_factory=dict)


_REGISTRY: Dict[str, MethodEntry] = {}


def register(name: str, entry: MethodEntry) -> None:
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is already registered")
    _REGISTRY[name] = entry


def methods() -> Dict[str, Dict[str, float]]:
    """Every registered method name with its default parameters, e.g. ``{"cwd": {"tau": 4.0}, ...}``."""
    return {name: dict(entry.defaults) for name, entry in sorted(_REGISTRY.items())}


def describe() -> str:
    """One line per method: its name, default parameters and what it computes."""
    return "\n".join(f"{name}{_defaults_text(entry.defaults)}: {entry.summary}"
                     for name, entry in sorted(_REGISTRY.items()))


def _defaults_text(defaults) -> str:
    return f"({', '.join(f'{k}={_value_text(v)}' for k, v in defaults.items())})" if defaults else ""


def _value_text(value) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def _valid_names() -> str:
    return ", ".join(f"{name}{_defaults_text(entry.defaults)}" for name, entry in sorted(_REGISTRY.items()))


def parse_method(spec: str):
    """``"name:k=v,..."`` → (name, parameters with defaults filled in), validated."""
    if not isinstance(spec, str):
        raise TypeError(f"method: expected a string such as 'at1:p=2', got {type(spec).__name__}")
    name, _, arg_text = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in _REGISTRY:
        raise ValueError(f"method: unknown KD method {name!r}; valid methods are: {_valid_names()}")
    entry = _REGISTRY[name]
    params = dict(entry.defaults)
    for item in filter(None, (s.strip() for s in arg_text.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if key == "reduction":
            if value not in REDUCTIONS:
                raise ValueError(f"method {name!r}: reduction expects one of {', '.join(REDUCTIONS)}, "
                                 f"got {value!r}")
            params[key] = value
            continue
        if key not in entry.defaults:
            valid = ", ".join(entry.defaults) or "none"
            raise ValueError(f"method {name!r}: unknown parameter {key!r}; valid parameters: {valid} "
                             f"(and reduction=sum|mean)")
        if key in entry.choices:
            if value.lower() not in entry.choices[key]:
                raise ValueError(f"method {name!r}: {key} expects one of {', '.join(entry.choices[key])}, "
                                 f"got {value!r}")
            params[key] = value.lower()
            continue
        try:
            params[key] = float(value) if eq else float("nan")
        except ValueError:
            raise ValueError(f"method {name!r}: parameter {key} expects a number, got {value!r}") from None
        if params[key] != params[key]:
            raise ValueError(f"method {name!r}: parameter {key} expects a number, got {item!r}")
    for key, (ok, requirement) in entry.constraints.items():
        if not ok(params[key]):
            raise ValueError(f"method {name!r}: {key} must be {requirement}, got {params[key]:g}")
    return name, params


def make_method(spec, reduction=None):
    """A method object from a registry string (or the object itself, passed through).
    ``reduction`` ("sum" or "mean") applies where the string names none; None keeps the method's
    native reduction."""
    if not isinstance(spec, str):
        return spec
    if reduction is not None and reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    name, params = parse_method(spec)
    reduction = params.pop("reduction", reduction)
    method = _REGISTRY[name].build(**params)
    method.reduction = reduction
    return method
