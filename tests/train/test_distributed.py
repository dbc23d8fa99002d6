"""DDP with the gloo backend on the CPU: two ranks with batch b train exactly like one process with
batch 2b, and only rank 0 writes."""
import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from hyperkd.train import distributed
from hyperkd.train.loop import Trainer
from tests.tolerances import assert_close


def data():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(80, 6, generator=gen)
    y = (x[:, 0] - x[:, 2] > 0).long()
    return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:72], y[64:72]), TensorDataset(x[72:], y[72:])


def run(out_dir, batch_size):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 2))
    train, val, test = (DataLoader(d, batch_size=batch_size, generator=torch.Generator().manual_seed(0))
                        for d in data())
    # Ordered batches: rank r's k-th batch is the r-th interleave of the single process's k-th batch.
    train, val, test = (distributed.shard(train, shuffle=False), distributed.shard(val, shuffle=False),
                        distributed.shard(test, shuffle=False))
    net = DistributedDataParallel(model) if distributed.active() else model
    opt = torch.optim.SGD(net.parameters(), lr=0.3, momentum=0.9)

    def loss_fn(x, y):
        logits = net(x)
        return logits, {"ce": nn.functional.cross_entropy(logits, y)}

    trainer = Trainer(net, opt, loss_fn, train, val, test, out_dir=out_dir, progress=False)
    trainer.fit(3)
    return model


def _rank_main(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = run(out_dir, batch_size=8)
        torch.save(model.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process_with_the_combined_batch(tmp_path):
    single = run(tmp_path / "single", batch_size=16)
    mp.spawn(_rank_main, args=(str(tmp_path / "pg"), str(tmp_path / "ddp")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in range(2)]
    for name, value in single.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # ranks stay in lockstep
        assert_close(ranks[0][name], value, torch.float32, msg=name)
    lines = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(lines(tmp_path / "single"), lines(tmp_path / "ddp")):
        assert a["val_acc"] == b["val_acc"] and a["test_acc"] == b["test_acc"]
        assert_close(torch.tensor(b["loss"]), torch.tensor(a["loss"]), torch.float32)
    # rank 0 alone wrote: one metrics file, one last.pt, and the stripped (module-free) keys
    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.pt")) == ["best.pt", "last.pt", "rank0.pt", "rank1.pt"]
    assert "0.weight" in torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["model"]
