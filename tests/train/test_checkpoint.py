"""Atomic checkpoints, RNG round trips and the metrics log."""
import os
import random

import numpy as np
import pytest
import torch

from hyperkd.train import MetricsLog, load_checkpoint, restore_rng_state, rng_state, save_checkpoint


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draws()
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = draws()
    draws()  # move every generator on
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert draws() == expected


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint: no file at"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable hyperkd checkpoint"):
        load_checkpoint(bad)


def test_metrics_log_resume_drops_later_epochs(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for epoch in range(4):
        log.append({"epoch": epoch, "loss": torch.tensor(0.5 * epoch), "acc": np.float32(0.25)})
    log.resume_after(1)
    assert log.records() == [{"epoch": 0, "loss": 0.0, "acc": 0.25}, {"epoch": 1, "loss": 0.5, "acc": 0.25}]
    log.append({"epoch": 2, "loss": 1.0, "acc": 0.25})
    assert [r["epoch"] for r in log.records()] == [0, 1, 2]
