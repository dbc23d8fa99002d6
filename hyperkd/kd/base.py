"""The interface every layer-wise KD method implements, so that :func:`layerwise_loss`, the
teacher-side forward hooks and :class:`LayerKD` treat all methods alike."""
import torch

from hyperkd.ops._checks import layer_weights

REDUCTIONS = ("sum", "mean")


def weigh_terms(terms: torch.Tensor, lambdas):
    """(Σ_m λ_m L_m, the detached L_m) for differentiable per-layer terms L_m."""
    lam = layer_weights(lambdas, terms.numel(), terms, terms.dtype)
    return (lam * terms).sum(), terms.detach()


class LayerwiseMethod:
    """A KD method applied at M tapped layers.

    ``summarise(g, layer)`` reduces the teacher feature of tapped layer ``layer`` to the smallest
    statistic the loss needs, and is called inside the teacher's forward hook (without autograd), so
    the raw activation can be freed at once.
    ``layer_losses`` returns the M per-layer terms L_m in the method's ``native_reduction``,
    differentiable w.r.t. the student features; :meth:`weighted` returns them in ``reduction``.
    """

    name = "?"
    #: True for methods whose terms couple adjacent layers (FSP): M layers give M − 1 terms.
    pairs = False
    #: Rank of the tapped outputs: B×C×H×W features (4, checked as such), B×K logits (2), or 0 for
    #: methods that check their inputs themselves (JacobianKD takes either).
    feature_rank = 4
    #: True when ``summarise`` differentiates the teacher output (JacobianKD): it then runs with
    #: autograd on the undetached output.
    summary_needs_graph = False
    #: Where the driver taps this method by default: "conv" (each conv's raw output), "bn" (after
    #: BatchNorm, before the nonlinearity), "penultimate" or "logits".
    default_tap = "conv"
    #: How the op reduces the batch Σ of its equation: "sum" over the samples (as AT's Eq. 7 is
    #: printed) or "mean" over them. Relational methods reduce over pairs or triplets instead.
    native_reduction = "sum"
    #: The reduction :meth:`weighted` returns: "sum", "mean", or None for ``native_reduction``.
    #: Set from a registry string's ``reduction=`` (``"ab:reduction=sum"``).
    reduction = None

    def summarise(self, g: torch.Tensor, layer: int) -> torch.Tensor:
        return g.detach()

    def layer_losses(self, student: list, summaries: list) -> torch.Tensor:
        raise NotImplementedError

    def term_count(self, layers: int) -> int:
        return len(self.term_pairs(layers)) if self.pairs else layers

    def term_pairs(self, layers: int):
        """For methods on layer pairs (FSP): the (m, m') index pairs of the terms; adjacent taps
        in the order given unless :meth:`bind_network` found others."""
        return [(m, m + 1) for m in range(layers - 1)]

    def bind_network(self, model, points, example) -> None:
        """Called once before training with a net, its tap points and an example batch, for
        methods whose terms depend on the net's structure (FSP's data-flow pairs); a no-op here."""

    def batch_terms(self, student: list) -> int:
        """How many terms the batch Σ of the equation runs over: the batch size B."""
        return student[0].shape[0]

    def reduction_scale(self, student: list) -> float:
        """The factor from ``native_reduction`` to ``reduction`` for this batch: 1/B from a sum to a
        mean, B from a mean to a sum (B from :meth:`batch_terms`)."""
        wanted = self.reduction or self.native_reduction
        if wanted == self.native_reduction:
            return 1.0
        count = self.batch_terms(student)
        return 1.0 / count if wanted == "mean" else float(count)

    def weighted(self, student: list, summaries: list, lambdas):
        """(Σ_m λ_m L_m, the detached L_m for logging), both in ``reduction``. The reduction's
        factor is folded into λ_m, so the fused ops compute the final gradients in one pass."""
        scale = self.reduction_scale(student)
        if scale == 1.0:
            return self.native_weighted(student, summaries, lambdas)
        count = self.term_count(len(student))
        lambdas = [scale] * count if lambdas is None else [scale * float(lam) for lam in lambdas]
        total, terms = self.native_weighted(student, summaries, lambdas)
        return total, terms * scale

    def native_weighted(self, student: list, summaries: list, lambdas):
        """(Σ_m λ_m L_m, the detached L_m) in ``native_reduction``; fused ops override this to take
        λ_m into their single launch."""
        return weigh_terms(self.layer_losses(student, summaries), lambdas)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
