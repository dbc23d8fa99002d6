"""One hypernetised training step (hypernet forward, generation, primary forward and backward,
update) in three implementations, the primary network's own step as the baseline, and a subprocess
entry point that reports its time and peak RSS.

- ``fused``: ``hyperkd.hyper.hypernetize`` + ``HyperOptimizer(fused=True)`` (the fused generation
  op writes each kernel in place; W is updated inside backward from (dθ, z)).
- ``eager``: the same maths in plain PyTorch: an ``nn.Linear(d, P)`` output layer,
  θ = Linear(z) + θ0, ``split`` into the layers, ``torch.func.functional_call``, a torch optimizer
  over every parameter (so W's P×d gradient exists).
- ``hyperlight``: hyperlight 0.0.5 itself (the optional ``bench`` extra), built as its README does;
  the same maths (its output bias is b + θ0) and the same torch optimizer as ``eager``.
- ``primary``: the network alone, no hypernetwork: the footprint the hypernetwork adds to.

Usage: python bench/_hyper_step.py NETWORK IMPL HIDDEN OPTIMIZER [STEPS]  → one JSON line with the
median step time after one warm-up step.
"""
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from hyperkd.train.loop import peak_memory_bytes

BATCH = 16


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
        self.out = nn.Linear(widths[-1], P)
        self.theta0 = nn.Parameter(torch.cat([params[n].detach().reshape(-1) for n in self.names]))
        for n in self.names:
            params[n].requires_grad_(False)

    def forward(self, x, gamma):
        z = torch.cat([torch.sin(gamma * math.pi / 2), torch.cos(gamma * math.pi / 2)], dim=-1)
        for layer in self.hidden:
            z = F.leaky_relu(layer(z))
        theta = self.out(z)[0] + self.theta0
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


def build(network: str, impl: str, hidden, optimizer: str):
    """(model, optimizer, step function) for one configuration; ``impl`` is "fused" or a key of
    ``TORCH_STEPPED`` (those step every trainable parameter with a torch optimizer)."""
    from hyperkd.hyper import HyperOptimizer, hypernetize

    primary = create_network(network)
    momentum = 0.9 if optimizer == "sgd_momentum" else 0.0
    algorithm = "sgd" if optimizer.startswith("sgd") else optimizer
    if impl == "fused":
        model = hypernetize(primary, hidden=hidden)
        opt = HyperOptimizer(model, algorithm, lr=1e-3, momentum=momentum, fused=True)
    else:
        model = TORCH_STEPPED[impl](primary, hidden)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = (torch.optim.SGD(params, lr=1e-3, momentum=momentum) if algorithm == "sgd"
               else torch.optim.AdamW(params, lr=1e-3))
    model.train()
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))

    def step():
        opt.zero_grad()
        gamma = torch.rand(1, 1)
        F.cross_entropy(model(x, gamma), y).backward()
        opt.step()

    return model, opt, step


def main(argv):
    network, impl, hidden, optimizer = argv[:4]
    steps = int(argv[4]) if len(argv) > 4 else 3
    _, _, step = build(network, impl, tuple(int(h) for h in hidden.split(",")), optimizer)
    step()  # warm-up: allocates the optimizer state
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"network": network, "impl": impl, "hidden": hidden, "optimizer": optimizer,
                      "step_s": statistics.median(times), "step_times_s": times,
                      "peak_rss_bytes": peak_memory_bytes(torch.device("cpu"))}))


if __name__ == "__main__":
    main(sys.argv[1:])
