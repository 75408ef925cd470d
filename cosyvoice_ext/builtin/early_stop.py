"""Built-in plugin: early stopping on the CV loss or a sample metric, with a `best` pointer `cosyext export` follows.

Config (the `cosyext:` section of the training YAML)::

    cosyext:
      early_stop:
        patience: 5        # evaluations without improvement before stopping (int >= 1)
        min_delta: 0.001   # an improvement must beat the best by more than this (>= 0)
        metric: loss       # key of upstream's CV loss_dict (default: loss), or a metric the
                           # samples: section records, e.g. samples/sim_campplus (docs/samples.md)

A CV loss must fall; a sample metric moves in its own direction (similarity up, WER down). The
samples plugin runs first on each checkpoint (tryfirst), so its metrics are there; a checkpoint
that `samples: every:` skipped is not an evaluation. After every evaluated checkpoint, rank 0
compares the metric with the best so far, rewrites
``<model_dir>/best.yaml`` when it improved, and decides whether to stop; the decision is broadcast
so all ranks leave together, and they exit with status 0 (torchrun reports success).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any, Callable

from cosyvoice_ext.early_stop import (KEY, SAMPLE_PREFIX, EarlyStopper, parse_settings, parse_value, resolve,
                                      write_best)
from cosyvoice_ext.errors import CosyextError
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
    if settings is not None:
        try:
            settings = resolve(settings, configs)
        except CosyextError as exc:
            log.error("cosyext early_stop: %s%s", exc, f" (next: {exc.hint})" if exc.hint else "")
            raise
    _stopper = EarlyStopper(settings) if settings else None
    if _stopper:
        log.info("early stopping: patience %d, min_delta %g on %s (%s is better)", settings.patience,
                 settings.min_delta, _label(settings.metric), "higher" if settings.higher_is_better else "lower")


def _label(metric: str) -> str:
    return metric if metric.startswith(SAMPLE_PREFIX) else f"CV {metric}"


def _value(model_name: str, info_dict: dict) -> float | None:
    """This checkpoint's value of the metric; None when it has none (a sample metric on a checkpoint
    `samples: every:` skipped), which is not an evaluation at all."""
    metric = _stopper.settings.metric
    if metric.startswith(SAMPLE_PREFIX):
        from cosyvoice_ext.samples import results

        return results.value(model_name, metric)
    return float(info_dict.get("loss_dict", {}).get(metric, math.nan))


@hookimpl
def cosyext_after_save(model_name: str, info_dict: dict) -> None:
    if _stopper is None or model_name == "init":
        return
    rank = int(os.environ.get("RANK", 0))
    decision: list[Any] = [None]
    if rank == 0:
        value = _value(model_name, info_dict)
        if value is None:
            decision = [False]
        else:
            improved, stop = _stopper.update(value, model_name, int(info_dict.get("epoch", -1)),
                                             int(info_dict.get("step", 0)))
            if improved:
                write_best(info_dict["model_dir"], _stopper.best)
            decision = [stop]
        decision = [(decision[0], _stopper.best)]  # the other ranks log rank 0's best, not their empty one
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(decision, src=0)
    stop, best = decision[0]
    if stop:
        log.info("early stopping after %s: %s has not improved by more than %g for %d evaluation(s); "
                 "best is %s (%s %.6f)", model_name, _label(_stopper.settings.metric), _stopper.settings.min_delta,
                 _stopper.settings.patience, best["checkpoint"] if best else "-", _stopper.settings.metric,
                 best["value"] if best else math.nan)
        logging.shutdown()
        sys.exit(0)
