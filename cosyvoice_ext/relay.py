"""The functions our patched upstream ``train_utils`` calls at its hook points (patch 0006).

Upstream imports this module unless cosyvoice-ext is not installed at all. Each function forwards
to the plugins through :class:`cosyvoice_ext.plugins.Hooks` or to :mod:`cosyvoice_ext.resume`; the
state shared between hook points of one training process (the loaded configs and args) is kept here.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from . import resume
from .errors import CosyextError
from .plugins import check_config, hooks

_state: dict[str, Any] = {}
log = logging.getLogger("cosyvoice_ext")


def configure(args: Any, configs: dict) -> dict:
    """After upstream loaded and adjusted the config: every ``cosyext:`` key goes to its owner's parser
    (an unknown key or a bad value stops here), then plugins prepare their settings."""
    _state["args"], _state["configs"] = args, configs
    resume.reset()  # a training process starts here: nothing pending from an earlier run in this interpreter
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


def optimizer_ready(args: Any, model: Any, optimizer: Any, scheduler: Any) -> None:
    """After init_optimizer_and_scheduler built them: a resumed run gets their saved states back."""
    if getattr(args, "train_engine", "torch_ddp") != "torch_ddp":
        return  # DeepSpeed owns its optimizer and checkpoints
    try:
        resume.attach(optimizer, scheduler)
    except CosyextError as exc:  # train.py shows a long traceback: say what is wrong in one line first
        log.error("cosyext resume: %s%s", exc, f" (next: {exc.hint})" if exc.hint else "")
        raise


def grad_scaler(scaler: Any) -> None:
    """batch_backward is about to use AMP's scaler (every step; cheap after the first)."""
    resume.attach_scaler(scaler)


def before_save(model_name: str, info_dict: dict) -> None:
    """At the start of save_model, on every rank: collect the ranks' RNG states for rank 0's checkpoint."""
    if info_dict.get("train_engine", "torch_ddp") == "torch_ddp":
        resume.gather_rng(model_name)


def checkpoint_state(model: Any, info_dict: dict) -> dict | None:
    """The dict to save instead of upstream's full state dict, or None for upstream's."""
    return hooks().checkpoint_state(model, info_dict)


def after_save(model_name: str, info_dict: dict) -> None:
    """After a checkpoint was written (all ranks, after the barrier). The ``init`` checkpoint is the last
    thing train.py writes before its epoch loop: a resumed run puts its RNG states back right after it."""
    hooks().after_save(model_name, info_dict)
    if model_name == "init":
        resume.restore_rng()
