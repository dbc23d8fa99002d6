"""Forward+backward of the fused activation-boundary loss (AB: Heo et al., "Knowledge Transfer via
Distillation of Activation Boundaries Formed by Hidden Neurons", arXiv:1811.03233) through the
registry against its eager reference (``hyperkd/reference/activation_boundary.py``) and
torch.compile of it, on the conv outputs of CIFAR ResNet-20 and VGG-19-bn. Run through
``hyperkd bench --suite activation_boundary`` (``--full``: both networks, B = 16/64/128).
"""
from bench.workloads import bench_layerwise_loss, parametrize_layerwise
from hyperkd import reference as R

REFERENCES = {"ab": lambda s, t: R.activation_boundary_loss(s, t, margin=1.0)}


def pytest_generate_tests(metafunc):
    parametrize_layerwise(metafunc, REFERENCES)


def test_activation_boundary(benchmark, device, case):
    bench_layerwise_loss(benchmark, device, case, REFERENCES)
