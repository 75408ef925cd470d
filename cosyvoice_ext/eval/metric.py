"""What an eval metric is, and how `cosyext eval` collects them from plugins.

A metric is an object with a ``name``, a ``label``, ``higher_is_better``, a ``setup(context)`` that
loads its model once per eval, and a ``score(sample)`` that scores one synthesised utterance. Both
may raise :class:`MetricUnavailable` with the reason (scorer not installed, no reference audio, clip
too short): eval then reports that reason instead of dropping the metric or the utterance silently.
Plugins contribute metrics through the ``cosyext_register_metrics(register)`` hook; a fresh object is
registered for every eval, so a metric may keep its loaded model on ``self``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import PluginError, UsageError
from .audio import Clip

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class MetricUnavailable(Exception):
    """This metric cannot score (at all, from ``setup``; or this one utterance, from ``score``): why."""


@dataclass
class Score:
    """One utterance's value, plus anything worth keeping next to it (a transcript, sub-scores)."""

    value: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """One synthesised (or, in tests, real) utterance to score."""

    utt: str
    text: str
    lang: str  # "en" or "zh" (see normalize.detect_language)
    system: str  # "base" or "tuned"
    clip: Clip


@dataclass
class Context:
    """What metrics may need, shared by all of them in one eval.

    ``references`` are the target speaker's real recordings (what similarity compares with);
    ``pretrained`` is the base model directory (campplus.onnx); ``asr`` the ASR model name or path;
    ``cache`` lets metrics share a loaded model (WER and CER use one Whisper).
    """

    references: list[Clip] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (text, lang) of the utterances to score
    pretrained: Path | None = None
    asr: str | None = None
    threads: int = 1
    cache: dict[str, Any] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Metric(Protocol):
    name: str
    label: str
    higher_is_better: bool

    def setup(self, context: Context) -> None: ...

    def score(self, sample: Sample) -> float | Score: ...


@dataclass(frozen=True)
class Registered:
    metric: Any
    plugin: str


def validate(metric: Any, plugin: str) -> None:
    """A malformed metric is a PluginError naming the plugin, before any audio is scored."""
    name = getattr(metric, "name", None)
    if not isinstance(name, str) or not NAME.match(name):
        raise PluginError(f"plugin '{plugin}' registered a metric named {name!r}: a metric name is lower-case "
                          "letters, digits and '_' (like 'wer' or 'sim_wavlm')",
                          hint="fix the plugin's metric name ('cosyext plugins' lists plugins)")
    if not isinstance(getattr(metric, "label", None), str) or not isinstance(getattr(metric, "higher_is_better", None), bool):
        raise PluginError(f"plugin '{plugin}' registered metric '{name}' without a str 'label' and a bool "
                          "'higher_is_better'", hint="see docs/eval.md, writing a metric")
    for method in ("setup", "score"):
        if not callable(getattr(metric, method, None)):
            raise PluginError(f"plugin '{plugin}' registered metric '{name}' without a {method}() method",
                              hint="see docs/eval.md, writing a metric")


def collect(pm=None) -> dict[str, Registered]:
    """Every metric the plugins register, by name; two metrics with one name are an error naming both plugins."""
    from .. import plugins

    found: dict[str, Registered] = {}

    def add(metric: Any, plugin: str) -> None:
        validate(metric, plugin)
        if metric.name in found:
            raise PluginError(f"metric '{metric.name}' is registered by two plugins: '{found[metric.name].plugin}' "
                              f"and '{plugin}'; one name has one owner",
                              hint="uninstall one of them ('cosyext plugins' lists them)")
        found[metric.name] = Registered(metric, plugin)

    plugins.hooks(pm).register_metrics(add)
    return found


def select(found: dict[str, Registered], wanted: list[str] | None) -> dict[str, Registered]:
    """The metrics ``--metrics`` names (all when None), in the order given; an unknown name is exit 2."""
    if not wanted:
        return dict(found)
    import difflib

    unknown = [w for w in wanted if w not in found]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(found), n=1)
        guess = f"; did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"no metric named {', '.join(unknown)}{guess} (metrics: {', '.join(found)})",
                         hint="cosyext eval --list-metrics")
    return {w: found[w] for w in dict.fromkeys(wanted)}


def as_score(result: Any) -> Score:
    """A metric may return a float or a Score; anything else (or a non-finite value) is a bug in it."""
    if isinstance(result, Score):
        score = result
    elif isinstance(result, (int, float, np.floating, np.integer)) and not isinstance(result, bool):
        score = Score(float(result))
    else:
        raise TypeError(f"score() returned {type(result).__name__}, not a float or Score")
    if not np.isfinite(score.value):
        raise TypeError(f"score() returned {score.value}")
    score.value = float(score.value)
    return score
