"""MIP (HyperLight) hypernetworks, LayerKD-HN §3.2: layout plans, the HyperNet with its fused
generation op, ``hypernetize``, the fused output-layer optimizer step and memory estimates."""
from hyperkd.hyper.hypernet import HyperNet
from hyperkd.hyper.hypernetize import HyperNetized, hypernetize
from hyperkd.hyper.layout import LayoutEntry, LayoutPlan, find_modules

__all__ = ["HyperNet", "HyperNetized", "LayoutEntry", "LayoutPlan", "find_modules", "hypernetize"]
