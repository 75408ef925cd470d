"""The functions our patched upstream ``train_utils`` calls at its hook points.

Upstream imports this module inside ``try/except ImportError`` so training still works without
cosyvoice-ext. Each function forwards to the plugin hooks; state shared between hook points in one
training process (the loaded configs and args) is kept here.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from .plugins import get_manager

_state: dict[str, Any] = {}
log = logging.getLogger("cosyvoice_ext")


def configure(args: Any, configs: dict) -> dict:
    """After upstream loaded and adjusted the config: plugins validate their settings."""
    _state["args"], _state["configs"] = args, configs
    get_manager().hook.cosyext_configure(configs=configs, args=args)
    return configs


def prepare_model(args: Any, model: Any) -> Any:
    """Before the DDP/DeepSpeed wrap, after train.py loaded --checkpoint."""
    configs = _state.get("configs", {})
    name = getattr(args, "model", "")
    get_manager().hook.cosyext_prepare_model(model=model, name=name, configs=configs, args=args)
    return model


def optimizer_params(model: Any) -> Iterable:
    """Parameters for the optimizer: a plugin's choice, else all of them (upstream behaviour)."""
    params = get_manager().hook.cosyext_optimizer_params(
        model=model, configs=_state.get("configs", {}), args=_state.get("args"))
    return model.parameters() if params is None else params


def checkpoint_state(model: Any, info_dict: dict) -> dict | None:
    """The dict to save instead of upstream's full state dict, or None for upstream's."""
    return get_manager().hook.cosyext_checkpoint_state(model=model, info_dict=info_dict)


def after_save(model_name: str, info_dict: dict) -> None:
    """After a checkpoint was written (all ranks)."""
    if model_name.startswith("epoch_"):
        get_manager().hook.cosyext_after_epoch(info_dict=info_dict)
