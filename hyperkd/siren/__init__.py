"""Neural representations of CNN weights (NeRN and the decoupled-KD paper): coordinates and layout,
permutations, predictors, the decoded network and its training phases."""
from hyperkd.siren.layout import ConvSlot, KernelLayout
from hyperkd.siren.permutation import MODES as PERMUTATIONS, permuted_coords
from hyperkd.siren.predictor import ENCODINGS, WeightPredictor, parameter_count
from hyperkd.siren.representation import Representation, check_output_size, compression_ratio

__all__ = ["ConvSlot", "ENCODINGS", "KernelLayout", "PERMUTATIONS", "Representation",
           "WeightPredictor", "check_output_size", "compression_ratio", "parameter_count",
           "permuted_coords"]
