"""The functions our patched upstream ``train_utils`` calls at its hook points (patch 0006).

Upstream imports this module unless cosyvoice-ext is not installed at all. Each function forwards
to the plugins through :class:`cosyvoice_ext.plugins.Hooks`; the
state shared between hook points of one training process (the loaded configs and args) is kept here.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from .plugins import check_config, hooks

_state: dict[str, Any] = {}
log = logging.getLogger("cosyvoice_ext")


def configure(args: Any, configs: dict) -> dict:
    """After upstream loaded and adjusted the config: every ``cosyext:`` key goes to its owner's parser
    (an unknown key or a bad value stops here), then plugins prepare their settings."""
    _state["args"], _state["configs"] = args, configs
    check_config(configs)
    hooks().configure(configs, args)
    return configs


def prepare_model(args: Any, model: Any) -> Any:
    """Before the DDP/DeepSpeed wrap, after train.py loaded --checkpoint."""
    configs = _state.get("configs", {})
    hooks().prepare_model(model, getattr(args, "model", ""), configs, args)
    return model


def optimizer_params(model: Any) -> Iterable:
    """Parameters for the optimizer: a plugin's choice, else all of them (upstream behaviour)."""
    params = hooks().optimizer_params(model, _state.get("configs", {}), _state.get("args"))
    return model.parameters() if params is None else params


def checkpoint_state(model: Any, info_dict: dict) -> dict | None:
    """The dict to save instead of upstream's full state dict, or None for upstream's."""
    return hooks().checkpoint_state(model, info_dict)


def after_save(model_name: str, info_dict: dict) -> None:
    """After a checkpoint was written (all ranks, after the barrier)."""
    hooks().after_save(model_name, info_dict)
