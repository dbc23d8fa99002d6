"""The memory estimate (``hyperkd plan``) against the measured peak of hypernetised training on the CPU.

Each configuration runs in its own subprocess, so each row starts from a fresh process and
allocator. The CPU peak is ``bench.measure.peak_extra_bytes``'s. The measured region builds the hypernetwork and its optimizer and runs two steps (the first
allocates the torch optimizer's state), so its peak is the run's: W, gradient, state, activations.

Usage: PYTHONPATH=. python bench/check_memory_estimate.py [NETWORK [BATCH ...]]  → a markdown table.
"""
import subprocess
import sys

OPTIMIZERS = ("sgd", "sgd_momentum", "adam")


def measure(network: str, optimizer: str, fused: bool, batch: int) -> str:
    """One table row: measured peak, the estimate's W + gradient + state and its total."""
    import torch
    import torch.nn.functional as F

    from bench.measure import peak_extra_bytes
    from hyperkd.hyper import HyperOptimizer, hypernetize, memory_estimate
    from hyperkd.hyper.memory import format_size
    from hyperkd.models import create

    primary = create(network, num_classes=10)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    algorithm = "sgd" if optimizer.startswith("sgd") else optimizer
    momentum = 0.9 if optimizer == "sgd_momentum" else 0.0

    def run():
        model = hypernetize(primary).train()
        opt = HyperOptimizer(model, algorithm, lr=1e-3, momentum=momentum, fused=fused)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    peak = peak_extra_bytes(run, torch.device("cpu"))
    est = memory_estimate(primary, optimizer=optimizer, fused=fused, batch_size=batch)
    core = est["W"] + est["W_grad"] + est["optimizer_state"]
    return (f"| {network} | {optimizer} | {'fused' if fused else 'unfused'} | {batch} | {format_size(peak)} "
            f"| {format_size(core)} ({core / peak - 1:+.0%}) | {format_size(est['total'])} "
            f"({est['total'] / peak - 1:+.0%}) |")


def main(argv) -> None:
    network, batches = (argv[0], [int(b) for b in argv[1:]] or [16]) if argv else ("resnet20", [16])
    print("| network | optimizer | step | batch | measured peak | estimate W+grad+state | estimate total |")
    print("|---|---|---|---|---|---|---|")
    for batch in batches:
        for optimizer in OPTIMIZERS:
            for fused in ("0", "1"):
                row = subprocess.run([sys.executable, __file__, "--one", network, optimizer, fused, str(batch)],
                                     check=True, capture_output=True, text=True).stdout
                print(row.strip(), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        network, optimizer, fused, batch = sys.argv[2:6]
        print(measure(network, optimizer, fused == "1", int(batch)))
    else:
        main(sys.argv[1:])
