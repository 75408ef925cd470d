"""Built-in plugin: samples during training (opt-in, ``cosyext: samples:``; docs/samples.md).

After each checkpoint rank 0 speaks a few fixed CV sentences with the checkpoint's weights through
upstream's own inference class, writes them to ``MODEL_DIR/samples/<checkpoint>/UTT.wav``, adds them
to the run's TensorBoard and records eval metrics (``MODEL_DIR/samples/metrics.jsonl``, scalars
``samples/<metric>``). Every other rank waits for it in a broadcast on the default process group,
which also hands them the metrics, so no rank walks into the next epoch's collectives (or the join's
short ``--timeout``) while rank 0 is busy. This hook runs before early_stop's (``tryfirst``), so
early stopping can judge a checkpoint by its sample metrics.

Without the section every hook returns at once: no import, no work, training unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from cosyvoice_ext.errors import ConfigError, CosyextError, UsageError
from cosyvoice_ext.hookspecs import hookimpl
from cosyvoice_ext.samples.config import KEY, PREFIX, WHERE, Settings, parse_settings, parse_value

log = logging.getLogger("cosyvoice_ext.samples")
#: the wait may use at most this share of the process group's timeout
TIMEOUT_SHARE = 0.5
#: the built-in metrics that need `asr:` (cosyvoice_ext.eval.asr)
ASR_METRICS = ("wer", "cer")

_settings: Settings | None = None
_run: dict[str, Any] = {}
_sampler: Any = None


@hookimpl
def cosyext_register_config_sections(register: Callable[[str, Callable[[Any], Any]], None]) -> None:
    register(KEY, parse_value)


def group_timeout() -> float | None:
    """Seconds the default process group waits in a collective before failing (None: not distributed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    from torch.distributed import distributed_c10d as c10d

    pg = c10d._get_default_group()  # noqa: SLF001 - torch keeps the group's timeout on its backend only
    for device in ("cuda", "cpu"):
        try:
            return pg._get_backend(torch.device(device)).options._timeout.total_seconds()  # noqa: SLF001
        except Exception:  # noqa: BLE001 - no backend for that device
            continue
    try:
        return c10d._get_default_timeout(dist.get_backend()).total_seconds()  # noqa: SLF001
    except Exception:  # noqa: BLE001
        return None


def check_run(settings: Settings, args: Any, timeout: float | None) -> dict[str, Any]:
    """What needs the run: model, engine, paths, registered metrics, the budget against the group's timeout."""
    from cosyvoice_ext.eval import metric as metric_mod
    from cosyvoice_ext.synth.source import check_model_dir

    model = getattr(args, "model", None)
    if model not in ("llm", "flow"):
        raise ConfigError(f"samples speak with a trained llm or flow; this run trains {model!r}", key=WHERE,
                          hint="remove the samples: section for this run")
    engine = getattr(args, "train_engine", "torch_ddp")
    if engine != "torch_ddp":
        raise ConfigError(f"samples read the checkpoint train.py writes with torch_ddp; --train_engine {engine} "
                          "saves DeepSpeed checkpoints", key=WHERE,
                          hint="train with --train_engine torch_ddp, or remove the samples: section")
    found = metric_mod.collect()
    unknown = [m for m in settings.metrics if m not in found]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(found), n=1)
        guess = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"no eval metric named {unknown[0]}{guess} (metrics: {', '.join(found)})",
                          key=f"{WHERE}.metrics", hint="cosyext eval --list-metrics")
    needs_asr = [m for m in settings.metrics if m in ASR_METRICS]
    if needs_asr and not settings.asr:
        raise ConfigError(f"metric {needs_asr[0]} transcribes the samples, but no ASR model is set",
                          key=f"{WHERE}.asr", hint="asr: large-v3 (openai-whisper) or asr: PATH/model.pt")
    if timeout is not None and settings.max_seconds > TIMEOUT_SHARE * timeout:
        raise ConfigError(f"{settings.max_seconds:g} s per checkpoint: the other ranks wait for rank 0 in a "
                          f"collective of the process group, whose timeout is {timeout:g} s; the budget may use at "
                          f"most half of it ({TIMEOUT_SHARE * timeout:g} s), since the last sentence may overrun it",
                          key=f"{WHERE}.max_seconds", hint="lower max_seconds (or sentences:), or sample every: N epochs")
    try:
        check_model_dir(Path(settings.pretrained), "directory")
    except UsageError as exc:
        raise ConfigError(str(exc), key=f"{WHERE}.pretrained", hint=exc.hint) from exc
    cv = settings.cv_data or getattr(args, "cv_data", None)
    if not cv:
        raise ConfigError("no CV data: set cv_data: or pass train.py --cv_data", key=f"{WHERE}.cv_data")
    if not Path(cv).is_file():
        raise ConfigError(f"{cv} does not exist" + ("" if settings.cv_data else " (train.py's --cv_data)"),
                          key=f"{WHERE}.cv_data", hint="pass the CV data.list 'cosyext prepare' wrote")
    return {"model": model, "cv_data": Path(cv),
            "directions": {PREFIX + m: bool(found[m].metric.higher_is_better) for m in settings.metrics}}


@hookimpl
def cosyext_configure(configs: dict, args: Any) -> None:
    global _settings
    from cosyvoice_ext.samples import results

    _close()
    _settings = parse_settings(configs)
    _run.clear()
    results.reset()
    if _settings is None:
        return
    timeout = group_timeout()
    try:
        _run.update(check_run(_settings, args, timeout))
    except CosyextError as exc:
        log.error("cosyext samples: %s%s", exc, f" (next: {exc.hint})" if exc.hint else "")
        raise
    results.reset(_run["directions"])
    _run["tensorboard_dir"] = getattr(args, "tensorboard_dir", None)
    log.info("cosyext samples: %d sentence(s) every %s checkpoint(s), at most %g s each; metrics %s; the other "
             "ranks wait for rank 0 (process group timeout %s)", _settings.sentences,
             _settings.every if _settings.every > 1 else "1", _settings.max_seconds,
             ", ".join(_settings.metrics) or "none", f"{timeout:g} s" if timeout else "n/a")


def _close() -> None:
    global _sampler
    if _sampler is not None:
        _sampler.close()
    _sampler = None


def _rank0(model_name: str, info_dict: dict) -> dict[str, Any]:
    """Build the sampler once, then sample (or just note) this checkpoint; never raises."""
    global _sampler
    from cosyvoice_ext.samples.runner import Sampler, preserved_rng, training_tree

    try:
        with preserved_rng():
            if _sampler is None:
                _sampler = Sampler(_settings, model=_run["model"], model_dir=Path(info_dict["model_dir"]),
                                   cv_data=_run["cv_data"], tensorboard_dir=_run.get("tensorboard_dir"),
                                   upstream=training_tree())
                log.info("cosyext samples: upstream %s ready in %.1f s (metrics %.1f s); sentences %s",
                         type(_sampler.syn._cv).__name__, _sampler.t_build, _sampler.t_metrics,  # noqa: SLF001
                         ", ".join(u.utt for u in _sampler.items))
            if _sampler.due(model_name):
                return {"metrics": _sampler.sample(model_name, info_dict)["metrics"]}
            _sampler.mark()
            return {"metrics": None}
    except CosyextError as exc:
        return {"error": str(exc), "hint": exc.hint, "type": type(exc).__name__}
    except Exception as exc:  # noqa: BLE001 - handed to every rank, so all stop together
        log.exception("cosyext samples: setting up the sampler failed")
        return {"error": f"setting up samples failed: {type(exc).__name__}: {exc}", "hint": None, "type": "Error"}


@hookimpl(tryfirst=True)
def cosyext_after_save(model_name: str, info_dict: dict) -> None:
    if _settings is None:
        return
    from cosyvoice_ext.samples import results

    rank = int(os.environ.get("RANK", 0))
    outcome = [_rank0(model_name, info_dict) if rank == 0 else None]
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # every rank waits here for rank 0 (the default group's timeout, checked against max_seconds)
        dist.broadcast_object_list(outcome, src=0)
    result = outcome[0] or {}
    if result.get("error"):
        if rank == 0:
            log.error("cosyext samples: %s%s", result["error"], f" (next: {result['hint']})" if result["hint"] else "")
        _close()
        raise ConfigError(result["error"], hint=result.get("hint")) if result.get("type") == "ConfigError" \
            else CosyextError(result["error"], hint=result.get("hint"))
    if result.get("metrics") is not None:
        results.record(model_name, result["metrics"])
