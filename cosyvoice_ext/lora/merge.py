"""Fold LoRA into the base weights so the result has exactly the stock keys, order and shapes."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .inject import ADAPTER_NAME

_BASE = ".base_layer"
_LORA_MARK = ".lora_"


def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def stock_key(key: str) -> str:
    """peft's key of a wrapped base tensor -> the stock key (``x.q_proj.base_layer.weight`` -> ``x.q_proj.weight``)."""
    return key.replace(_BASE + ".", ".")


def merged_state_dict(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """Stock-keyed state dict with LoRA folded in, leaving the (training) model untouched.

    Used for ``checkpoint_format: merged`` at every save; ``merge_into_stock`` is the mutating
    variant ``cosyext export`` uses.
    """
    deltas: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in _lora_layers(model):
            if getattr(layer, "merged", False):
                continue
            deltas[f"{name}{_BASE}.weight"] = layer.get_delta_weight(ADAPTER_NAME)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for key, value in model.state_dict().items():
            if _LORA_MARK in key:
                continue
            value = value.detach()
            if key in deltas:
                value = (value + deltas[key].to(value.dtype))
            out[stock_key(key)] = value.cpu()
    return out


def merge_into_stock(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer (peft ``merge()``) and put its base layer back in its place, in place."""
    with torch.no_grad():
        for name, layer in _lora_layers(model):
            layer.merge(adapter_names=[ADAPTER_NAME])
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer.get_base_layer())
    return model
