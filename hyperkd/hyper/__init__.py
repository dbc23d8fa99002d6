"""MIP (HyperLight) hypernetworks, LayerKD-HN §3.2: layout plans, the HyperNet with its fused
generation op, ``hypernetize``, the fused output-layer optimizer step and memory estimates."""
from hyperkd.hyper.hypernet import HyperNet
from hyperkd.hyper.hypernetize import HyperNetized, hypernetize, hypernetized_from_state
from hyperkd.hyper.layout import LayoutEntry, LayoutPlan, find_modules
from hyperkd.hyper.memory import memory_estimate
from hyperkd.hyper.optim import HyperOptimizer

__all__ = ["HyperNet", "HyperNetized", "HyperOptimizer", "LayoutEntry", "LayoutPlan", "find_modules",
           "hypernetize", "hypernetized_from_state", "memory_estimate"]
