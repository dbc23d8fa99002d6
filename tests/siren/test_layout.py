"""Coordinates, crop/scatter plan, permutations, predictors and CR (paper §2, §3.2; NeRN App.)."""
import pytest
import torch

import hyperkd.models
from hyperkd.reference.siren_decode import activate
from hyperkd.siren import (KernelLayout, Representation, WeightPredictor, compression_ratio,
                           permuted_coords)
from hyperkd.siren.permutation import _greedy_chain_ranks
from tests.siren.nets import TinyNet, lookup_tables


def test_layout_of_tiny_net():
    layout = KernelLayout(TinyNet())
    assert [(s.name, s.out_channels, s.in_channels, s.kernel_size, s.start) for s in layout.slots] == [
        ("conv1", 4, 3, 3, 0), ("conv2", 5, 4, 3, 12), ("shortcut", 5, 4, 1, 32)]
    assert layout.num_kernels == 52 and layout.kernel_size == 3 and layout.grid == (3, 5, 4)
    assert layout.represented_parameters == 4 * 3 * 9 + 5 * 4 * 9 + 5 * 4
    coords = layout.canonical_coords()
    assert coords[12].tolist() == [1, 0, 0] and coords[31].tolist() == [1, 4, 3]
    assert coords[51].tolist() == [2, 4, 3]


def test_layout_of_resnet20_counts_every_conv():
    net = hyperkd.models.create("resnet20", 10)
    layout = KernelLayout(net)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(layout.slots) == len(convs) == 21
    assert layout.represented_parameters == sum(m.weight.numel() for m in convs)
    assert {s.kernel_size for s in layout.slots} == {1, 3}


def test_gather_pads_1x1_into_the_centre():
    net = TinyNet()
    layout = KernelLayout(net)
    kernels = layout.gather_kernels(net).reshape(-1, 3, 3)
    one_by_one = kernels[32:]
    assert torch.equal(one_by_one[:, 1, 1], net.shortcut.weight.reshape(-1))
    one_by_one[:, 1, 1] = 0
    assert not one_by_one.any()


@pytest.mark.parametrize("mode", ["none", "in-filter", "cross-filter"])
def test_lookup_predictor_reproduces_exact_weights_and_function(mode):
    """Decoding known kernels at (permuted) coordinates rebuilds the net bit for bit."""
    original = TinyNet().eval()
    layout = KernelLayout(original)
    coords = permuted_coords(layout, original, mode)
    kernels = layout.gather_kernels(original)
    decoded = torch.ops.hyperkd.siren_decode(coords, *lookup_tables(layout, coords, kernels), 0)[0]
    assert torch.equal(decoded, kernels)
    rebuilt = TinyNet().eval()
    rebuilt.load_state_dict({k: v for k, v in original.state_dict().items() if "conv" not in k
                             and "shortcut" not in k}, strict=False)
    layout.scatter(decoded, rebuilt)
    for name in ("conv1", "conv2", "shortcut"):
        assert torch.equal(getattr(rebuilt, name).weight, getattr(original, name).weight)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(rebuilt(x), original(x))


def test_crop_takes_the_centre_of_a_larger_output():
    layout = KernelLayout(TinyNet())
    decoded = torch.arange(52 * 25, dtype=torch.float32).reshape(52, 25)
    weights = layout.crop(decoded)
    assert weights[0].shape == (4, 3, 3, 3) and weights[2].shape == (5, 4, 1, 1)
    assert weights[0][0, 0].tolist() == [[6, 7, 8], [11, 12, 13], [16, 17, 18]]
    assert weights[2][0, 0, 0, 0] == 32 * 25 + 12


@pytest.mark.parametrize("mode", ["in-filter", "cross-filter"])
def test_permutations_are_permutations_of_each_layer_grid(mode):
    net = TinyNet() if mode == "cross-filter" else hyperkd.models.create("resnet20", 10)
    layout = KernelLayout(net)
    coords = permuted_coords(layout, net, mode)
    canonical = layout.canonical_coords()
    assert not torch.equal(coords, canonical)
    for s in layout.slots:
        block = coords[s.start:s.stop]
        keys = block[:, 1] * s.in_channels + block[:, 2]
        assert torch.equal(keys.sort().values, torch.arange(s.count))
        assert (block[:, 0] == canonical[s.start, 0]).all()
        if mode == "in-filter":
            assert torch.equal(block[:, 1], canonical[s.start:s.stop, 1])


def test_greedy_chain_follows_the_most_similar_kernel():
    # From row 0 the most similar is row 2, then row 3 (closer to row 2 than row 1 is), then row 1.
    vectors = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.2], [1.0, 0.6]]])
    assert _greedy_chain_ranks(vectors).tolist() == [[0, 3, 1, 2]]


def test_unknown_permutation_and_net_are_rejected():
    layout = KernelLayout(TinyNet())
    with pytest.raises(ValueError, match="mode"):
        permuted_coords(layout, TinyNet(), "random")
    with pytest.raises(ValueError, match="unknown model"):
        hyperkd.models.create("resnet21", 10)
    with pytest.raises(ValueError, match="nn.Conv2d"):
        KernelLayout(torch.nn.Linear(3, 3))


def test_output_size_smaller_than_the_largest_kernel_is_rejected():
    with pytest.raises(ValueError, match=r"output_size: expected a square ≥ 9"):
        Representation(TinyNet(), output_size=4, width=8)
    with pytest.raises(ValueError, match="output_size"):
        Representation(TinyNet(), output_size=10, width=8)


def test_compression_ratio_arithmetic():
    rep = Representation(TinyNet(), encoding="siren", width=8, depth=5)
    predictor_params = (3 * 8 + 8) + 3 * (8 * 8 + 8) + (9 * 8 + 9)
    assert sum(p.numel() for p in rep.predictor.parameters()) == predictor_params
    assert rep.compression_ratio() == pytest.approx(predictor_params / (108 + 180 + 20))
    nern = WeightPredictor((3, 5, 4), 9, encoding="nern", width=8, depth=3)
    assert compression_ratio(nern, rep.layout) == pytest.approx((240 * 8 + 8 + 72 + 9 * 8 + 9) / 308)


def test_siren_initialisation_bounds():
    p = WeightPredictor((3, 5, 4), 9, encoding="siren", width=64, depth=4, omega0=30.0)
    assert p.first_weight.abs().max() <= 1 / 3
    bound = (6 / 64) ** 0.5 / 30
    assert p.hidden_weight.abs().max() <= bound and p.hidden_weight.abs().max() > 0.9 * bound
    assert p.hidden_weight.shape == (2, 64, 64)


def test_nern_encoding_matches_its_formula():
    p = WeightPredictor((3, 5, 4), 9, encoding="nern", width=8, levels=40, base=0.76)
    x = 2 * 0.76 ** 5 * torch.pi
    assert p.features_f[2, 5].item() == pytest.approx(torch.sin(torch.tensor(x)).item(), abs=1e-6)
    assert p.features_f[2, 45].item() == pytest.approx(torch.cos(torch.tensor(x)).item(), abs=1e-6)


@pytest.mark.parametrize("encoding", ["siren", "nern"])
def test_first_layer_tables_equal_the_dense_first_layer(encoding):
    p = WeightPredictor((3, 5, 4), 9, encoding=encoding, width=8, depth=2).double()
    coords = KernelLayout(TinyNet()).canonical_coords()
    inputs = torch.cat([p.features_l[coords[:, 0]], p.features_f[coords[:, 1]],
                        p.features_c[coords[:, 2]]], dim=1)
    scale = 30.0 if encoding == "siren" else 1.0
    dense = activate(scale * (inputs @ p.first_weight.T + p.first_bias), 1 if
                                      encoding == "siren" else 0) @ p.out_weight.T + p.out_bias
    torch.testing.assert_close(p(coords, backend="eager"), dense)


@pytest.mark.parametrize("bad", [dict(width=0), dict(depth=1), dict(encoding="fourier")])
def test_bad_predictor_options_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        WeightPredictor((3, 5, 4), 9, **bad)
