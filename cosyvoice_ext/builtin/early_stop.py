"""Built-in plugin: early stopping on the CV loss, with a `best` pointer `cosyext export` follows.

Config (the `cosyext:` section of the training YAML)::

    cosyext:
      early_stop:
        patience: 5        # evaluations without improvement before stopping (int >= 1)
        min_delta: 0.001   # an improvement must lower the CV loss by more than this (>= 0)
        metric: loss       # key of upstream's CV loss_dict (default: loss)

After every evaluated checkpoint, rank 0 compares the CV metric with the best so far, rewrites
``<model_dir>/best.yaml`` when it improved, and decides whether to stop; the decision is broadcast
so all ranks leave together, and they exit with status 0 (torchrun reports success).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any, Callable

from cosyvoice_ext.early_stop import KEY, EarlyStopper, parse_settings, parse_value, write_best
from cosyvoice_ext.hookspecs import hookimpl

log = logging.getLogger("cosyvoice_ext.early_stop")
_stopper: EarlyStopper | None = None


@hookimpl
def cosyext_register_config_sections(register: Callable[[str, Callable[[Any], Any]], None]) -> None:
    register(KEY, parse_value)


@hookimpl
def cosyext_configure(configs: dict, args: Any) -> None:
    global _stopper
    settings = parse_settings(configs)
    _stopper = EarlyStopper(settings) if settings else None
    if _stopper:
        log.info("early stopping: patience %d, min_delta %g on CV %s",
                 settings.patience, settings.min_delta, settings.metric)


@hookimpl
def cosyext_after_save(model_name: str, info_dict: dict) -> None:
    if _stopper is None or model_name == "init":
        return
    rank = int(os.environ.get("RANK", 0))
    decision = [None]
    if rank == 0:
        value = float(info_dict.get("loss_dict", {}).get(_stopper.settings.metric, math.nan))
        improved, stop = _stopper.update(value, model_name, int(info_dict.get("epoch", -1)), int(info_dict.get("step", 0)))
        if improved:
            write_best(info_dict["model_dir"], _stopper.best)
        decision = [stop]
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(decision, src=0)
    if decision[0]:
        best = _stopper.best
        log.info("early stopping after %s: CV %s has not improved by more than %g for %d evaluation(s); "
                 "best is %s (%s %.6f)", model_name, _stopper.settings.metric, _stopper.settings.min_delta,
                 _stopper.settings.patience, best["checkpoint"] if best else "-", _stopper.settings.metric,
                 best["value"] if best else math.nan)
        logging.shutdown()
        sys.exit(0)
