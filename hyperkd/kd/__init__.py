"""Layer-wise knowledge distillation: the method registry, ``layerwise_loss``, λ_m schedules,
feature taps and :class:`LayerKD` (LayerKD-HN §3.3–3.4, A.3–A.4)."""
from hyperkd.kd import adapters as _adapters  # noqa: F401  (fills the registry)
from hyperkd.kd import dkd as _dkd  # noqa: F401  (registers dkd)
from hyperkd.kd import jsd as _jsd  # noqa: F401  (registers jsd:map=...)
from hyperkd.kd.base import LayerwiseMethod
from hyperkd.kd.factor_transfer import FactorTransfer, Paraphraser, Translator, pretrain_paraphrasers
from hyperkd.kd.gnorp import GNoRP, parse_weight
from hyperkd.kd.jacobian import JacobianMatching
from hyperkd.kd.layerkd import LayerKD
from hyperkd.kd.layerwise import layerwise_loss, layerwise_terms
from hyperkd.kd.makd import ModularAffinityKD  # also fills the registry's "makd"
from hyperkd.kd.registry import describe, make_method, methods, parse_method
from hyperkd.kd.schedules import GaussianSpike, Schedule, Uniform
from hyperkd.kd.taps import FeatureTaps, modules_of_type

__all__ = ["FactorTransfer", "FeatureTaps", "GNoRP", "GaussianSpike", "JacobianMatching", "ModularAffinityKD",
           "Paraphraser",
           "Translator", "describe", "pretrain_paraphrasers", "LayerKD", "LayerwiseMethod", "Schedule", "Uniform",
           "layerwise_loss", "layerwise_terms", "make_method", "methods", "modules_of_type",
           "parse_method", "parse_weight"]
