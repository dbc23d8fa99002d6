"""The interface every layer-wise KD method implements, so that :func:`layerwise_loss`, the
teacher-side forward hooks and :class:`LayerKD` treat all methods alike."""
import torch

from hyperkd.ops._checks import layer_weights


class LayerwiseMethod:
    """A KD method applied at M tapped layers.

    ``summarise(g, layer)`` reduces the teacher feature of tapped layer ``layer`` to the smallest
    statistic the loss needs, and is called inside the teacher's forward hook (without autograd), so
    the raw activation can be freed at once.
    ``layer_losses`` returns the M per-layer terms L_m, differentiable w.r.t. the student features.
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

    def summarise(self, g: torch.Tensor, layer: int) -> torch.Tensor:
        return g.detach()

    def layer_losses(self, student: list, summaries: list) -> torch.Tensor:
        raise NotImplementedError

    def term_count(self, layers: int) -> int:
        return layers - 1 if self.pairs else layers

    def weighted(self, student: list, summaries: list, lambdas):
        """(Σ_m λ_m L_m, the detached L_m for logging)."""
        terms = self.layer_losses(student, summaries)
        lam = layer_weights(lambdas, terms.numel(), terms, terms.dtype)
        return (lam * terms).sum(), terms.detach()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
