"""hyperkd.hyper.memory_estimate: exact sizes of W, its gradient and state; activations and the
teacher on meta; sizes parsed and printed."""
import pytest
import torch
from torch import nn

from hyperkd.hyper import hypernetize, memory_estimate
from hyperkd.hyper.memory import format_size, parse_size
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
    assert fused["W_grad"] == 2 * 2 * P * 4  # only the factor dθ and the fused step's copy of it
    assert fused["optimizer_state"] == P * 16 * 2
    assert fused["total"] == sum(v for k, v in fused.items() if k != "total")


@pytest.mark.parametrize("gammas, fewer_gradients", [(1, 1), (2, 0)])
def test_fused_theta0_gradient_shares_dtheta_for_one_gamma(gammas, fewer_gradients):
    # Fused, for one γ θ0's gradient is dθ itself (a view, counted in W_grad).
    net = NETS["vgg"]()
    P = generated_count(net)
    for optimizer in ("sgd", "adam"):
        fused = memory_estimate(net, optimizer=optimizer, fused=True, gammas=gammas)
        eager = memory_estimate(net, optimizer=optimizer, fused=False, gammas=gammas)
        assert eager["other"] - fused["other"] == fewer_gradients * P * 4
        assert fused["W_grad"] == 2 * gammas * P * 4


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


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_teacher_is_its_parameters_plus_the_conv_outputs_it_taps(name):
    net = NETS[name]()
    params = sum(p.numel() for p in net.parameters())
    conv_outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: conv_outputs.append(out.numel()))
             for m in net.modules() if isinstance(m, nn.Conv2d)]
    net.eval()(torch.zeros(3, 3, 8, 8))
    for hook in hooks:
        hook.remove()
    est = memory_estimate(net, batch_size=3, input_shape=(3, 8, 8), teacher=True)
    assert est["teacher"] == 4 * (params + sum(conv_outputs))
    assert est["total"] == sum(v for k, v in est.items() if k != "total")
    assert memory_estimate(net, batch_size=3, input_shape=(3, 8, 8))["teacher"] == 0


@pytest.mark.parametrize("text,size", [("15GiB", 15 * 2 ** 30), ("512 MiB", 512 * 2 ** 20), ("16GB", 16 * 10 ** 9),
                                       ("1.5gib", 3 * 2 ** 29), ("100B", 100)])
def test_sizes_in_binary_and_decimal_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["15", "15XB", "GiB", "1.2.3GiB", "0GiB", ""])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError, match="expected a"):
        parse_size(text)


def test_sizes_print_in_the_largest_binary_unit():
    assert format_size(1023) == "1023 B"
    assert format_size(2 ** 20) == "1.00 MiB"
    assert format_size(int(9.55 * 2 ** 30)) == "9.55 GiB"


def test_bad_arguments_name_the_argument():
    net = NETS["vgg"]()
    with pytest.raises(ValueError, match="optimizer: expected one of"):
        memory_estimate(net, optimizer="rmsprop")
    with pytest.raises(ValueError, match="dtype: a bf16 W needs fused=True"):
        memory_estimate(net, dtype=torch.bfloat16, fused=False)
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        memory_estimate(net, batch_size=0)
