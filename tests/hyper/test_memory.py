"""hyperkd.hyper.memory_estimate: exact sizes of W, its gradient and state; activations on meta."""
import pytest
import torch

from hyperkd.hyper import hypernetize, memory_estimate
from tests.hyper.nets import NETS


def generated_count(net):
    return hypernetize(net).plan.total


def test_output_layer_gradient_and_state_sizes():
    net = NETS["resnet"]()
    P = generated_count(net)
    eager = memory_estimate(net, hidden=(16, 64, 128), optimizer="adam", fused=False)
    assert eager["W"] == P * 128 * 4
    assert eager["W_grad"] == P * 128 * 4
    assert eager["optimizer_state"] == 2 * P * 128 * 4
    fused = memory_estimate(net, hidden=(16, 16, 16), optimizer="sgd_momentum", dtype=torch.bfloat16,
                            state_dtype=torch.bfloat16, fused=True, gammas=2)
    assert fused["W"] == P * 16 * 2
    assert fused["W_grad"] == 2 * P * 4  # only the factor dθ
    assert fused["optimizer_state"] == P * 16 * 2
    assert fused["total"] == sum(v for k, v in fused.items() if k != "total")


def test_activations_count_every_leaf_output_and_scale_with_batch():
    net = NETS["vgg"]()
    # conv 6×8×8, bn, relu, pool 6×4×4, conv 10×4×4, relu, avgpool 10, flatten 10, linear 5.
    per_sample = 3 * 6 * 64 + 6 * 16 + 2 * 10 * 16 + 10 + 10 + 5
    assert memory_estimate(net, batch_size=1, input_shape=(3, 8, 8))["activations"] == 4 * per_sample
    assert memory_estimate(net, batch_size=16, input_shape=(3, 8, 8))["activations"] == 64 * per_sample


def test_hypernetized_model_uses_its_own_plan_and_width():
    model = hypernetize(NETS["vgg"](), hidden=(8, 12))
    est = memory_estimate(model, optimizer="sgd")
    assert est["W"] == model.hypernet.W.numel() * 4
    assert est["optimizer_state"] == 0


def test_bad_arguments_name_the_argument():
    net = NETS["vgg"]()
    with pytest.raises(ValueError, match="optimizer: expected one of"):
        memory_estimate(net, optimizer="rmsprop")
    with pytest.raises(ValueError, match="dtype: a bf16 W needs fused=True"):
        memory_estimate(net, dtype=torch.bfloat16, fused=False)
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        memory_estimate(net, batch_size=0)
