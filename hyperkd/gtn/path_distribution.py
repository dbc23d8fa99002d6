"""A learnt distribution over the supernet's paths: our reading of the GTN paper's "trainable
distribution" and "architecture loss", built as ProxylessNAS's REINFORCE variant (Cai et al. 2019).

Each learnt layer l has logits α_l (not the KL weight α of the grafted objective), initialised to
zero (uniform); an operation's probability is softmax(α_l) and a path s has
p(s) = Π_l softmax(α_l)[s_l]. Every ``every`` training steps a path
s ~ p runs on a held-out batch that the weights never train on (:mod:`hyperkd.gtn.holdout`); its
reward R is minus the architecture loss on that batch, and Adam takes one step on α along the
REINFORCE estimate of ∇_α E_s[R],

    g = (R − b) · ∇_α log p(s),   with   ∇_{α_l} log p(s) = onehot(s_l) − softmax(α_l),

(Adam minimises −(R − b)·log p(s)), b an exponential moving average of the rewards so far,
b ← d·b + (1 − d)·R (d = 0.99, ProxylessNAS's search script; the first reward sets b, so the first
step has no advantage). The distribution lives on the CPU: a few dozen logits, and sampling reads
them on the host anyway.

Only the layers a branch runs are learnt: the layers before the first grafted block are the
teacher's part of every branch, so their reward would not depend on them and REINFORCE would only
add noise there; they stay uniform (and unused).
"""
import math
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hyperkd.models.nas import Spec

# ProxylessNAS's rl_baseline_decay_weight.
BASELINE_DECAY = 0.99


def check_arch_settings(lr: float, every: int, baseline_decay: float) -> None:
    """Raises naming the flag of the first bad setting of a :class:`PathLearner`."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"arch_lr (--arch-lr): expected a positive learning rate, got {lr!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"arch_every (--arch-every): expected an integer >= 1 (training steps per update), "
                         f"got {every!r}")
    if isinstance(baseline_decay, bool) or not isinstance(baseline_decay, (int, float)) \
            or not 0 <= baseline_decay < 1:
        raise ValueError(f"arch_baseline_decay (--arch-baseline-decay): expected a number in [0, 1), "
                         f"got {baseline_decay!r}")


class PathDistribution(nn.Module):
    """Per-layer logits α_l over the candidates of the ``learnt`` layers (indices into
    ``candidates``, one tuple of operation names per reconfigurable layer)."""

    def __init__(self, candidates: Sequence[Sequence[str]], learnt: Sequence[int]):
        super().__init__()
        self.candidates = [tuple(c) for c in candidates]
        self.learnt = tuple(learnt)
        if not self.learnt or any(not 0 <= l < len(self.candidates) for l in self.learnt) \
                or len(set(self.learnt)) != len(self.learnt):
            raise ValueError(f"learnt: expected distinct layer indices in [0, {len(self.candidates)}), "
                             f"got {list(learnt)}")
        self.logits = nn.ParameterList(nn.Parameter(torch.zeros(len(self.candidates[l]))) for l in self.learnt)

    def probs(self) -> List[torch.Tensor]:
        """softmax(α_l) of each learnt layer."""
        return [F.softmax(a, dim=0) for a in self.logits]

    @torch.no_grad()
    def weights(self) -> List[Optional[List[float]]]:
        """One entry per reconfigurable layer, as :meth:`Supernet.sample` takes them: the
        probabilities of a learnt layer, None (uniform) for the others."""
        out: List[Optional[List[float]]] = [None] * len(self.candidates)
        for l, p in zip(self.learnt, self.probs()):
            out[l] = p.tolist()
        return out

    def log_prob(self, spec: Spec) -> torch.Tensor:
        """log p(s) = Σ_l log softmax(α_l)[s_l] over the learnt layers."""
        if len(spec) != len(self.candidates):
            raise ValueError(f"spec: expected {len(self.candidates)} operations, got {len(spec)}")
        terms = []
        for l, a in zip(self.learnt, self.logits):
            if spec[l] not in self.candidates[l]:
                raise ValueError(f"spec: layer {l} has no operation {spec[l]!r}")
            terms.append(F.log_softmax(a, dim=0)[self.candidates[l].index(spec[l])])
        return torch.stack(terms).sum()

    @torch.no_grad()
    def entropies(self) -> List[float]:
        """H(softmax(α_l)) of each learnt layer, in nats."""
        return [float(-(p * p.clamp_min(1e-30).log()).sum()) for p in self.probs()]

    @torch.no_grad()
    def record(self) -> Dict[str, float]:
        """``arch/layer<l>/<op>`` (probabilities) and ``arch/layer<l>/entropy`` per learnt layer
        (layers numbered from 1), and ``arch/entropy``, the path distribution's entropy (the
        layers' sum: they are independent)."""
        record = {}
        entropies = self.entropies()
        for l, p, h in zip(self.learnt, self.probs(), entropies):
            record.update({f"arch/layer{l + 1}/{op}": float(q) for op, q in zip(self.candidates[l], p)})
            record[f"arch/layer{l + 1}/entropy"] = h
        record["arch/entropy"] = sum(entropies)
        return record


class PathLearner:
    """Adam on a :class:`PathDistribution` with the REINFORCE estimate and a moving-average baseline.

    :meth:`tick` counts training steps and says when an update is due (every ``every`` steps);
    :meth:`update` takes one step from a sampled path and its reward. ``state_dict`` /
    ``load_state_dict`` cover α, Adam's state, the baseline and the counters (a checkpoint's
    ``stateful`` entry)."""

    def __init__(self, distribution: PathDistribution, *, lr: float, every: int,
                 baseline_decay: float = BASELINE_DECAY):
        check_arch_settings(lr, every, baseline_decay)
        self.distribution = distribution
        self.optimizer = torch.optim.Adam(distribution.parameters(), lr=lr)
        self.every, self.decay = every, baseline_decay
        self.steps, self.updates = 0, 0
        self.baseline: Optional[float] = None
        self._rewards: List[float] = []  # of the epoch so far, for its record
        self.weights = distribution.weights()

    def tick(self) -> bool:
        """Counts one training step; True when an update of α is due before it."""
        self.steps += 1
        return self.steps % self.every == 0

    def update(self, spec: Spec, reward: float) -> float:
        """One Adam step on α from path ``spec`` and its ``reward``; returns the advantage R − b."""
        if not math.isfinite(reward):
            raise FloatingPointError(f"path distribution: the reward of {spec} is {reward}; "
                                     f"stopping instead of updating α with it")
        advantage = 0.0 if self.baseline is None else reward - self.baseline
        self.optimizer.zero_grad(set_to_none=True)
        (-advantage * self.distribution.log_prob(spec)).backward()
        self.optimizer.step()
        self.baseline = reward if self.baseline is None else self.decay * self.baseline + (1 - self.decay) * reward
        self.updates += 1
        self._rewards.append(reward)
        self.weights = self.distribution.weights()
        return advantage

    def record(self) -> dict:
        """The epoch's record: the distribution (:meth:`PathDistribution.record`), ``arch/reward``
        (the mean reward of this epoch's updates; None without one), ``arch/baseline`` and
        ``arch/updates`` (all so far). Starts the next epoch's reward mean."""
        rewards, self._rewards = self._rewards, []
        return {**self.distribution.record(), "arch/reward": sum(rewards) / len(rewards) if rewards else None,
                "arch/baseline": self.baseline, "arch/updates": self.updates}

    def state_dict(self) -> dict:
        return {"distribution": self.distribution.state_dict(), "optimizer": self.optimizer.state_dict(),
                "steps": self.steps, "updates": self.updates, "baseline": self.baseline,
                "rewards": list(self._rewards)}

    def load_state_dict(self, state: dict) -> None:
        # A checkpoint loaded onto the GPU brings Adam's step counts there too (the optimizer only
        # moves its moments to the parameters' device), while α lives on the CPU.
        state = _on_cpu(state)
        self.distribution.load_state_dict(state["distribution"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps, self.updates, self.baseline = state["steps"], state["updates"], state["baseline"]
        self._rewards = list(state["rewards"])
        self.weights = self.distribution.weights()


def _on_cpu(value):
    """``value`` with every tensor in it (nested dicts, lists, tuples) on the CPU."""
    if torch.is_tensor(value):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


@contextmanager
def kept_batch_norm_statistics(*modules: nn.Module) -> Iterator[None]:
    """Batch norm's running statistics of ``modules`` as they were on entry, restored on exit: a
    forward in train mode on the held-out batch normalises with that batch's statistics, as
    training does, without the held-out data leaking into the running statistics."""
    norms = [m for module in modules for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


@torch.no_grad()
def branch_reward(grafted: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """R = −(1/3) Σ_b CE(z_b, y): minus the branches' mean cross-entropy on the held-out batch, on
    the path the branches follow (the architecture loss of our reading). ``grafted(x)`` returns
    (z_T, [z_b]) (a :class:`~hyperkd.gtn.graft.GraftedTeacher`); its modules run in their current
    modes and their batch-norm running statistics are left as they were."""
    with kept_batch_norm_statistics(grafted):
        _, logits = grafted(x)
        loss = sum(F.cross_entropy(z, y) for z in logits) / len(logits)
    return -float(loss)
