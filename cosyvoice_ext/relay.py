"""The functions our patched upstream ``train_utils`` calls at its hook points.

Upstream imports this module inside ``try/except ImportError`` so training still works without
cosyvoice-ext. Each function forwards to the plugin hooks; state shared between hook points in one
training process (the loaded configs and args) is kept here.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any, Iterable

from .errors import ConfigError
from .plugins import get_manager

SECTION = "cosyext"

_state: dict[str, Any] = {}
log = logging.getLogger("cosyvoice_ext")


def configure(args: Any, configs: dict) -> dict:
    """After upstream loaded and adjusted the config: plugins validate their settings."""
    _state["args"], _state["configs"] = args, configs
    pm = get_manager()
    check_section_keys(configs, pm)
    pm.hook.cosyext_configure(configs=configs, args=args)
    return configs


def check_section_keys(configs: dict, pm=None) -> None:
    """Every key of the ``cosyext:`` section must belong to a loaded plugin."""
    section = configs.get(SECTION) if isinstance(configs, dict) else None
    if not isinstance(section, dict):
        return
    pm = pm or get_manager()
    owned = sorted({k for keys in pm.hook.cosyext_section_keys() for k in (keys or [])})
    for key in section:
        if key not in owned:
            close = difflib.get_close_matches(str(key), owned, n=1)
            guess = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"{SECTION}.{key}: unknown key; {guess}known keys: {', '.join(owned) or '(none)'}",
                              hint="fix the key, or install the plugin that provides it ('cosyext plugins' lists them)")


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
    """After a checkpoint was written (all ranks, after the barrier)."""
    get_manager().hook.cosyext_after_save(model_name=model_name, info_dict=info_dict)
