"""``hypernetize``: wire a primary network to a MIP hypernetwork (LayerKD-HN §3.1–3.2).

No module surgery: the generated tensors are injected on every forward with
``torch.func.functional_call``, so the primary keeps its own parameters (and any code that holds
them keeps working). With ``init_theta0="model"`` their storage becomes θ0's, which held the
same values at that point: the primary then holds no second P-sized copy.
"""
import copy
import numbers

import torch
from torch import nn
from torch.func import functional_call, vmap

from hyperkd.hyper.gamma import as_gamma_batch, draw_gamma, rng_state, set_rng_state
from hyperkd.hyper.hypernet import HyperNet, theta0_kaiming
from hyperkd.hyper.layout import LayoutPlan, find_modules

INIT_THETA0 = ("model", "kaiming")


class HyperNetized(nn.Module):
    """A primary network whose planned tensors come from ``hypernet``; call as ``model(x, gamma)``.

    ``gamma``: a float, a (k,) tensor or a (B_γ, k) tensor in [0, 1]; ``None`` draws γ ~ U[0, 1]
    while training and uses 0.5 in eval. With B_γ > 1 the batch is split into B_γ equal sample
    groups, group g running with the weights of γ_g; all B_γ weight sets come from one GEMM.
    """

    def __init__(self, primary: nn.Module, plan: LayoutPlan, hypernet: HyperNet):
        super().__init__()
        plan.check(primary)
        self.primary, self.plan, self.hypernet = primary, plan, hypernet
        # How the last γ with gradients was chosen, and a draw of the next one made ahead (see
        # next_gamma): what lets the fused step generate the next step's weights early.
        self._last_choice, self._drawn_ahead = None, None
        # The primary's own copies of the generated tensors are overridden on every call.
        params = dict(primary.named_parameters())
        for name in plan.names:
            params[name].requires_grad_(False)

    def generate(self, gamma=None) -> list:
        """The generated tensors for γ, each B_γ×(*shape)."""
        device, k = self.hypernet.theta0.device, self.hypernet.gamma_dim
        key = None
        if gamma is None and self.training:
            g, key = self._draw(device, k)
        else:
            g = as_gamma_batch(gamma, k, training=self.training, device=device)
            if isinstance(gamma, numbers.Real) and not isinstance(gamma, bool):
                key = float(gamma)
        if torch.is_grad_enabled():
            self._last_choice = "draw" if key is not None and gamma is None else key
        return self.hypernet(g, key=key)

    def _draw(self, device, k):
        """(γ ~ U[0, 1]^k, its key): the draw made ahead by :meth:`next_gamma` when the generator is
        where that draw started (nothing has drawn since), so the generator ends where a fresh draw
        leaves it; else a fresh draw, with a key no carried generation has."""
        ahead, self._drawn_ahead = self._drawn_ahead, None
        if ahead is not None:
            before, gamma, after = ahead
            if torch.equal(rng_state(device), before):
                set_rng_state(device, after)
                return gamma, gamma
        gamma = draw_gamma(k, device)
        return gamma, object()

    @torch.no_grad()
    def next_gamma(self):
        """(γ, key) of the next training forward, known ahead, or None.

        A fixed number is used again (key: the number). A γ drawn at random is drawn now from the
        same generator, which is then put back: the next forward takes this draw (key: the drawn
        tensor) only if the generator is still where it was, i.e. it draws the very same γ it would
        have drawn, so the random sequence is that of a run that never looked ahead. The fused step
        asks for it to generate the next step's weights while it updates W.
        """
        choice, device, k = self._last_choice, self.hypernet.theta0.device, self.hypernet.gamma_dim
        if choice == "draw":
            before = rng_state(device)
            gamma = draw_gamma(k, device)
            after = rng_state(device)
            set_rng_state(device, before)
            self._drawn_ahead = (before, gamma, after)
            return gamma, gamma
        if isinstance(choice, float):
            return as_gamma_batch(choice, k, training=True, device=device), choice
        return None

    def forward(self, x, gamma=None):
        self.plan.check(self.primary)
        weights = self.generate(gamma)
        groups = weights[0].shape[0]
        names = self.plan.names
        if groups == 1:
            return functional_call(self.primary, {n: w[0] for n, w in zip(names, weights)}, (x,))
        if x.shape[0] % groups:
            raise ValueError(f"x: a batch of {x.shape[0]} cannot be split into {groups} equal groups, "
                             f"one per γ")
        xs = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
        if self.training:
            # vmap cannot update BatchNorm running statistics in place: run the groups one by one
            # (each group normalises with its own batch statistics).
            outs = [functional_call(self.primary, {n: w[g] for n, w in zip(names, weights)}, (xs[g],))
                    for g in range(groups)]
            return torch.cat(outs)
        run = vmap(lambda params, xg: functional_call(self.primary, params, (xg,)))
        out = run(dict(zip(names, weights)), xs)
        return out.reshape(x.shape[0], *out.shape[2:])

    @torch.no_grad()
    def materialize(self, gamma=0.5) -> nn.Module:
        """A plain copy of the primary network with the weights generated for one γ baked in."""
        weights = self.generate(gamma)
        if weights[0].shape[0] != 1:
            raise ValueError(f"gamma: materialize takes one γ, got {weights[0].shape[0]}")
        net = copy.deepcopy(self.primary)
        params = dict(net.named_parameters())
        for e, w in zip(self.plan, weights):
            p = params[e.name]
            fmt = torch.channels_last if e.memory_format == "channels_last" else torch.contiguous_format
            p.data = w[0].to(p.dtype).contiguous(memory_format=fmt).clone(memory_format=fmt)
            p.requires_grad_(True)
        return net


def hypernetize(model: nn.Module, hidden=(16, 64, 128), gamma_dim: int = 1, modules=None,
                init_theta0: str = "model", *, types=(nn.Conv2d,), memory_format: str = "contiguous",
                delta_ratio: float = 0.1, negative_slope: float = 0.01,
                weight_dtype: torch.dtype = torch.float32) -> HyperNetized:
    """Hypernetise every module of ``types`` (default: all Conv2d, with their biases) of ``model``.

    ``modules``: explicit module paths, or a :class:`LayoutPlan`, instead of searching by type.
    ``init_theta0="model"`` copies the model's current weights into θ0 and makes the model's own
    copies views of θ0 (see :func:`_share_with_theta0`); ``"kaiming"`` draws fresh ones. W starts
    so that the generated Δθ is ≈ ``delta_ratio`` of θ0 in RMS per layer.
    ``memory_format="channels_last"`` generates 4-D kernels in channels_last layout.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if init_theta0 not in INIT_THETA0:
        raise ValueError(f"init_theta0: expected one of {INIT_THETA0}, got {init_theta0!r}")
    if isinstance(modules, LayoutPlan):
        plan = modules
    else:
        paths = find_modules(model, types) if modules is None else list(modules)
        if not paths:
            raise ValueError(f"model: no module of type {[t.__name__ for t in types]} to hypernetise")
        plan = LayoutPlan.from_modules(model, paths, memory_format=memory_format)
    plan.check(model)
    theta0 = plan.gather(model) if init_theta0 == "model" else theta0_kaiming(plan)
    # The hypernetwork is built where θ0 is, on the model's device (see HyperNet).
    theta0 = theta0.to(next(model.parameters()).device)
    hypernet = HyperNet(plan, theta0, gamma_dim=gamma_dim, hidden=hidden, negative_slope=negative_slope,
                        delta_ratio=delta_ratio, weight_dtype=weight_dtype)
    if init_theta0 == "model":
        _share_with_theta0(model, plan, hypernet.theta0)
    return HyperNetized(model, plan, hypernet)


def _share_with_theta0(model: nn.Module, plan: LayoutPlan, theta0: torch.Tensor) -> None:
    """Makes the primary's own copies of the generated tensors views of θ0.

    Every forward injects the generated tensors, so the primary's copies are never read; kept
    apart they would be a second P-sized buffer (35 MiB for VGG-11-bn). θ0 was just copied from
    them, so the values do not change here; from now on they follow θ0 as it trains. A tensor of
    another dtype or device than θ0 keeps its own copy: a view cannot convert, and materialize()
    exports each tensor in the primary's dtype. load_state_dict writes θ0 after the primary's
    entries (HyperNetized registers the primary first), so θ0 comes out as saved even when a
    checkpoint's primary entries differ from it.
    """
    params = dict(model.named_parameters())
    for e, part in zip(plan, theta0.detach().split(plan.numels)):
        p = params[e.name]
        if p.dtype == part.dtype and p.device == part.device:
            p.data = part.view(e.shape)


def hypernetized_from_state(model: nn.Module, state_dict: dict, **options) -> HyperNetized:
    """Rebuilds the :class:`HyperNetized` model that saved ``state_dict`` around a fresh ``model``
    of the same architecture and loads it strictly. The hidden widths and γ dimension are read
    off the state's shapes; ``options`` go to :func:`hypernetize` (e.g. ``memory_format``)."""
    keys = sorted((k for k in state_dict if k.startswith("hypernet.hidden.") and k.endswith(".weight")),
                  key=lambda k: int(k.split(".")[2]))
    if not keys or "hypernet.W" not in state_dict:
        raise ValueError("state_dict: not a hypernetised model's state (no hypernet.W / hypernet.hidden.*); "
                         "load a plain checkpoint with hyperkd.models.create(..., checkpoint=)")
    hidden = tuple(state_dict[k].shape[0] for k in keys)
    gamma_dim = state_dict[keys[0]].shape[1] // 2
    net = hypernetize(model, hidden=hidden, gamma_dim=gamma_dim, delta_ratio=0.0,
                      weight_dtype=state_dict["hypernet.W"].dtype, **options)
    net.load_state_dict(state_dict)
    return net
