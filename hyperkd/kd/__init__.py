"""Layer-wise knowledge distillation: the method registry, ``layerwise_loss``, λ_m schedules,
feature taps and :class:`LayerKD` (LayerKD-HN §3.3–3.4, A.3–A.4)."""
from hyperkd.kd import methods as _methods  # noqa: F401  (fills the registry)
from hyperkd.kd.base import LayerwiseMethod
from hyperkd.kd.layerwise import layerwise_loss, layerwise_terms
from hyperkd.kd.registry import make_method, methods, parse_method

__all__ = ["LayerwiseMethod", "layerwise_loss", "layerwise_terms", "make_method", "methods",
           "parse_method"]
