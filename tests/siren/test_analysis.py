"""S_ratio arithmetic and the analysis plots (paper §3.1, App. E–F)."""
import torch
from torch.utils.data import DataLoader, TensorDataset

from hyperkd.siren.analysis import (interpolation_curve, plot_interpolation, plot_s_ratios, s_ratio,
                                    s_ratios)
from tests.siren.nets import TinyNet


def test_s_ratio_of_known_spectra():
    assert s_ratio(torch.eye(4)) == 0.5  # four equal singular values: half the energy
    assert abs(s_ratio(torch.outer(torch.arange(1.0, 5.0), torch.ones(6))) - 1.0) < 1e-12  # rank 1
    # σ = (3, 1) after an orthogonal mix: 9 / (9 + 1).
    q, _ = torch.linalg.qr(torch.randn(2, 2, dtype=torch.float64))
    assert abs(s_ratio(q @ torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))) - 0.9) < 1e-12


def test_s_ratios_cover_the_convs_and_plots_are_written(tmp_path):
    a, b = TinyNet(), TinyNet()
    assert [name for name, _ in s_ratios(a)] == ["conv1", "conv2", "shortcut"]
    loader = DataLoader(TensorDataset(torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))), batch_size=3)
    curve = interpolation_curve(a, b, loader, alphas=(0.0, 0.5, 1.0))
    assert curve[0]["distance"] == 0.0 and curve[2]["distance"] > curve[1]["distance"] > 0
    assert plot_s_ratios(a, b, tmp_path / "s.png").stat().st_size > 0
    assert plot_interpolation(curve, tmp_path / "i.png").stat().st_size > 0
