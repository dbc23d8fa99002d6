"""One hypernetised training step (hypernet forward, generation, primary forward and backward,
update) in three implementations, the primary network's own step as the baseline, and a subprocess
entry point that reports its time and peak memory.

- ``fused``: ``hyperkd.hyper.hypernetize`` + ``HyperOptimizer(fused=True)`` (the fused generation
  op writes each kernel in place; W is updated from (dθ, z) and, in the same pass over W, the next
  step's W·z is generated: one pass over W per step besides backward's).
- ``fused_unchained``: the same with ``chain=False``: the next step generates from W again (the
  fused step as it was before the chained generation).
- ``fused_bf16``, ``fused_bf16_unchained``: the same with W and its optimizer state stored in bf16
  (stochastic rounding): the GPU configuration.
  The fused rows let the model draw γ ~ U[0, 1] itself (``model(x)``), so the next γ is known at
  the optimizer step; the others draw it in the loop and pass it.
- ``eager``: the same maths in plain PyTorch: an ``nn.Linear(d, P)`` output layer whose bias is
  θ0, θ = Linear(z), ``split`` into the layers, ``torch.func.functional_call``, a torch optimizer
  over every parameter (so W's P×d gradient exists).
- ``hyperlight``: hyperlight 0.0.5 itself (the optional ``bench`` extra), built as its README does;
  the same maths (its output bias is θ0) and the same torch optimizer as ``eager``.
- ``primary``: the network alone, no hypernetwork: the footprint the hypernetwork adds to.

Usage: python bench/_hyper_step.py NETWORK IMPL HIDDEN OPTIMIZER [STEPS] [--device cpu|cuda]  → one
JSON line with the median step time after one warm-up step (wall, and ``step_cpu_s``: the
process's CPU seconds, all threads, which other processes on a shared machine disturb less, though
thread spin-waits count) and the peak memory: the process's
peak RSS on the CPU (``peak_rss_bytes``), ``torch.cuda.max_memory_allocated()`` since the process
started on CUDA (``peak_cuda_allocated_bytes``: W, its state and gradient, activations).
"""
import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hyperkd.runtime import peak_memory_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.measure when run as a script
from bench.measure import timed  # noqa: E402

BATCH = 16
DEVICES = ("cpu", "cuda")


def create_network(name: str) -> nn.Module:
    """The zoo network ``name``; ImportError (with the reason) when hyperkd.models is missing."""
    try:
        from hyperkd.models import create
    except ImportError as e:  # the zoo lands in a separate branch
        raise ImportError(f"hyperkd.models is not available ({e}); the benchmark needs the model zoo") from e
    return create(name)


class EagerHyper(nn.Module):
    """MIP hypernetwork (LayerKD-HN Eq. 1–3) in eager PyTorch: Linear output layer + split."""

    def __init__(self, primary: nn.Module, hidden):
        super().__init__()
        self.primary = primary
        self.names = [f"{p}.{n}" for p, m in primary.named_modules() if isinstance(m, nn.Conv2d)
                      for n in ("weight", "bias") if getattr(m, n, None) is not None]
        params = dict(primary.named_parameters())
        self.shapes = [params[n].shape for n in self.names]
        widths = (2,) + tuple(hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        P = sum(math.prod(s) for s in self.shapes)
        self.out = nn.Linear(widths[-1], P)  # its bias is θ0, the primary's weights
        with torch.no_grad():
            self.out.bias.copy_(torch.cat([params[n].detach().reshape(-1) for n in self.names]))
        for n in self.names:
            params[n].requires_grad_(False)

    def forward(self, x, gamma):
        z = torch.cat([torch.sin(gamma * math.pi / 2), torch.cos(gamma * math.pi / 2)], dim=-1)
        for layer in self.hidden:
            z = F.leaky_relu(layer(z))
        theta = self.out(z)[0]
        weights = {n: t.view(s) for n, t, s in zip(self.names, theta.split([math.prod(s) for s in self.shapes]),
                                                    self.shapes)}
        return functional_call(self.primary, weights, (x,))


class HyperlightHyper(nn.Module):
    """The peer: hyperlight 0.0.5 wired as its README does, so the row measures hyperlight's own
    code. ``hl.hypernetize`` turns every Conv2d's parameters into ExternalParameters and returns their
    values; ``HyperNet.from_existing`` starts its output bias at those values (θ0, as
    ``init_theta0="model"``); each forward sets the generated tensors with ``using_externals``.
    hyperlight is imported here so the other rows run without it."""

    def __init__(self, primary: nn.Module, hidden):
        import hyperlight as hl

        super().__init__()
        modules = hl.find_modules_of_type(primary, [nn.Conv2d])
        self.primary, weights = hl.hypernetize(primary, modules=modules, return_values=True)
        self.hypernet = hl.HyperNet.from_existing(weights, input_shapes={"gamma": (1,)},
                                                  hidden_sizes=list(hidden))

    def forward(self, x, gamma):
        with self.primary.using_externals(self.hypernet(gamma=gamma)):
            return self.primary(x)


class Primary(nn.Module):
    """The primary network trained directly (γ and the hidden widths are ignored): the baseline
    for the memory the hypernetwork adds."""

    def __init__(self, primary: nn.Module, hidden):
        super().__init__()
        self.primary = primary

    def forward(self, x, gamma):
        return self.primary(x)


TORCH_STEPPED = {"eager": EagerHyper, "hyperlight": HyperlightHyper, "primary": Primary}
# Fused implementations: W's storage dtype, its optimizer state's, and whether the step chains the
# next generation into its pass over W.
FUSED = {"fused": (torch.float32, torch.float32, True), "fused_unchained": (torch.float32, torch.float32, False),
         "fused_bf16": (torch.bfloat16, torch.bfloat16, True),
         "fused_bf16_unchained": (torch.bfloat16, torch.bfloat16, False)}
IMPLS = tuple(FUSED) + tuple(TORCH_STEPPED)


def resolve_device(name: str) -> torch.device:
    """The device ``--device`` names (one of ``DEVICES``); exits with the reason when it is CUDA and
    none is present, before anything is built."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device cuda: no CUDA device is available here (torch.cuda.is_available() is "
                         "False); this run needs a machine with a GPU")
    return torch.device(name)


def build(network: str, impl: str, hidden, optimizer: str, device: torch.device = torch.device("cpu")):
    """(model, optimizer, step function) for one configuration on ``device``; ``impl`` is a key of
    ``FUSED`` or of ``TORCH_STEPPED`` (those step every trainable parameter with a torch optimizer)."""
    from hyperkd.hyper import HyperOptimizer, hypernetize

    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    primary = create_network(network).to(device)
    momentum = 0.9 if optimizer == "sgd_momentum" else 0.0
    algorithm = "sgd" if optimizer.startswith("sgd") else optimizer
    if impl in FUSED:
        weight_dtype, state_dtype, chain = FUSED[impl]
        model = hypernetize(primary, hidden=hidden, weight_dtype=weight_dtype)
        opt = HyperOptimizer(model, algorithm, lr=1e-3, momentum=momentum, fused=True, state_dtype=state_dtype,
                             chain=chain)
    else:
        # Built on the device, so that no host copy of W (12.76 GiB for RepVGG-A2) is made; .to()
        # moves what a peer library creates on the host regardless.
        with device:
            model = TORCH_STEPPED[impl](primary, hidden).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = (torch.optim.SGD(params, lr=1e-3, momentum=momentum) if algorithm == "sgd"
               else torch.optim.AdamW(params, lr=1e-3))
    model.train()
    x = torch.randn(BATCH, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)

    def step():
        opt.zero_grad()
        gamma = None if impl in FUSED else torch.rand(1, 1, device=device)  # fused: drawn by the model
        F.cross_entropy(model(x, gamma), y).backward()
        opt.step()

    return model, opt, step


def parse_args(argv):
    parser = argparse.ArgumentParser(description="one hypernetised training configuration, timed")
    parser.add_argument("network")
    parser.add_argument("impl", choices=IMPLS)
    parser.add_argument("hidden", help="hidden widths, e.g. 16,64,128")
    parser.add_argument("optimizer", choices=("sgd", "sgd_momentum", "adam", "adamw"))
    parser.add_argument("steps", nargs="?", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    return parser.parse_args(argv)


def w_bytes_per_step(model, impl: str, optimizer: str):
    """The W-bound bytes one step of a fused row moves (see ``hyper_bandwidth.training_step_bytes``),
    or None for the other rows."""
    if impl not in FUSED:
        return None
    from bench.hyper_bandwidth import STATE_SLOTS, training_step_bytes

    fs = model.hypernet.fused_step
    (P, d), state = model.hypernet.W.shape, fs.state[0]
    return training_step_bytes(P, d, 1, model.hypernet.W.element_size(), STATE_SLOTS[optimizer],
                               state.element_size(), chained=fs.chain)


def main(argv):
    args = parse_args(argv)
    device = resolve_device(args.device)
    model, _, step = build(args.network, args.impl, tuple(int(h) for h in args.hidden.split(",")),
                           args.optimizer, device)
    step()  # warm-up: allocates the optimizer state (and compiles the Triton kernels on CUDA)
    times, cpu_times = [], []
    for _ in range(args.steps):
        cpu0 = time.process_time()
        times.append(timed(step, device))
        cpu_times.append(time.process_time() - cpu0)
    peak = "peak_rss_bytes" if device.type == "cpu" else "peak_cuda_allocated_bytes"
    chained = getattr(getattr(model, "hypernet", None), "fused_step", None)
    print(json.dumps({"network": args.network, "impl": args.impl, "hidden": args.hidden,
                      "optimizer": args.optimizer, "device": device.type, "step_s": statistics.median(times),
                      "step_times_s": times, "step_cpu_s": statistics.median(cpu_times),
                      peak: peak_memory_bytes(device),
                      "w_bytes_per_step": w_bytes_per_step(model, args.impl, args.optimizer),
                      "chained_steps": None if chained is None else chained.chained}))


if __name__ == "__main__":
    main(sys.argv[1:])
