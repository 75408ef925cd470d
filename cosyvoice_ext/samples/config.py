"""`cosyext: samples:` settings: what rank 0 synthesises after each checkpoint, how often, within
which time budget, and which eval metrics it records.

The parser checks the section's shape and values (training start-up and `cosyext lint` call it);
what needs the run (paths exist, metric names are registered, the budget fits the process group's
timeout) is checked at training start-up by :mod:`cosyvoice_ext.builtin.samples`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..config_keys import reject_unknown_keys
from ..errors import ConfigError

KEY = "samples"
WHERE = f"cosyext.{KEY}"
#: early_stop's `metric:` and the TensorBoard scalars name a sample metric `samples/<metric>`
PREFIX = "samples/"
HINT = ("e.g. samples: {pretrained: pretrained_models/CosyVoice2-0.5B, sentences: 2, max_seconds: 120, "
        "metrics: [sim_campplus]} (docs/samples.md)")
_METRIC = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # cosyvoice_ext.eval.metric.NAME
MAX_SENTENCES = 50
FIELDS = ("pretrained", "cv_data", "speaker", "prompt_utt", "spk_id", "sentences", "seed", "every", "max_seconds",
          "metrics", "asr", "stream", "at_init")


@dataclass(frozen=True)
class Settings:
    """The validated `cosyext.samples` section."""

    #: the pretrained inference dir (the yaml with a real hift, hift.pt, campplus.onnx, ...)
    pretrained: str
    #: CV data.list whose sentences are spoken (None: train.py's --cv_data)
    cv_data: str | None = None
    #: the CV speaker whose voice is imitated and compared with (None: the only one in the data)
    speaker: str | None = None
    #: the CV utterance used as the zero-shot prompt (None: the first lasting 3-10 s, as `cosyext eval`)
    prompt_utt: str | None = None
    #: a speaker registered in the pretrained dir's spk2info.pt, spoken prompt-free instead of zero-shot
    spk_id: str | None = None
    sentences: int = 2
    seed: int = 0
    #: sample every N-th checkpoint (init excluded)
    every: int = 1
    #: time budget per checkpoint (synthesis and scoring); at least one sentence is always spoken
    max_seconds: float = 300.0
    metrics: tuple[str, ...] = ("sim_campplus",)
    #: Whisper model name or checkpoint path, for the wer/cer metrics
    asr: str | None = None
    stream: bool = False
    #: also sample the `init` checkpoint (the weights training starts from: a baseline row)
    at_init: bool = False

    def metric_names(self) -> list[str]:
        """The names the metrics are recorded under (TensorBoard, metrics.jsonl, early_stop's metric)."""
        return [PREFIX + m for m in self.metrics]


def _error(key: str, message: str) -> ConfigError:
    return ConfigError(message, key=f"{WHERE}.{key}", hint=HINT)


def _int(raw: Mapping, key: str, default: int, lo: int, hi: int | None = None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise _error(key, f"must be an integer {rng}, got {value!r}")
    return value


def _str(raw: Mapping, key: str, required: bool = False) -> str | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _error(key, f"must be a {'path' if key in ('pretrained', 'cv_data') else 'name'}, got {value!r}"
                     + (" (required)" if required and value is None else ""))
    return value


def _bool(raw: Mapping, key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _error(key, f"must be true or false, got {value!r}")
    return value


def parse_value(raw: Any) -> Settings | None:
    """`cosyext.samples`'s value -> Settings (None when empty: samples off); training and lint share it."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a mapping like {pretrained: DIR, sentences: 2}", key=WHERE, hint=HINT)
    reject_unknown_keys(raw, FIELDS, WHERE, lambda key, msg: ConfigError(msg, key=key, hint=HINT))
    pretrained = _str(raw, "pretrained", required=True)
    max_seconds = raw.get("max_seconds", Settings.max_seconds)
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not max_seconds > 0:
        raise _error("max_seconds", f"must be a number of seconds > 0, got {max_seconds!r}")
    metrics = raw.get("metrics", list(Settings.metrics))
    if metrics is None:
        metrics = []
    if not isinstance(metrics, (list, tuple)) or not all(isinstance(m, str) for m in metrics):
        raise _error("metrics", f"must be a list of eval metric names like [sim_campplus, wer], got {metrics!r}")
    for m in metrics:
        if not _METRIC.match(m):
            raise _error("metrics", f"{m!r} is not a metric name (lower-case letters, digits, '_'; "
                                    "'cosyext eval --list-metrics' lists them)")
    if len(set(metrics)) != len(metrics):
        raise _error("metrics", f"names a metric twice: {metrics!r}")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _error("seed", f"must be an integer >= 0, got {seed!r}")
    return Settings(
        pretrained=pretrained,
        cv_data=_str(raw, "cv_data"),
        speaker=_str(raw, "speaker"),
        prompt_utt=_str(raw, "prompt_utt"),
        spk_id=_str(raw, "spk_id"),
        sentences=_int(raw, "sentences", Settings.sentences, 1, MAX_SENTENCES),
        seed=seed,
        every=_int(raw, "every", Settings.every, 1),
        max_seconds=float(max_seconds),
        metrics=tuple(metrics),
        asr=_str(raw, "asr"),
        stream=_bool(raw, "stream", Settings.stream),
        at_init=_bool(raw, "at_init", Settings.at_init),
    )


def parse_settings(configs: Mapping[str, Any]) -> Settings | None:
    """The validated `cosyext.samples` section of a loaded config, or None when absent."""
    section = (configs.get("cosyext") or {}) if isinstance(configs, Mapping) else {}
    return parse_value(section.get(KEY) if isinstance(section, Mapping) else None)


def is_sample_metric(name: str) -> bool:
    """Whether an early_stop metric names a sample metric (`samples/sim_campplus`) rather than a CV loss."""
    return isinstance(name, str) and name.startswith(PREFIX)
