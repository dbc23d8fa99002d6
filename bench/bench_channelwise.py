"""Forward+backward of the fused channel-wise losses, CwD (Shu et al., "Channel-wise Knowledge
Distillation for Dense Prediction", arXiv:2011.13256; τ = 4) and the FitNets hint (Romero et al.,
arXiv:1412.6550), through the registry against their eager references
(``hyperkd/reference/channelwise.py``) and torch.compile of them, on the conv outputs of CIFAR
ResNet-20 and VGG-19-bn. Run through ``hyperkd bench --suite channelwise`` (``--full``: both
networks, B = 16/64/128).
"""
from bench.workloads import bench_layerwise_loss, parametrize_layerwise
from hyperkd import reference as R

REFERENCES = {
    "cwd": lambda s, t: R.cwd_losses(s, t, 4.0).sum(),
    "fitnets": lambda s, t: R.fitnets_losses(s, t).sum(),
}


def pytest_generate_tests(metafunc):
    parametrize_layerwise(metafunc, REFERENCES)


def test_channelwise(benchmark, device, case):
    bench_layerwise_loss(benchmark, device, case, REFERENCES)
