"""Adapters from the registry's method names to the fused ops (and eager modules) that compute
them. Each adapter is a :class:`~hyperkd.kd.base.LayerwiseMethod`."""
import torch

from hyperkd.kd.base import LayerwiseMethod, weigh_terms
from hyperkd.kd.factor_transfer import FactorTransfer
from hyperkd.kd.flow import data_flow_pairs
from hyperkd.kd.jacobian import JacobianMatching
from hyperkd.kd.registry import MethodEntry, register
from hyperkd.ops import activation_boundary as ab_ops
from hyperkd.ops import attention_transfer as at_ops
from hyperkd.ops import channelwise as cw_ops
from hyperkd.ops import relational as rel_ops
from hyperkd.ops._checks import accumulation_dtype
from hyperkd.kd.fsp import fsp_losses
from hyperkd.kd.logit import logit_kd_loss


def _positive(x):
    return x > 0


class AttentionTransfer(LayerwiseMethod):
    """AT, Eq. 4–7: Σ_i ‖q_s,i − q_t,i‖_p of normalised attention maps (a sum over the batch, as
    printed)."""

    def __init__(self, kind: int, p: float):
        self.kind, self.p = kind, p
        self.name = f"at{kind}:p={p:g}"

    def summarise(self, g, layer):
        return at_ops.attention_teacher_summary(g, self.kind, self.p)

    def native_weighted(self, student, summaries, lambdas):
        # The AT op folds λ into its single launch and returns the unweighted L_m for the log.
        return at_ops.weighted_attention_loss(student, summaries, lambdas, self.kind, self.p)


class ActivationBoundary(LayerwiseMethod):
    """AB, Eq. 8 and 10 with Heo et al.'s squared hinge, summed over C·H·W and averaged over the
    batch; the teacher summary is a bit mask. Tapped after BatchNorm by default, where ρ = [g > 0]
    is the neuron's on/off state that Heo et al. transfer."""

    native_reduction = "mean"
    default_tap = "bn"

    def __init__(self, margin: float):
        self.margin = margin
        self.name = f"ab:margin={margin:g}"

    def summarise(self, g, layer):
        return ab_ops.activation_boundary_teacher_summary(g)

    def layer_losses(self, student, summaries):
        return ab_ops.activation_boundary_losses(student, summaries, margin=self.margin)

    def native_weighted(self, student, summaries, lambdas):
        # λ goes into the fused call, whose gradients are then the final ones (no scaling pass).
        terms, losses = ab_ops.activation_boundary_terms(student, summaries, margin=self.margin,
                                                         lambdas=lambdas)
        return terms.sum(), losses


class SimilarityPreserving(LayerwiseMethod):
    """SP, Eq. 14–18; the teacher summary is its row-normalised B×B Gram. ‖G_s − G_t‖²_F / B²
    (Tung & Mori): a mean over the B² pairs, whose sum Eq. 18 prints."""

    name = "sp"
    native_reduction = "mean"

    def batch_terms(self, student):
        return student[0].shape[0] ** 2

    def summarise(self, g, layer):
        return rel_ops.similarity_teacher_summary(g)

    def layer_losses(self, student, summaries):
        return rel_ops.similarity_preserving_losses(student, summaries)


class Relational(LayerwiseMethod):
    """RKD, Eq. 22–27: w_dist·L_D + w_angle·L_A; the teacher summary is its B×B Gram. L_D is a
    mean over the B² pairs and L_A over the B³ triplets (Park et al.); Eq. 25 and 27 print their
    sums, which ``reduction="sum"`` gives (B²·L_D, B³·L_A)."""

    native_reduction = "mean"

    def __init__(self, name: str, w_dist: float, w_angle: float):
        self.name, self.w_dist, self.w_angle = name, w_dist, w_angle

    def summarise(self, g, layer):
        return rel_ops.gram(g)

    def layer_losses(self, student, summaries):
        return rel_ops.rkd_losses(student, summaries, w_dist=self.w_dist, w_angle=self.w_angle)

    def weighted(self, student, summaries, lambdas):
        if (self.reduction or self.native_reduction) == self.native_reduction:
            return self.native_weighted(student, summaries, lambdas)
        # Distances and angles count B² and B³ terms: the sums scale each part by its own count.
        batch = student[0].shape[0]
        return weigh_terms(rel_ops.rkd_losses(student, summaries, w_dist=self.w_dist * batch ** 2,
                                              w_angle=self.w_angle * batch ** 3), lambdas)


class ChannelWiseDistillation(LayerwiseMethod):
    """CwD, Eq. 20–21: per-channel spatial softmax at temperature τ, KL × τ²/C (mean over B)."""

    native_reduction = "mean"

    def __init__(self, tau: float):
        self.tau = tau
        self.name = f"cwd:tau={tau:g}"

    def layer_losses(self, student, summaries):
        return cw_ops.cwd_losses(student, summaries, tau=self.tau)

    def native_weighted(self, student, summaries, lambdas):
        # λ goes into the fused call, whose gradients are then the final ones (no scaling pass).
        terms, losses = cw_ops.cwd_terms(student, summaries, tau=self.tau, lambdas=lambdas)
        return terms.sum(), losses


class FitNets(LayerwiseMethod):
    """FitNets, Eq. 11: Σ_{i,c} ‖f_ic − g_ic‖₂ against the same-architecture teacher."""

    name = "fitnets"

    def layer_losses(self, student, summaries):
        return cw_ops.fitnets_losses(student, summaries)

    def native_weighted(self, student, summaries, lambdas):
        terms, losses = cw_ops.fitnets_terms(student, summaries, lambdas=lambdas)
        return terms.sum(), losses


class FlowOfSolution(LayerwiseMethod):
    """FSP, Eq. 28–29: one term per layer pair. Pairs are adjacent taps in the order given, or,
    after :meth:`bind_network`, consecutive taps along the net's data flow at equal resolution
    (:func:`hyperkd.kd.flow.data_flow_pairs`). Eager: each term is one batched matmul of pooled
    maps, which fusion would not speed up; the teacher keeps its raw features, as each FSP matrix
    needs two of them."""

    name = "fsp"
    pairs = True
    native_reduction = "mean"  # Eq. 29 prints the 1/|X_B|

    def __init__(self):
        self.pair_indices = None

    def bind_network(self, model, points, example):
        self.pair_indices = data_flow_pairs(model, points, example)
        if not self.pair_indices:
            raise ValueError("fsp: no two consecutive tap points on the net's main path share a "
                             "resolution; tap other layers")

    def term_pairs(self, layers):
        return super().term_pairs(layers) if self.pair_indices is None else list(self.pair_indices)

    def layer_losses(self, student, summaries):
        pairs = self.term_pairs(len(student))
        if max(j for _, j in pairs) >= len(student):
            raise ValueError(f"fsp: pairs {pairs} were bound for other tap points than the "
                             f"{len(student)} given")
        return fsp_losses([(student[i], student[j]) for i, j in pairs],
                          [(summaries[i], summaries[j]) for i, j in pairs])


class LogitKD(LayerwiseMethod):
    """Hinton et al.'s logit KD at temperature T on tapped B×K outputs (e.g. the classifier)."""

    feature_rank = 2
    default_tap = "logits"
    native_reduction = "mean"  # batchmean

    def __init__(self, T: float):
        self.T = T
        self.name = f"logit:T={T:g}"

    def layer_losses(self, student, summaries):
        for m, (s, t) in enumerate(zip(student, summaries)):
            if s.dim() != 2 or s.shape != t.shape:
                raise ValueError(f"{self.name}: layer {m} expects B×K logits of equal shapes, got student "
                                 f"{tuple(s.shape)} and teacher {tuple(t.shape)}")
        return torch.stack([logit_kd_loss(s, t, self.T) for s, t in zip(student, summaries)])


class NoKD(LayerwiseMethod):
    """The No-KD baseline: every term is zero and the teacher keeps nothing."""

    name = "none"

    def summarise(self, g, layer):
        return g.new_empty(0)

    def layer_losses(self, student, summaries):
        return student[0].new_zeros(len(student), dtype=accumulation_dtype(student[0].dtype))

    def native_weighted(self, student, summaries, lambdas):
        # Zero, but connected to the student so backward() runs as for any method.
        terms = self.layer_losses(student, summaries)
        return sum(f.sum() * 0 for f in student).to(terms.dtype), terms


_P = {"p": (_positive, "> 0")}
register("at0", MethodEntry(lambda p: AttentionTransfer(0, p), {"p": 1.0}, _P,
                            "AT type 0, S = Σ_c|f_c| (Eq. 4, 7)"))
register("at1", MethodEntry(lambda p: AttentionTransfer(1, p), {"p": 2.0}, _P,
                            "AT type 1, S = Σ_c|f_c|^p (Eq. 5, 7)"))
register("at2", MethodEntry(lambda p: AttentionTransfer(2, p), {"p": 2.0}, _P,
                            "AT type 2, S = max_c|f_c|^p (Eq. 6, 7)"))
register("ab", MethodEntry(ActivationBoundary, {"margin": 1.0},
                           {"margin": (lambda x: x >= 0, ">= 0")},
                           "activation boundary, squared hinge (Eq. 8, 10)"))
register("sp", MethodEntry(SimilarityPreserving, {}, {}, "similarity preservation (Eq. 14-18)"))
register("rkd-d", MethodEntry(lambda: Relational("rkd-d", 1.0, 0.0), {}, {}, "RKD distance (Eq. 22-25)"))
register("rkd-a", MethodEntry(lambda: Relational("rkd-a", 0.0, 1.0), {}, {}, "RKD angle (Eq. 26-27)"))
register("rkd-da", MethodEntry(lambda: Relational("rkd-da", 0.5, 0.5), {}, {}, "0.5 RKD-D + 0.5 RKD-A"))
register("cwd", MethodEntry(ChannelWiseDistillation, {"tau": 4.0}, {"tau": (_positive, "> 0")},
                            "channel-wise distillation (Eq. 20-21)"))
register("fitnets", MethodEntry(FitNets, {}, {}, "FitNets hint loss at every layer (Eq. 11)"))
register("fsp", MethodEntry(FlowOfSolution, {}, {}, "flow of solution procedure, adjacent pairs (Eq. 28-29)"))
register("logit", MethodEntry(LogitKD, {"T": 4.0}, {"T": (_positive, "> 0")},
                              "Hinton logit KD at temperature T"))
register("ft", MethodEntry(FactorTransfer, {"rate": 2.0, "p": 1.0},
                           {"rate": (_positive, "> 0"), "p": (_positive, "> 0")},
                           "factor transfer with pretrained paraphrasers (Eq. 12-13)"))
register("jacobian", MethodEntry(JacobianMatching, {}, {}, "Jacobian matching of input gradients (Eq. 19)"))
register("none", MethodEntry(NoKD, {}, {}, "no KD (baseline)"))
