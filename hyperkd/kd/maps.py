"""Per-layer maps of a network for the JSD map loss (layer-wise learning rates, §3.1–3.3).

For a crucial layer j (a conv with weight W_j) and sample i, three maps:

- attention (§3.1): the AT map Σ_c |f_c|^p of the layer's output — computed inside the fused
  :func:`hyperkd.ops.jsd_map_loss` from the tapped feature, so it has no function here;
- Jacobian (§3.2, Eq. 4): ∂s_i/∂W_j, the derivative of a scalar response s_i of the network's
  output w.r.t. the layer's weights (shape of W_j), per sample through ``torch.func``
  (``vmap(grad)``), or of Σ_i s_i once per batch;
- Hessian (§3.3, Eq. 6): the diagonal of ∂²s_i/∂W_j², estimated by Hutchinson,
  diag(H) = E[v ⊙ Hv] over Rademacher v, with k probes (double backward per probe); the probes are
  drawn per sample and run as one vmapped batch, so k·B·|W_j| values per layer are held (no
  Hessian is ever formed).

The response s is the true class's logit (``"logit"``), the per-sample cross-entropy (``"loss"``)
or the sum of the logits (``"logits"``). In a ReLU network whose BN layers use running statistics
the logit is piecewise linear in any one layer's weights, so its Hessian diagonal is zero almost
everywhere: the Hessian map defaults to the loss, the Jacobian map to the logit.

The maps are taken with BatchNorm on its running statistics (the network in eval mode for that
pass): a per-sample derivative is defined only when samples do not interact, and the pass must
not move the running statistics. The training forward is unaffected. When the network's weights
require grad, the maps are differentiable w.r.t. them (the student's loss backpropagates through
its maps: a double backward for Jacobian maps, a triple one for Hessian maps).
"""
import contextlib
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

RESPONSES = ("logit", "loss", "logits")


def response(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """s_i per sample: the true class's logit, the cross-entropy, or the sum of the logits."""
    if kind == "logit":
        return logits.gather(1, labels[:, None]).squeeze(1)
    if kind == "loss":
        return F.cross_entropy(logits, labels, reduction="none")
    if kind == "logits":
        return logits.sum(dim=1)
    raise ValueError(f"response: expected one of {RESPONSES}, got {kind!r}")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    mode = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(mode)


def _crucial_weights(model: nn.Module, layers: Sequence[str]) -> Dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules or not isinstance(getattr(modules[n], "weight", None),
                                                                       torch.Tensor)]
    if missing:
        raise ValueError(f"layers: {type(model).__name__} has no weighted module named {missing[0]!r}")
    return {f"{n}.weight": modules[n].weight for n in layers}


def _response_of(model, params, buffers, labels_kind):
    """s(W; x, y) summed over the given (possibly single-sample) batch, as a function of the
    crucial weights W (a dict), for ``torch.func``."""
    def fn(weights, x, y):
        logits = functional_call(model, ({**params, **weights}, buffers), (x,))
        return response(logits, y, labels_kind).sum()
    return fn


def jacobian_maps(model: nn.Module, layers: Sequence[str], x: torch.Tensor, y: torch.Tensor, *,
                  response_kind: str = "logit", per_sample: bool = True) -> List[torch.Tensor]:
    """∂s_i/∂W_j per crucial layer j: B×|W_j| (``per_sample``) or 1×|W_j| for Σ_i s_i."""
    if response_kind not in RESPONSES:
        raise ValueError(f"response: expected one of {RESPONSES}, got {response_kind!r}")
    weights = _crucial_weights(model, layers)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    fn = _response_of(model, params, buffers, response_kind)
    with _eval_mode(model):
        if per_sample:
            one = lambda w, xi, yi: fn(w, xi[None], yi[None])
            maps = vmap(grad(one), in_dims=(None, 0, 0), randomness="different")(weights, x, y)
        else:
            maps = {k: g[None] for k, g in grad(fn)(weights, x, y).items()}
    return [maps[k].flatten(1) for k in weights]


def hessian_diagonal_maps(model: nn.Module, layers: Sequence[str], x: torch.Tensor, y: torch.Tensor, *,
                          response_kind: str = "loss", probes: int = 1, per_sample: bool = True,
                          generator: torch.Generator = None) -> List[torch.Tensor]:
    """Hutchinson's diag(∂²s/∂W_j²) ≈ mean_k v_k ⊙ H v_k per crucial layer: B×|W_j| or 1×|W_j|.

    Each probe is a Rademacher vector per sample (per batch without ``per_sample``) and layer; H v
    is the derivative of ⟨∂s/∂W, v⟩ over all crucial layers at once (double backward): the
    blocks of H across layers add variance, not bias, since the layers' probes are independent.
    """
    if response_kind not in RESPONSES:
        raise ValueError(f"response: expected one of {RESPONSES}, got {response_kind!r}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes: expected a positive integer, got {probes!r}")
    weights = _crucial_weights(model, layers)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    fn = _response_of(model, params, buffers, response_kind)

    def v_hv(w, xb, yb, v):
        directional = lambda w_: sum((g * v[k]).sum() for k, g in grad(fn)(w_, xb, yb).items())
        return {k: v[k] * hv for k, hv in grad(directional)(w).items()}

    rows = len(x) if per_sample else 1
    # All probes in one vmapped call: probe r of sample i is row r·B + i.
    v = {k: rademacher((probes * rows, *w.shape), w, generator) for k, w in weights.items()}
    with _eval_mode(model):
        if per_sample:
            one = lambda w, xi, yi, vi: v_hv(w, xi[None], yi[None], vi)
            est = vmap(one, in_dims=(None, 0, 0, 0))(weights, x.repeat(probes, *[1] * (x.dim() - 1)),
                                                     y.repeat(probes), v)
        else:
            est = vmap(v_hv, in_dims=(None, None, None, 0))(weights, x, y, v)
    return [est[k].reshape(probes, rows, -1).mean(dim=0) for k in weights]


def rademacher(shape, like: torch.Tensor, generator: torch.Generator = None) -> torch.Tensor:
    """±1 with equal probability, in ``like``'s dtype and device."""
    bits = torch.randint(0, 2, shape, device=like.device, generator=generator)
    return (2 * bits - 1).to(like.dtype)
