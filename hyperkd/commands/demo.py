"""``hyperkd demo``: the README's main job. Until the training driver lands, it runs the fused
attention-transfer benchmark on this machine and prints the fused / eager / torch.compile table."""
from hyperkd.commands import bench

HELP = "the main demo: fused attention-transfer KD against eager and torch.compile"


def add_arguments(parser):
    bench.add_arguments(parser)


def run(args) -> int:
    return bench.run(args)
