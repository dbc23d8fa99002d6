"""Modular affinity-based KD (mAKD, Li & Maki §3.1) as a layer-wise method of the registry:
``"makd:aff=<l1|l2|ip|cs>,norm=<l1|l2|avg|max|none>,loss=<l1|l2|sl1|kl>"``, 4 × 5 × 4 = 80 variants.

L_mAKD(z_S, z_T) = L(f(g(z_S)), f(g(z_T))) (Eq. 3) on the batch of flattened features z (B×D) of
each tapped layer: the paper's setting is the penultimate features (``default_tap``), and any tap
or every tapped layer works alike, since student and teacher are compared through B×B matrices
(their widths may differ). The teacher's normalised matrix f(g(z_T)) is its summary, kept by the
teacher's forward hook. Known methods are variants: SP (Tung & Mori) is (IP, L2, L2) times 1/B²,
RKD-D (Park et al.) is close to (L2, avg, SL1), bilinear-pooling CC (Peng et al.) is (IP, none, L2).
"""
from hyperkd.kd.base import LayerwiseMethod, weigh_terms
from hyperkd.kd.registry import MethodEntry, register
from hyperkd.ops import affinity as aff_ops


class ModularAffinityKD(LayerwiseMethod):
    """One mAKD variant (Eq. 3–14). The native reduction is the paper's: the regression losses sum
    over the B² entries (Eq. 10), KL averages over the B rows (Eq. 14)."""

    feature_rank = 2  # B×D features; B×C×H×W ones are flattened
    default_tap = "penultimate"
    #: Student and teacher features meet only as B×B matrices, so their shapes may differ.
    any_feature_shapes = True

    def __init__(self, aff: str = "cs", norm: str = "l2", loss: str = "sl1"):
        aff_ops.check_variant(aff, norm, loss)
        self.aff, self.norm, self.loss = aff, norm, loss
        self.name = f"makd:aff={aff},norm={norm},loss={loss}"
        self.native_reduction = "mean" if loss == "kl" else "sum"

    def summarise(self, g, layer):
        return aff_ops.affinity_teacher_summary(g, self.aff, self.norm)

    def layer_losses(self, student, summaries):
        return aff_ops.affinity_losses(student, summaries, self.aff, self.norm, self.loss)

    def native_weighted(self, student, summaries, lambdas):
        """Without λ the terms are summed as they are (no ones vector and product per step: at
        pooled widths the op's own work is a few hundred µs, and each extra op counts)."""
        terms = self.layer_losses(student, summaries)
        return (terms.sum(), terms.detach()) if lambdas is None else weigh_terms(terms, lambdas)

    def batch_terms(self, student: list) -> int:
        """KL's mean runs over the B rows, the regression losses' sums over the B² entries."""
        B = student[0].shape[0]
        return B if self.loss == "kl" else B * B


register("makd", MethodEntry(ModularAffinityKD, {"aff": "cs", "norm": "l2", "loss": "sl1"}, {},
                             "modular affinity KD: affinity, normalisation, loss (mAKD Eq. 3-14)",
                             choices={"aff": aff_ops.AFFINITIES, "norm": aff_ops.NORMALISATIONS,
                                      "loss": aff_ops.LOSSES}))
