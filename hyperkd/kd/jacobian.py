"""JacobianKD (Srinivas & Fleuret 2018), LayerKD-HN Eq. 19: match the input gradients of the
target-class response of each tapped layer.

Response of sample i at layer m: Σ_{h,w} f_m[i, y_i mod C_m] for a feature map (the channel the
label selects), or z[i, y_i] for B×K logits. With J_i = ∇_x r_i flattened and L2-normalised per
sample, L_m = Σ_i ‖Ĵ_s,i − Ĵ_t,i‖²₂ (Eq. 19).

Cost: each tapped layer needs its own input gradient, i.e. one extra backward pass per layer for
the teacher and one with ``create_graph=True`` for the student, whose loss then backpropagates
through those gradients (double backward). A step costs roughly M + 1 times a plain step.
"""
import torch
import torch.nn.functional as F

from hyperkd.kd.base import LayerwiseMethod


def target_response(feature: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """r_i: the label's channel summed over positions (B×C×H×W), or the label's logit (B×K)."""
    index = (labels % feature.shape[1]).view(-1, *([1] * (feature.dim() - 1)))
    picked = feature.gather(1, index.expand(-1, 1, *feature.shape[2:]))
    return picked.flatten(1).sum(dim=1)


def normalised_input_gradient(feature, inputs, labels, create_graph: bool) -> torch.Tensor:
    """Ĵ = ∇_x r / ‖∇_x r‖₂ per sample, B × (input size)."""
    (grad,) = torch.autograd.grad(target_response(feature, labels).sum(), inputs,
                                  create_graph=create_graph, retain_graph=True)
    return F.normalize(grad.flatten(1), dim=1)


class JacobianMatching(LayerwiseMethod):
    """Eq. 19 at every tapped layer. Call :meth:`bind` with the batch before the forward passes;
    both inputs must require grad and the teacher must run with autograd enabled (its summary,
    Ĵ_t, is computed in the forward hook, after which its graph is freed)."""

    name = "jacobian"
    feature_rank = 0  # features or logits: checked here, not as 4-D maps
    summary_needs_graph = True

    def __init__(self):
        self._batch = None

    def bind(self, student_inputs: torch.Tensor, teacher_inputs: torch.Tensor, labels: torch.Tensor):
        for name, x in (("student_inputs", student_inputs), ("teacher_inputs", teacher_inputs)):
            if not x.requires_grad:
                raise ValueError(f"{name}: JacobianKD differentiates w.r.t. the input; call "
                                 f"x.requires_grad_() before the forward pass")
        self._batch = (student_inputs, teacher_inputs, labels)
        return self

    def _bound(self):
        if self._batch is None:
            raise RuntimeError("jacobian: call bind(student_inputs, teacher_inputs, labels) first")
        return self._batch

    def summarise(self, g, layer):
        _, teacher_inputs, labels = self._bound()
        return normalised_input_gradient(g, teacher_inputs, labels, create_graph=False).detach()

    def layer_losses(self, student, summaries):
        student_inputs, _, labels = self._bound()
        return torch.stack([
            (normalised_input_gradient(f, student_inputs, labels, create_graph=True) - j_t).pow(2).sum()
            for f, j_t in zip(student, summaries)
        ])
