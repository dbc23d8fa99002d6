"""MIP (HyperLight) weight generation, LayerKD-HN §3.2, written as the paper's equations.

  z_0 = [sin(πγ/2), cos(πγ/2)]                          (input encoding, γ ∈ [0, 1]^k)
  z_k = φ(W^(k) z_{k−1} + b^(k)),  k = 1 … H−1           (Eq. 1, φ = LeakyReLU)
  Δθ  = W^(H) z_{H−1}                                    (Eq. 2)
  θ_m = reshape(Δθ[p:q] + θ0[p:q])                       (Eq. 3)

θ0, the base weights, is the output layer's bias b^(H), as in HyperLight: one P-vector, not a bias
and a base vector beside it. Batched: z is B_γ×d, so the output layer is one GEMM,
θ = z·Wᵀ + θ0 (B_γ×P).
"""
import math

import torch
import torch.nn.functional as F

# The input encoding and the algorithm codes are production's (tests check the encoding by value).
from hyperkd.hyper.gamma import encode_gamma  # noqa: F401
from hyperkd.ops.hyper_generate import ADAM, ADAMW, SGD


def hidden_code(z0: torch.Tensor, weights, biases, negative_slope: float = 0.01) -> torch.Tensor:
    """z_{H−1} of Eq. 1."""
    z = z0
    for w, b in zip(weights, biases):
        z = F.leaky_relu(F.linear(z, w, b), negative_slope)
    return z


def hyper_generate(W, z, theta0, shapes, channels_last=None):
    """Eq. 2–3: one B_γ×(*shape) tensor per generated layer, in its final memory format."""
    theta = z @ W.to(z.dtype).t() + theta0
    channels_last = channels_last or [False] * len(shapes)
    out = []
    for flat, shape, cl in zip(theta.split([math.prod(s) for s in shapes], dim=1), shapes, channels_last):
        t = flat.reshape(z.shape[0], *shape)
        if cl:
            # Per-sample OIHW in channels_last: fold the γ batch into O, which stays outermost.
            t = t.reshape(-1, *shape[1:]).contiguous(memory_format=torch.channels_last).view(t.shape)
        out.append(t)
    return out


def hyper_generate_backward(grads, W, z):
    """Backward of Eq. 2–3 from the upstream gradients of the generated tensors (any layout).

    dθ = the gradients flattened in logical order and packed per γ (B_γ×P), dz = dθ·W (B_γ×d).
    W's gradient is dθᵀ·z, θ0's Σ_γ dθ. Returns (dz, dθ).
    """
    dtheta = torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)
    return dtheta @ W.to(dtheta.dtype), dtheta


def output_layer_step(W, state1, state2, dtheta, z, algorithm, lr, beta1, beta2, eps, weight_decay, step):
    """One optimizer step of W from its gradient dW = dθᵀ·z (Eq. 2), as torch.optim writes it.

    SGD: g += wd·W; buf = β1·buf + g (β1 is the momentum); W −= lr·buf.
    Adam: g += wd·W; AdamW: W ·= 1 − lr·wd. Then m += (1−β1)(g − m), v = β2·v + (1−β2)·g²,
    W −= lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + eps). Updates W and the state in place.
    """
    g = dtheta.t() @ z
    if algorithm == SGD:
        g = g + weight_decay * W
        if beta1 != 0.0:
            state1.mul_(beta1).add_(g)
            g = state1
        W.sub_(lr * g)
        return
    if algorithm == ADAM:
        g = g + weight_decay * W
    else:
        W.mul_(1 - lr * weight_decay)
    state1.lerp_(g, 1 - beta1)
    state2.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = state2.sqrt() / math.sqrt(1 - beta2 ** step) + eps
    W.addcdiv_(state1, denom, value=-lr / (1 - beta1 ** step))
