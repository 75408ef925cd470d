"""Early-stopping state and the `best.yaml` pointer (the built-in plugin :mod:`cosyvoice_ext.builtin.early_stop`
drives it)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from .config_keys import reject_unknown_keys
from .errors import ConfigError, UsageError

KEY = "early_stop"
BEST_FILE = "best.yaml"
HINT = ("e.g. early_stop: {patience: 5, min_delta: 0.001, metric: loss} or metric: samples/sim_campplus "
        "(docs/plugins.md, docs/samples.md)")
#: early stopping on a sample metric (`cosyext: samples:`, docs/samples.md) rather than a CV loss
SAMPLE_PREFIX = "samples/"
_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class Settings:
    patience: int
    min_delta: float = 0.0
    #: a key of upstream's CV loss_dict (`loss`), or a sample metric (`samples/sim_campplus`)
    metric: str = "loss"
    #: CV losses fall; a sample metric's direction comes from the metric (resolved at training start)
    higher_is_better: bool = False


def parse_settings(configs: Mapping[str, Any]) -> Settings | None:
    """The validated `cosyext.early_stop` section of a loaded config, or None when absent."""
    section = (configs.get("cosyext") or {}) if isinstance(configs, Mapping) else {}
    return parse_value(section.get(KEY) if isinstance(section, Mapping) else None)


def parse_value(raw: Any) -> Settings | None:
    """`cosyext.early_stop`'s value -> Settings (None when empty); the parser training and lint share."""
    if raw is None:
        return None
    where = f"cosyext.{KEY}"
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a mapping like {patience: 5, min_delta: 0.001}", key=where, hint=HINT)
    reject_unknown_keys(raw, ("patience", "min_delta", "metric"), where,
                        lambda key, msg: ConfigError(msg, key=key, hint=HINT))
    patience = raw.get("patience")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ConfigError(f"must be an integer >= 1, got {patience!r}", key=f"{where}.patience", hint=HINT)
    min_delta = raw.get("min_delta", 0.0)
    if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or min_delta < 0:
        raise ConfigError(f"must be a number >= 0, got {min_delta!r}", key=f"{where}.min_delta", hint=HINT)
    metric = raw.get("metric", "loss")
    if not isinstance(metric, str) or not metric:
        raise ConfigError("must be the name of a CV loss (loss) or of a sample metric (samples/sim_campplus)",
                          key=f"{where}.metric", hint=HINT)
    if metric.startswith(SAMPLE_PREFIX) and not _METRIC_NAME.match(metric[len(SAMPLE_PREFIX):]):
        raise ConfigError(f"{metric!r} is not a sample metric like samples/sim_campplus", key=f"{where}.metric",
                          hint=HINT)
    return Settings(patience, float(min_delta), metric)


def resolve(settings: Settings, configs: Mapping[str, Any]) -> Settings:
    """At training start: a sample metric must be one the `samples:` section records; its direction is the
    metric's own (`higher_is_better` of the eval metric). A CV loss is lower-is-better."""
    if not settings.metric.startswith(SAMPLE_PREFIX):
        return settings
    from .samples.config import parse_settings as samples_settings

    name = settings.metric[len(SAMPLE_PREFIX):]
    samples = samples_settings(configs)
    if samples is None or name not in samples.metrics:
        have = ", ".join(samples.metric_names()) if samples else "none: there is no samples: section"
        raise ConfigError(f"{settings.metric} is not recorded by this run (sample metrics: {have})",
                          key=f"cosyext.{KEY}.metric",
                          hint=f"add {name} to cosyext: samples: metrics: (docs/samples.md), or use metric: loss")
    from .eval.metric import collect

    found = collect()
    if name not in found:
        raise ConfigError(f"no eval metric named {name} (metrics: {', '.join(found)})", key=f"cosyext.{KEY}.metric",
                          hint="cosyext eval --list-metrics")
    return replace(settings, higher_is_better=bool(found[name].metric.higher_is_better))


class EarlyStopper:
    """Tracks the best CV value and evaluations since it; NaN never counts as an improvement."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.best: dict | None = None
        self.since_best = 0

    def better(self, value: float) -> bool:
        """Whether `value` beats the best by more than min_delta, in the metric's direction."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.settings.higher_is_better:
            return value > self.best["value"] + self.settings.min_delta
        return value < self.best["value"] - self.settings.min_delta

    def update(self, value: float, checkpoint: str, epoch: int, step: int) -> tuple[bool, bool]:
        """Record one evaluation; return (improved, should_stop)."""
        improved = self.better(value)
        if improved:
            self.best = {"checkpoint": f"{checkpoint}.pt", "epoch": epoch, "step": step,
                         "metric": self.settings.metric, "value": value}
            if self.settings.higher_is_better:
                self.best["higher_is_better"] = True
            self.since_best = 0
        else:
            self.since_best += 1
        return improved, self.since_best >= self.settings.patience


def write_best(model_dir: str | os.PathLike, best: dict) -> Path:
    """Atomically point `<model_dir>/best.yaml` at the best checkpoint."""
    path = Path(model_dir) / BEST_FILE
    tmp = path.with_name(f".{BEST_FILE}.tmp")
    tmp.write_text(yaml.safe_dump(best, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_best(run_dir: str | os.PathLike) -> dict | None:
    """The best pointer of a run directory, or None if training did not write one.

    A `best.yaml` that is not what :func:`write_best` writes (unreadable, not a mapping, no checkpoint
    name, a non-numeric epoch or value) is a UsageError naming the file: export must not guess.
    Returns ``checkpoint`` (str), ``epoch`` (int, -1 when absent) and ``value`` (float or None).
    """
    path = Path(run_dir) / BEST_FILE
    if not path.is_file():
        return None
    hint = f"remove {path} to export the latest epoch, or pass --checkpoint FILE"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path} is not readable YAML ({first})", hint=hint) from exc
    checkpoint = doc.get("checkpoint") if isinstance(doc, dict) else None
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        raise UsageError(f"{path} does not name a checkpoint (early stopping writes 'checkpoint: epoch_N_whole.pt'"
                         f"; found {_short(doc)})", hint=hint)
    epoch, value = doc.get("epoch", -1), doc.get("value")
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise UsageError(f"{path}: epoch must be an integer, got {_short(epoch)}", hint=hint)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise UsageError(f"{path}: value must be a number, got {_short(value)}", hint=hint)
    return {**doc, "checkpoint": checkpoint, "epoch": epoch, "value": None if value is None else float(value)}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
