"""The optimizer of a hypernetised model, with the fused output-layer step (the memory win).

W's gradient is the rank-B_γ product dθᵀ·z (LayerKD-HN Eq. 2). With ``fused=True`` the backward
pass of the generation op hands the factors (dθ, z) to the fused step instead of forming the P×d
gradient, and :meth:`HyperOptimizer.step` applies W's update in place from them
(``hyperkd::hyper_fused_step_``); everything else (hidden MLP, θ0, BatchNorm, classifier) is
stepped by an ordinary torch optimizer. ``fused=False`` is the opt-out: W becomes an ordinary
parameter of that torch optimizer. θ0 (the output layer's bias) gets Σ_γ dθ as its gradient, which
for one γ is dθ itself (a view, see ``gamma_sum``).

**One pass over W per step** (``chain=True``, the default). W is read by the generation of step
t + 1 and read and written by the update of step t. When the next step's γ is known at
:meth:`HyperOptimizer.step` (see :meth:`HyperNetized.next_gamma`), the next codes
z_{t+1} = MLP_{t+1}(γ_{t+1}) are computed right after the torch optimizer has stepped the MLP, and
the update writes W_{t+1}·z_{t+1} from each row it has just written: the *carried* generation
(B_γ×P). The next forward adds θ0 to it instead of reading W again. The update cannot run inside
step t's backward for this: z_{t+1} depends on the MLP after step t's update, which runs after
backward. The carried generation is used only when it is
exactly what a plain generation would give: the same γ (its key), and W and the MLP unchanged
since (their storage and version counters); anything else (evaluation at another γ, a changed γ
schedule, a loaded checkpoint, a skipped step, the first step) regenerates with a plain pass, so
the mathematics and, on the CPU, the bits are those of the unchained step.

The fused step cannot support what needs W's gradient as a tensor: gradient accumulation over
several backward calls, global gradient-norm clipping, and a second backward through the same
graph. Each raises a RuntimeError naming ``fused=False`` as the way out.

Under DDP (torch.distributed initialised, world size > 1) W is no DDP parameter (it needs no
gradient), so the fused step itself applies the rank-mean of dW that DDP gives every other
parameter, exchanging only the factors in backward (see :func:`rank_mean_factors`). With fp16 loss
scaling (``scaler``) dθ arrives multiplied by the loss scale: backward divides it out, and a dθ
holding an inf/NaN leaves no factors, so W is not updated, as ``GradScaler.step`` skips the torch
optimizer's step (θ0's gradient, Σ_γ dθ, holds the inf too, so it skips :meth:`step` whole).
"""
from typing import Optional

import torch
import torch.distributed as dist

from hyperkd import runtime
from hyperkd.hyper.hypernetize import HyperNetized
from hyperkd.ops.hyper_generate import ADAM, ADAMW, SGD, gamma_sum, generation_backward

ALGORITHMS = {"sgd": SGD, "adam": ADAM, "adamw": ADAMW}
STATE_DTYPES = (torch.float32, torch.bfloat16)
_OPT_OUT = "construct HyperOptimizer(..., fused=False) to keep W's full gradient"


class _FusedGeneration(torch.autograd.Function):
    """Generation whose backward hands W's gradient factors to the fused step instead of
    returning W's gradient. ``carried``: W·z generated ahead by the previous step's update."""

    @staticmethod
    def forward(ctx, step, W, z, theta0, geometry, carried):
        ctx.step, ctx.W, ctx.geometry, ctx.used = step, W, geometry, False
        ctx.save_for_backward(z)
        return tuple(torch.ops.hyperkd.hyper_generate(W, z, theta0, *geometry, carried))

    @staticmethod
    def backward(ctx, *grads):
        if ctx.used:
            raise RuntimeError("fused step: a second backward through the same generation would apply "
                               f"W's update twice; {_OPT_OUT}")
        ctx.used = True
        (z,) = ctx.saved_tensors
        dz, dtheta = generation_backward(grads, ctx.W, z.detach(), ctx.geometry)
        ctx.step.take_factors(dtheta, z.detach())
        return None, None, dz, gamma_sum(dtheta), None, None


def _same_on_every_rank(t: torch.Tensor) -> bool:
    """Whether ``t`` holds the same values on every rank: its elementwise maximum and minimum over
    the ranks agree. One all-reduce of 2·numel values, and every rank reaches the same verdict."""
    bounds = torch.cat([t, -t])
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    high, negated_low = bounds.chunk(2)
    return torch.equal(high, -negated_low)


def rank_mean_factors(dtheta: torch.Tensor, z: torch.Tensor):
    """Under DDP, factors (dθ', z') with dθ'ᵀ·z' = the mean over the ranks of dθ_rᵀ·z_r, the same
    on every rank.

    DDP averages every other gradient over the ranks; W's fused update must use the same mean,
    but never as a P×d gradient. When every rank has the same codes z (a γ shared by all ranks)
    the mean is (Σ_r dθ_r / world)ᵀ·z: one all-reduce of B_γ×P values. Otherwise the factors are
    gathered and stacked along B_γ, Σ_r dθ_rᵀ·z_r = [dθ_0; …; dθ_{w−1}]ᵀ·[z_0; …; z_{w−1}]: one
    all-gather of world×B_γ×(P+d) values. Every rank calls this once per step, in the same
    order, with the same B_γ.
    """
    world = runtime.world_size()
    if _same_on_every_rank(z):
        # Not in place: for one γ dθ is also θ0's gradient (a view of it), which DDP reduces itself.
        # Divided first, as DDP divides each gradient before its all-reduce.
        mean = dtheta / world
        dist.all_reduce(mean)
        return mean, z
    packed = torch.cat([dtheta, z], dim=1)
    stacked = packed.new_empty(world * packed.shape[0], packed.shape[1])
    dist.all_gather_single(stacked, packed)
    P = dtheta.shape[1]
    return stacked[:, :P] / world, stacked[:, P:].contiguous()


class _Carried:
    """W_{t+1}·z_{t+1} generated by the update of step t, for the γ named by ``key``, valid while
    W and the MLP are the ones it was generated with (``versions``)."""

    def __init__(self, key, values, versions):
        self.key, self.values, self.versions = key, values, versions


def _same_key(a, b) -> bool:
    """Whether two γ keys (see :meth:`HyperNetized.next_gamma`) name the same γ: the same drawn
    tensor, or the same fixed number."""
    if a is None or b is None:
        return False
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return a == b


class FusedOutputStep:
    """W's optimizer state and its in-place update from the factors (dθ, z), averaged over the
    DDP ranks and unscaled by ``scaler`` (a torch.amp.GradScaler) when there is one; with
    ``chain``, the update also generates the next step's W·z (see the module docstring).

    ``take_factors`` (backward) keeps its own copy of dθ: dθ itself is θ0's gradient for one γ,
    which ``GradScaler.unscale_`` or gradient clipping may change in place before :meth:`step`.
    The update then writes the carried generation into that copy (each row of dθ is read before
    the same row of W·z is written), so the chain costs no memory beside it.
    """

    def __init__(self, W, algorithm, hyper, state_dtype, lr_source, scaler=None, chain=True):
        self.W, self.algorithm, self.hyper, self.lr_source = W, algorithm, hyper, lr_source
        self.scaler, self.chain = scaler, chain
        slots = 0 if algorithm == SGD and hyper["beta1"] == 0.0 else (1 if algorithm == SGD else 2)
        empty = W.new_empty(0, dtype=torch.float32)
        self.state = [torch.zeros(W.shape, dtype=state_dtype, device=W.device) if i < slots else empty
                      for i in range(2)]
        self.step_count, self.pending, self.seed_shared = 0, False, False
        self.factors, self.carried, self._dtheta_copy = None, None, None
        self.chained = 0  # generations that used the carried W·z (a diagnostic: is the chain engaged?)
        self.seed = int(torch.randint(0, 2 ** 31 - 1, ()).item())

    def generate(self, hypernet, z, key=None):
        """The generated tensors for codes z (with autograd), from the carried W·z when it was
        generated for ``key`` by the last update and nothing has changed since."""
        carried, self.carried = self.carried, None  # used once, or dropped: the chain moves on
        values = None
        if carried is not None and _same_key(carried.key, key) and carried.versions == self._versions(hypernet):
            values = carried.values
            self.chained += 1
        return list(_FusedGeneration.apply(self, self.W, z, hypernet.theta0, hypernet._geometry, values))

    def take_factors(self, dtheta, z):
        """Keeps this backward's factors for :meth:`step`: dθ (B_γ×P, times the loss scale), z (B_γ×d)."""
        if self.pending:
            raise RuntimeError("fused step: a second backward before optimizer.step() (gradient "
                               f"accumulation) cannot be fused, W's factors are already taken; {_OPT_OUT}")
        self.pending = True
        self.carried = None  # its values may live in the buffer dθ is copied into below
        owned = False
        if runtime.active():
            self._share_seed()
            dtheta, z = rank_mean_factors(dtheta, z)
            owned = True
        if self.scaler is not None and self.scaler.is_enabled():
            dtheta = dtheta * (1.0 / self.scaler.get_scale())  # as GradScaler.unscale_; exact for 2^k
            owned = True
            if not torch.isfinite(dtheta).all():
                return  # a step GradScaler skips: no factors, so no update and no step count
        if not owned:
            # Into a buffer kept across steps: a fresh B_γ×P copy each step would be new pages for
            # the kernel to fault in and zero (P·4 bytes per step, tens of MiB), not just a copy.
            if self._dtheta_copy is None or self._dtheta_copy.shape != dtheta.shape:
                self._dtheta_copy = torch.empty_like(dtheta, memory_format=torch.contiguous_format)
            dtheta = self._dtheta_copy.copy_(dtheta)
        self.factors = (dtheta, z)

    def step(self, model) -> None:
        """W's update from the factors of the last backward (none after a skipped step), generating
        the next step's W·z on the way when ``model`` knows the next γ (``chain``)."""
        factors, self.factors = self.factors, None
        if factors is None:
            return
        dtheta, z = factors
        self.step_count += 1
        z_next, key = None, None
        ahead = model.next_gamma() if self.chain else None
        if ahead is not None:
            gamma, key = ahead
            with torch.no_grad():
                z_next = model.hypernet.code(gamma)  # the MLP as the torch optimizer has just stepped it
        # dθ is this step's own tensor (the copy, or the rank mean / unscaled factor), free once read.
        next_out = dtheta if z_next is not None and z_next.shape[0] == dtheta.shape[0] else None
        h = self.hyper
        returned = torch.ops.hyperkd.hyper_fused_step_(
            self.W, self.state[0], self.state[1], dtheta, z, self.algorithm, self.lr_source(), h["beta1"],
            h["beta2"], h["eps"], h["weight_decay"], self.step_count, self.seed + self.step_count, z_next, next_out)
        if z_next is not None:
            self.carried = _Carried(key, returned if next_out is None else next_out, self._versions(model.hypernet))

    def reset(self) -> None:
        """Forgets the factors of a backward that will not be stepped and the carried generation."""
        self.factors, self.carried, self.pending = None, None, False

    def _versions(self, hypernet) -> tuple:
        """What the carried generation depends on besides γ: W's and the MLP's storage and version
        counters (in-place updates, load_state_dict's copies and .to() all change one of them)."""
        return tuple((p.data_ptr(), p._version) for p in (self.W, *hypernet.hidden.parameters()))

    def _share_seed(self) -> None:
        """Rank 0's stochastic-rounding seed on every rank, once: the ranks must round W and its
        state identically, or their bf16 replicas drift apart."""
        if self.seed_shared:
            return
        seed = torch.tensor(self.seed, device=self.W.device)
        dist.broadcast(seed, src=0)
        self.seed, self.seed_shared = int(seed), True


class HyperOptimizer:
    """SGD (with momentum), Adam or AdamW over a :class:`HyperNetized` model.

    ``fused=True`` steps W from its gradient's factors (see the module docstring), and with
    ``chain=True`` (the default) generates the next step's weights in the same pass over W; W's
    learning rate follows
    ``param_groups[0]["lr"]`` of the torch optimizer, so schedulers built on :attr:`inner` drive
    both. ``state_dtype=torch.bfloat16`` stores W's momentum/moments in bf16 with stochastic
    rounding; a model built with ``weight_dtype=torch.bfloat16`` needs ``fused=True``.

    Under DDP, construct it before wrapping the model in ``DistributedDataParallel``: with
    ``fused=True`` W needs no gradient, and DDP fixes the parameters it reduces when it is
    built.

    ``scaler``: the ``torch.amp.GradScaler`` that scales the loss, when training with fp16 loss
    scaling. Step through it as usual (``scaler.step(opt); scaler.update()``); the fused step
    needs it because W's factors are taken in backward, where it divides the scale out (W has no
    ``.grad`` for ``scaler.step`` to unscale). Unfused, W's gradient is unscaled by
    ``scaler.step`` like any other and the argument changes nothing. The optimizer is then the
    scaler's one owner on the hypernetwork's side: a training loop takes it from :attr:`scaler`.
    """

    def __init__(self, model: HyperNetized, algorithm: str = "sgd", lr: float = 1e-3, *, momentum: float = 0.0,
                 betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 state_dtype: torch.dtype = torch.float32, fused: bool = True,
                 scaler: Optional[torch.amp.GradScaler] = None, chain: bool = True):
        if not isinstance(model, HyperNetized):
            raise TypeError(f"model: expected a HyperNetized model, got {type(model).__name__}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: expected one of {sorted(ALGORITHMS)}, got {algorithm!r}")
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype: expected one of {STATE_DTYPES}, got {state_dtype}")
        if not lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(f"scaler: expected a torch.amp.GradScaler or None, got {type(scaler).__name__}")
        hypernet = model.hypernet
        W = hypernet.W
        if W.dtype == torch.bfloat16 and not fused:
            raise ValueError("fused: a bf16 W is updated only by the fused step (stochastic rounding); "
                             "use fused=True or weight_dtype=torch.float32")
        if state_dtype != torch.float32 and not fused:
            raise ValueError("state_dtype: bf16 optimizer state is available with fused=True only")
        self.model, self.fused, self.scaler = model, fused, scaler
        hypernet.attach_fused_step(None)
        others = [p for p in model.parameters() if p.requires_grad and p is not W]
        params = others if fused else others + [W]
        if algorithm == "sgd":
            self.inner = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        else:
            cls = torch.optim.Adam if algorithm == "adam" else torch.optim.AdamW
            self.inner = cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        W.requires_grad_(not fused)
        if fused:
            beta1 = momentum if algorithm == "sgd" else betas[0]
            hyper = dict(beta1=float(beta1), beta2=float(betas[1]), eps=float(eps),
                         weight_decay=float(weight_decay))
            hypernet.attach_fused_step(FusedOutputStep(W, ALGORITHMS[algorithm], hyper, state_dtype,
                                                       lambda: self.inner.param_groups[0]["lr"], scaler,
                                                       chain=chain))

    @property
    def param_groups(self):
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clears the gradients and starts a new step: also after a step that ``GradScaler.step``
        skipped (inf/NaN gradients), where :meth:`step` never ran (W's factors are dropped too)."""
        self.inner.zero_grad(set_to_none=set_to_none)
        if self.fused:
            fs = self.model.hypernet.fused_step
            fs.factors, fs.pending = None, False

    def step(self) -> None:
        """Steps everything with the torch optimizer, then W from its factors when fused (after the
        MLP, so that the next step's codes can be generated in the same pass over W)."""
        self.inner.step()
        if self.fused:
            fs = self.model.hypernet.fused_step
            fs.step(self.model)
            fs.pending = False

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Global gradient-norm clipping over all trainable parameters (needs ``fused=False``)."""
        if self.fused:
            raise RuntimeError("fused step: global gradient clipping needs W's gradient norm, but the "
                               f"fused step never forms W's gradient; {_OPT_OUT}")
        return torch.nn.utils.clip_grad_norm_([p for g in self.inner.param_groups for p in g["params"]],
                                              max_norm)

    def state_dict(self) -> dict:
        out = {"inner": self.inner.state_dict()}
        if self.fused:
            fs = self.model.hypernet.fused_step
            out["fused"] = {"state": fs.state, "step": fs.step_count, "seed": fs.seed}
        return out

    def load_state_dict(self, state: dict) -> None:
        saved = [len(g["params"]) for g in state["inner"]["param_groups"]]
        here = [len(g["params"]) for g in self.inner.param_groups]
        if saved[:1] and here[:1] and saved[0] == here[0] + 1:
            raise ValueError("state: this optimizer state was saved while the hypernetwork had a separate "
                             "output bias b beside θ0 (one parameter more); the model's weights load (b is "
                             "folded into θ0) but this state cannot: resume with a fresh optimizer")
        self.inner.load_state_dict(state["inner"])
        if self.fused:
            fs = self.model.hypernet.fused_step
            for dst, src in zip(fs.state, state["fused"]["state"]):
                dst.copy_(src)
            fs.step_count, fs.seed = state["fused"]["step"], state["fused"]["seed"]
            fs.reset()  # a resumed run regenerates its first step's weights
