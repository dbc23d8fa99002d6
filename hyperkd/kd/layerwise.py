"""``layerwise_loss``: Σ_m λ_m L_m for lists of student and teacher features, the functional entry
point for users with their own hooks; :class:`LayerKD` calls the same code."""
import torch

from hyperkd.kd.registry import make_method
from hyperkd.ops._checks import as_layer_list, check_features, check_pairs


def check_finite_terms(terms: torch.Tensor, names) -> None:
    """Raises naming the first layer whose loss term is NaN or infinite (the debug check)."""
    bad = (~torch.isfinite(terms)).nonzero().flatten().tolist()
    if bad:
        m = bad[0]
        raise FloatingPointError(f"KD loss term of layer {names[m]!r} is {terms[m].item()} "
                                 f"({len(bad)} non-finite term(s) in all)")


def layerwise_terms(method, student_feats, teacher, lambdas=None, *, teacher_summarised=False,
                    check_finite=False, names=None):
    """(Σ_m λ_m L_m, the detached per-layer terms L_m). See :func:`layerwise_loss`."""
    method = make_method(method)
    student = as_layer_list(student_feats, "student_feats")
    teacher = as_layer_list(teacher, "teacher_feats")
    if method.feature_rank == 4:
        check_features(student, "student_feats")
    if teacher_summarised:
        if len(teacher) != len(student):
            raise ValueError(f"teacher_feats: expected {len(student)} summaries to match "
                             f"student_feats, got {len(teacher)}")
        summaries = teacher
    else:
        check_pairs(student, teacher)
        with torch.set_grad_enabled(method.summary_needs_graph):
            summaries = [method.summarise(g if method.summary_needs_graph else g.detach(), m)
                         for m, g in enumerate(teacher)]
    if method.pairs and len(student) < 2:
        raise ValueError(f"{method.name}: needs at least 2 tapped layers (it pairs adjacent layers), "
                         f"got {len(student)}")
    total, terms = method.weighted(student, summaries, lambdas)
    if check_finite:
        names = names or [str(m) for m in range(terms.numel())]
        check_finite_terms(terms, names)
    return total, terms


def layerwise_loss(method, student_feats, teacher_feats, lambdas=None, *, teacher_summarised=False,
                   check_finite=False) -> torch.Tensor:
    """Σ_m λ_m L_m(f_m, g_m) over M tapped layers (Algorithm 1 of LayerKD-HN).

    ``method`` is a registry string (see :func:`hyperkd.kd.methods`), e.g. ``"at1:p=2"`` or
    ``"ab:margin=1"``, or a method object. ``student_feats`` and ``teacher_feats`` are lists of
    B×C×H×W features of the same layers (same shapes); ``teacher_summarised=True`` says the teacher
    list already holds the method's summaries (``method.summarise``). ``lambdas`` are the M weights
    (M − 1 for pairwise methods such as FSP), all ones by default. ``check_finite`` raises naming
    the first layer whose term is NaN or infinite.
    """
    return layerwise_terms(method, student_feats, teacher_feats, lambdas,
                           teacher_summarised=teacher_summarised, check_finite=check_finite)[0]


__all__ = ["layerwise_loss", "layerwise_terms", "check_finite_terms"]
