"""DDP with the gloo backend on the CPU: two ranks with batch b train exactly like one process with
batch 2b, and only rank 0 writes; the fused hypernetwork step applies the rank-mean of W's update."""
import gc
import json
from unittest import mock

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from hyperkd.hyper import HyperOptimizer, hypernetize
from hyperkd.train import distributed
from hyperkd.train.loop import Trainer
from hyperkd.train.step import StepOutput
from tests.hyper.nets import NETS
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

    def loss_fn(x, y, epoch):
        logits = net(x)
        return StepOutput.of(logits, {"ce": nn.functional.cross_entropy(logits, y)})

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


# -- the fused hypernetwork step under DDP -----------------------------------------------------------
HYPER_STEPS, HYPER_BATCH = 4, 4  # per rank
GAMMAS = (0.3, 0.7)  # rank r's fixed γ when the ranks' γ differ


def hyper_base():
    torch.manual_seed(0)
    return hypernetize(NETS["vgg"](), hidden=(8, 16))


def hyper_batches():
    g = torch.Generator().manual_seed(3)
    n = 2 * HYPER_BATCH
    return [(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g))
            for _ in range(HYPER_STEPS)]


def hyper_train(model, gamma, fused, rank=None, **kwargs):
    """SGD steps of ``model`` on rank ``rank``'s half of each batch (both halves when ``rank`` is
    None: one process with B_γ = 2, one γ per half, each half normalised on its own like a rank's
    batch); returns the trained parameters (BatchNorm running statistics are buffers, not compared)."""
    # Before DDP: fused=True takes W out of the parameters that need a gradient, which DDP fixes at
    # construction.
    opt = HyperOptimizer(model, "sgd", lr=0.05, momentum=0.9, weight_decay=1e-3, fused=fused, **kwargs)
    net = model if rank is None else DistributedDataParallel(model)
    for x, y in hyper_batches():
        if rank is not None:
            half = slice(rank * HYPER_BATCH, (rank + 1) * HYPER_BATCH)
            x, y = x[half], y[half]
        opt.zero_grad()
        F.cross_entropy(net(x, gamma), y).backward()
        opt.step()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _hyper_rank_main(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = {}
        for gammas in ("shared", "per_rank"):
            gamma = 0.5 if gammas == "shared" else GAMMAS[rank]
            for fused in (True, False):
                with mock.patch.object(dist, "all_gather_single", wraps=dist.all_gather_single) as gather:
                    results[gammas, fused] = hyper_train(hyper_base(), gamma, fused, rank)
                results[gammas, fused, "all-gathers"] = gather.call_count
        # Ranks drawing different stochastic-rounding seeds still round a bf16 W identically.
        model = hypernetize(NETS["vgg"](), hidden=(8, 16), weight_dtype=torch.bfloat16)
        torch.manual_seed(rank)
        results["bf16"] = hyper_train(model, GAMMAS[rank], True, rank, state_dtype=torch.bfloat16)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        # The DDP reducers sit in reference cycles (model <-> fused step <-> optimizer) and hold the
        # process group: free them first, or gloo's threads may outlive it and abort at exit.
        gc.collect()
        dist.destroy_process_group()


def test_fused_step_under_ddp_matches_unfused_ddp_and_one_process(tmp_path):
    (tmp_path / "ddp").mkdir()
    mp.spawn(_hyper_rank_main, args=(str(tmp_path / "pg"), str(tmp_path / "ddp")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in range(2)]
    single = {"shared": hyper_train(hyper_base(), torch.tensor([[0.5], [0.5]]), True),
              "per_rank": hyper_train(hyper_base(), torch.tensor([[g] for g in GAMMAS]), True)}
    base = dict(hyper_base().named_parameters())
    for gammas in ("shared", "per_rank"):
        fused, unfused = ranks[0][gammas, True], ranks[0][gammas, False]
        assert (fused["hypernet.W"] - base["hypernet.W"]).abs().max() > 1e-3  # W did train
        for name, value in fused.items():
            for r in (0, 1):  # ranks stay in lockstep, W included
                assert torch.equal(ranks[r][gammas, True][name], value), name
                assert torch.equal(ranks[r][gammas, False][name], unfused[name]), name
            # The paths sum dW = dθᵀ·z over ranks and γ in different orders; fp32 rounding then
            # accumulates over the steps (as in tests/hyper/test_fused_step.py).
            for other in (unfused, single[gammas]):
                assert_close(value, other[name], torch.float32, scale=HYPER_STEPS, msg=f"{gammas} {name}")
    # A γ shared by the ranks needs only an all-reduce of dθ; distinct γ gather the factors.
    assert [ranks[r]["shared", True, "all-gathers"] for r in (0, 1)] == [0, 0]
    assert [ranks[r]["per_rank", True, "all-gathers"] for r in (0, 1)] == [HYPER_STEPS] * 2
    assert ranks[0]["bf16"]["hypernet.W"].dtype == torch.bfloat16
    for name, value in ranks[0]["bf16"].items():
        assert torch.equal(ranks[1]["bf16"][name], value), name


def test_shard_splits_a_seeded_shuffle_between_the_ranks(monkeypatch):
    """shuffle=True: a DistributedSampler gives rank r every world_size-th index of one seeded
    permutation (seed + epoch), so the ranks' shards are disjoint and cover the data, the same on
    every call with the same seed and another after set_epoch."""
    from torch.utils.data import DistributedSampler

    from hyperkd import runtime

    loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=3)
    monkeypatch.setattr(runtime, "active", lambda: True)
    monkeypatch.setattr(runtime, "world_size", lambda: 2)

    def order(rank, epoch, seed=3):
        monkeypatch.setattr(runtime, "rank", lambda: rank)
        sharded = distributed.shard(loader, shuffle=True, seed=seed)
        assert isinstance(sharded.sampler, DistributedSampler) and sharded.batch_size == 3
        sharded.sampler.set_epoch(epoch)
        return [int(v) for (x,) in sharded for v in x]

    permutation = torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert permutation != sorted(permutation)
    assert [order(0, 0), order(1, 0)] == [permutation[0::2], permutation[1::2]]
    assert order(0, 0) == permutation[0::2]
    assert order(0, 1) != permutation[0::2]
