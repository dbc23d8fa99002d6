"""Grafted teacher training under DDP (gloo, two CPU ranks): teacher, branches and the learnt path
distribution stay in lockstep, the ranks draw the same paths, and only rank 0 writes."""
import json
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Subset

import hyperkd.data
from hyperkd import models
from hyperkd.gtn.train import GraftConfig, GraftTrainer, train_grafted_teacher


def _small_digits(full):
    """Digits cut to 64 train, 16 validation and 16 test images."""
    def cut(name, root=None, augment=True, seed=0):
        train, val, test = full(name, root=root, augment=augment, seed=seed)
        return Subset(train, range(64)), Subset(val, range(16)), Subset(test, range(16))
    return cut


def _rank_main(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        hyperkd.data.splits = _small_digits(hyperkd.data.splits)  # this process's own module
        fit, trained = GraftTrainer.fit, {}

        def keeping_the_trainer(self, epochs, resume=False):
            trained["trainer"] = self
            return fit(self, epochs, resume)

        GraftTrainer.fit = keeping_the_trainer
        cfg = GraftConfig(method="gtn", path_distribution="learnt", arch_lr=0.05, arch_every=1,
                          arch_holdout_fraction=0.25, freeze_teacher_epochs=1)
        # 48 train images left, 24 per rank: two steps of 16 and 8 an epoch, each after an update
        # of α; the teacher frozen in the first epoch (no gradient: DDP must find it unused).
        train_grafted_teacher("resnet20", "digits", out_dir, cfg, epochs=2, batch_size=16, progress=False)
        trainer = trained["trainer"]  # what this rank trained (last.pt is rank 0's alone)
        # Parameters only: DDP hands rank 0's batch-norm statistics to every rank at the start of a
        # forward, so after the last one each rank's buffers hold its own batch.
        params = lambda net: {name: p.detach() for name, p in net.named_parameters()}
        torch.save({"python_random": random.getstate(), "teacher": params(trainer.model),
                    "branches": params(trainer.grafted.branches), "learner": trainer.learner.state_dict()},
                   f"{out_dir}/rank{rank}.state")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_train_the_grafted_teacher_in_lockstep(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path / "pg"), str(tmp_path / "ddp")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.state", weights_only=False) for r in range(2)]
    assert ranks[0]["python_random"] == ranks[1]["python_random"]  # the same paths, drawn in lockstep
    records = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["arch/updates"] for r in records] == [2, 4]  # one writer, a line an epoch
    assert [r["teacher_frozen"] for r in records] == [True, False]
    assert 0 <= records[-1]["branch1/val_acc"] <= 1
    last = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    torch.manual_seed(0)  # the run's seed: its initial teacher
    initial = dict(models.create("resnet20", num_classes=10).named_parameters())
    assert any(not torch.equal(v, initial[k]) for k, v in ranks[0]["teacher"].items())  # it trained
    for name, value in ranks[0]["teacher"].items():
        assert torch.equal(value, ranks[1]["teacher"][name]), name  # gradients averaged over the ranks
        assert torch.equal(value, last["model"][name]), name
    for name, value in ranks[0]["branches"].items():
        assert torch.equal(value, ranks[1]["branches"][name]), name
    alpha = ranks[0]["learner"]["distribution"]
    for name, value in alpha.items():
        assert torch.equal(value, ranks[1]["learner"]["distribution"][name]), name
        assert not torch.equal(value, torch.zeros_like(value)), name
    assert ranks[0]["learner"]["baseline"] == ranks[1]["learner"]["baseline"]
