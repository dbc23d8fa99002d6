"""FSP's layer pairs along the data flow (LayerKD-HN A.3.7, Algorithm 1: "adjacent pairs of
hypernetised layer indices m and m + 1").

Adjacent in registration order is not adjacent in the net: in a ResNet block the second conv is
registered just before the shortcut's downsample conv, which runs in parallel on the block's input,
and in a ShuffleNetV2 unit ``branch1``'s last conv comes just before ``branch2``'s first. Yim et al.
take FSP matrices between two layers of one stage, through which the features flow in turn. So:

1. one forward pass records, for each tapped module, which tapped modules its input derives from
   without another tapped module in between (a walk back through the autograd graph of that pass);
2. the main path is the longest chain of taps in that graph (the first found on ties, in
   execution order): the residual branch over a shortcut conv, ShuffleNet's ``branch2`` (three
   convs) over ``branch1`` (two);
3. the pairs are consecutive taps on the main path whose features have the same H×W (a strided
   layer starts a new stage and pairs with none before it).

Taps off the main path (shortcut convs, ``branch1``) get no FSP term. This reading is ours: the
paper names the pairs "adjacent" and its Eq. 28 pools maps of different sizes, without saying
which layers meet.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from hyperkd.kd.taps import resolve_modules


def tap_graph(model: nn.Module, names: Sequence[str], example: torch.Tensor):
    """(edges (i, j): tap j's input derives from tap i's output with no tap between; tap order
    of execution; each tap's output shape) from one forward pass of ``example``."""
    modules = resolve_modules(model, list(names), "fsp pairs")
    produced: Dict[object, int] = {}  # autograd node of a tap's output → tap index
    consumed: Dict[int, object] = {}  # tap index → autograd node of its input
    shapes: Dict[int, Tuple[int, ...]] = {}
    order: List[int] = []

    def hook(index):
        def record(module, inputs, output):
            consumed[index] = inputs[0].grad_fn
            produced[output.grad_fn] = index
            shapes[index] = tuple(output.shape)
            order.append(index)
        return record

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        with torch.enable_grad():
            model(example.detach().clone().requires_grad_())
    finally:
        for handle in handles:
            handle.remove()
    edges = set()
    for j, start in consumed.items():
        stack, seen = [start], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in produced:
                edges.add((produced[node], j))
                continue
            stack.extend(next_node for next_node, _ in node.next_functions)
    return sorted(edges), order, shapes


def data_flow_pairs(model: nn.Module, points: Sequence, example: torch.Tensor) -> List[Tuple[int, int]]:
    """Index pairs (m, m') into ``points`` (module names or TapPoints of ``model``): consecutive
    taps on the main path with features of equal H×W. See the module docstring."""
    names = [getattr(p, "name", p) for p in points]
    edges, order, shapes = tap_graph(model, names, example)
    before: Dict[int, List[int]] = {}
    for i, j in edges:
        before.setdefault(j, []).append(i)
    # Longest chain ending at each tap, in execution order (a DAG: edges follow the forward pass).
    length: Dict[int, int] = {}
    previous: Dict[int, int] = {}
    for j in order:
        best = max(before.get(j, []), key=lambda i: (length[i], -order.index(i)), default=None)
        length[j] = 1 if best is None else length[best] + 1
        if best is not None:
            previous[j] = best
    end = max(order, key=lambda j: (length[j], -order.index(j)))
    path = [end]
    while path[-1] in previous:
        path.append(previous[path[-1]])
    path.reverse()
    return [(a, b) for a, b in zip(path, path[1:]) if shapes[a][2:] == shapes[b][2:]]
