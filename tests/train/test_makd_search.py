"""The mAKD combinatorial search: variant names, resumable results, the two figures."""
import csv

import pytest
import torch

from hyperkd import models
from hyperkd.train import makd_search as search


def test_the_80_variants_and_bad_names():
    assert len(search.VARIANTS) == 80 and len(set(search.VARIANTS)) == 80
    assert search.selected_variants(["cs-l2-sl1", "l1-max-kl"]) == [("cs", "l2", "sl1"), ("l1", "max", "kl")]
    with pytest.raises(ValueError, match="variants: unknown 'cos-l2-sl1'"):
        search.selected_variants(["cos-l2-sl1"])


def test_finished_variants_are_skipped_and_figures_written(tmp_path, monkeypatch):
    """A rerun trains only the variants missing from results.csv. (Training itself is replaced by
    a stub: a variant's real run takes minutes.)"""
    teacher = tmp_path / "teacher.pt"
    torch.save(models.create("resnet10_x0_25", num_classes=10).state_dict(), teacher)
    trained = []

    def fake_train(cfg, variant, *args):
        trained.append(variant)
        return {"lambda": 1.0, "final_kd_loss": 0.5, "val_accuracy": 0.5 + 0.1 * len(trained)}

    monkeypatch.setattr(search, "train_variant", fake_train)
    cfg = search.SearchConfig(model="resnet10_x0_25", teacher_model="resnet10_x0_25", teacher=teacher,
                              variants=["cs-l2-sl1", "ip-max-kl"], calibration_models=1, device="cpu")
    search.run_search(cfg, tmp_path / "out", progress=False)
    cfg.variants = ["cs-l2-sl1", "ip-max-kl", "l1-avg-l1"]
    rows = search.run_search(cfg, tmp_path / "out", progress=False)
    assert trained == [("cs", "l2", "sl1"), ("ip", "max", "kl"), ("l1", "avg", "l1")]
    assert [(r["aff"], r["norm"], r["loss"]) for r in rows] == trained
    with (tmp_path / "out" / "results.csv").open() as f:
        assert float(next(csv.DictReader(f))["ce_grad_norm"]) > 0  # measured, not the paper's 0.07
    for name in ("figure2_sorted.png", "figure3_heatmap.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
