"""GNoRP (Li & Maki Eq. 15): λ = exp(ℓ) keeps ‖∂(λ L_KD)/∂z‖ / ‖∂L_main/∂z‖ at r."""
import io

import pytest
import torch
from torch import nn

import hyperkd.kd as kd
from hyperkd.kd.gnorp import GNoRP, parse_weight


@pytest.fixture(autouse=True)
def one_thread():
    """The toy's ops are tiny: two threads' parallel-region barriers made its steps 10-70x slower
    on a loaded 2-core machine, for nothing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_run(gnorp, steps, lr=0.005, seed=0, model_state=None):
    """Full-batch gradient descent of a small MLP on CE + λ·mAKD(CS, L2, SL1) against a fixed
    random teacher, z its penultimate feature, in the calling convention of the training step:
    ``update`` first, then the student's update with the λ it leaves. Returns the per-step
    (λ, ratio) and the model's state."""
    torch.manual_seed(seed)
    trunk, head = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 8)), nn.Linear(8, 3)
    model = nn.ModuleDict({"trunk": trunk, "head": head})
    if model_state is not None:
        model.load_state_dict(model_state)
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    teacher = nn.Linear(10, 12)(x).detach()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    method = kd.make_method("makd:aff=cs,norm=l2,loss=sl1")
    history = []
    for _ in range(steps):
        z = trunk(x)
        main = nn.functional.cross_entropy(head(z), y)
        kd_loss = kd.layerwise_loss(method, z, teacher)
        out = gnorp.update(main, kd_loss, z)
        opt.zero_grad()
        (main + gnorp.weight * kd_loss).backward()
        opt.step()
        history.append((out["lambda"], out["ratio"]))
    return history, model.state_dict()


def ratios(history, r):
    return torch.stack([ratio for _, ratio in history]) / r


def test_ratio_is_held_within_five_percent_after_warm_up():
    history, _ = toy_run(GNoRP(3.5), steps=200, lr=5e-4)
    relative = ratios(history, 3.5)
    assert abs(relative[0] - 1) < 1e-5  # λ fitted on the first batch
    assert ((relative[20:] - 1).abs() < 0.05).all(), relative[20:]
    # It is held while the norms move: λ had to change.
    lambdas = torch.stack([lam for lam, _ in history])
    assert lambdas.max() / lambdas.min() > 1.01


def test_faster_drift_needs_a_faster_adam():
    """Adam moves ℓ by about its lr per step, so PyTorch's default (1e-3) follows a ratio that
    drifts up to ~0.1 % per step; this toy at a 10x larger student learning rate drifts faster."""
    default, _ = toy_run(GNoRP(3.5), steps=150, lr=5e-3)
    assert ((ratios(default, 3.5)[50:] - 1).abs() > 0.05).any()
    faster, _ = toy_run(GNoRP(3.5, lr=0.01), steps=150, lr=5e-3)
    assert ((ratios(faster, 3.5)[50:] - 1).abs() < 0.05).all()


def test_a_given_initial_lambda_is_where_adam_starts():
    history, _ = toy_run(GNoRP(2.0, init=4.0), steps=2)
    assert abs(float(history[0][0]) / 4.0 - 1) <= 1.01e-3  # one Adam step of at most lr in ℓ


def test_update_returns_tensors_and_weight_is_detached():
    gnorp = GNoRP(1.0)
    z = torch.randn(4, 5, requires_grad=True)
    out = gnorp.update(z.pow(2).sum(), z.sum(), z)
    assert isinstance(out["lambda"], torch.Tensor) and isinstance(out["ratio"], torch.Tensor)
    assert out["lambda"].dim() == 0 and not gnorp.weight.requires_grad
    # Main gradient 2z, KD gradient ones: λ fitted to r·‖2z‖/‖1‖.
    assert torch.isclose(out["lambda"], 2 * z.detach().norm() / 20 ** 0.5)


def test_gradient_norms_over_a_list_of_tapped_features():
    gnorp = GNoRP(1.0)
    a, b = torch.randn(3, 2, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    out = gnorp.update(a.sum() + b.sum(), 3 * a.sum(), [a, b])
    assert torch.isclose(out["lambda"], torch.tensor(18 ** 0.5 / (3 * 6 ** 0.5)))


def test_state_dict_resumes_exactly():
    first = GNoRP(3.5)
    _, model = toy_run(first, steps=10)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    continued, _ = toy_run(first, steps=5, seed=1, model_state=model)
    resumed = GNoRP(3.5)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    again, _ = toy_run(resumed, steps=5, seed=1, model_state=model)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(continued, again))


def test_resuming_with_another_ratio_is_an_error():
    state = GNoRP(3.5).state_dict()
    with pytest.raises(ValueError, match="saved with r=3.5"):
        GNoRP(1.0).load_state_dict(state)


@pytest.mark.parametrize("r", [0, -1.0, float("inf")])
def test_non_positive_ratio_is_an_error(r):
    with pytest.raises(ValueError, match="r: expected a gradient-norm ratio r > 0"):
        GNoRP(r)


def test_parse_weight():
    assert parse_weight(0.5) == 0.5 and parse_weight("2") == 2.0
    rule = parse_weight("gnorp:r=3.5")
    assert isinstance(rule, GNoRP) and rule.r == 3.5 and rule.lr == 1e-3
    assert parse_weight("GNoRP:r=2,lr=0.01,init=4").init == 4.0
    for text, message in [("gnorp", "needs the gradient-norm ratio"), ("gnorp:r=0", "r > 0"),
                          ("gnorp:r=2,beta=1", "unknown option 'beta'"), ("gnorp:r=x", "r expects a number"),
                          ("fixed", "expected a number or 'gnorp:r=<ratio>'")]:
        with pytest.raises(ValueError, match=message):
            parse_weight(text)
