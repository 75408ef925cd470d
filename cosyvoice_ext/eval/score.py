"""Run every metric over every system's clips, then summarise: per system the mean and its bootstrap
CI, and the paired fine-tuned − base difference over the utterances both systems were scored on.

Nothing disappears silently: a metric whose setup fails is kept with the reason (``unavailable``),
an utterance a metric cannot score is counted under its reason (``skipped``), and a metric that
crashes (a bug, not a known limitation) is stopped with the exception as its reason.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import CosyextError
from .bootstrap import DEFAULT_LEVEL, DEFAULT_RESAMPLES, mean_ci, paired_diff_ci
from .metric import Context, MetricUnavailable, Registered, Sample, Score, as_score

log = logging.getLogger(__name__)
SYSTEMS = ("base", "tuned")
SYSTEM_LABELS = {"base": "base", "tuned": "fine-tuned"}
Progress = Callable[[str], None]


@dataclass
class MetricRun:
    name: str
    registered: Registered
    unavailable: str | None = None
    scores: dict[str, dict[str, Score]] = field(default_factory=dict)  # system -> utt -> score
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)  # system -> utt -> reason
    seconds: float = 0.0  # time spent scoring (setup excluded)

    @property
    def metric(self):
        return self.registered.metric


def _crash(run: MetricRun, where: str, exc: BaseException) -> str:
    log.debug("metric %s crashed in %s", run.name, where, exc_info=exc)
    return f"crashed in {where} (plugin '{run.registered.plugin}'): {type(exc).__name__}: {exc}"


def setup(selected: dict[str, Registered], context: Context, progress: Progress) -> list[MetricRun]:
    """Call each metric's setup once; a MetricUnavailable or a crash marks it unavailable with the reason.
    A CosyextError (a bad --asr, say) stops eval: the user asked for something that cannot be."""
    runs = []
    for name, reg in selected.items():
        run = MetricRun(name, reg)
        t0 = time.perf_counter()
        try:
            reg.metric.setup(context)
        except MetricUnavailable as exc:
            run.unavailable = str(exc)
        except CosyextError:
            raise
        except Exception as exc:  # a plugin's bug: report it, keep evaluating the others
            run.unavailable = _crash(run, "setup", exc)
        if run.unavailable:
            progress(f"metric {name}: not run: {run.unavailable}")
        else:
            progress(f"metric {name}: ready ({time.perf_counter() - t0:.1f} s)")
        runs.append(run)
    return runs


def score_all(runs: list[MetricRun], samples: list[Sample], progress: Progress) -> None:
    """Score every sample with every available metric (samples of all systems, in order)."""
    live = [r for r in runs if not r.unavailable]
    for i, sample in enumerate(samples, 1):
        t0 = time.perf_counter()
        for run in live:
            if run.unavailable:
                continue
            t1 = time.perf_counter()
            try:
                score = as_score(run.metric.score(sample))
            except MetricUnavailable as exc:
                run.skipped.setdefault(sample.system, {})[sample.utt] = str(exc)
            except CosyextError:
                raise
            except Exception as exc:
                run.unavailable = _crash(run, f"score() of {sample.system}/{sample.utt}", exc)
                progress(f"metric {run.name}: stopped: {run.unavailable}")
            else:
                run.scores.setdefault(sample.system, {})[sample.utt] = score
            run.seconds += time.perf_counter() - t1
        progress(f"scored {i}/{len(samples)}: {SYSTEM_LABELS.get(sample.system, sample.system)} {sample.utt} "
                 f"({sample.clip.seconds:.1f} s audio, {time.perf_counter() - t0:.1f} s)")


def _seed(base: int, name: str) -> np.random.Generator:
    """One stream per metric, fixed by the seed and the name, so adding a metric changes no other's CI."""
    return np.random.default_rng([base, zlib.crc32(name.encode())])


def summarise(runs: list[MetricRun], utts: list[str], *, systems: tuple[str, ...] = SYSTEMS,
              resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL, seed: int = 0) -> dict:
    """The JSON `metrics` section: per metric, per system, the diff and a verdict."""
    out = {}
    for run in runs:
        m = run.metric
        entry: dict = {"label": m.label, "higher_is_better": m.higher_is_better, "plugin": run.registered.plugin,
                       "unavailable": run.unavailable, "systems": {}, "diff": None, "verdict": None,
                       "seconds_per_clip": None}
        n_scored = sum(len(v) for v in run.scores.values())
        if n_scored:
            entry["seconds_per_clip"] = run.seconds / n_scored
        rng = _seed(seed, run.name)
        for system in systems:
            scores = run.scores.get(system, {})
            values = [] if run.unavailable else [scores[u].value for u in utts if u in scores]
            reasons = Counter(run.skipped.get(system, {}).values())
            entry["systems"][system] = {
                "estimate": mean_ci(values, resamples=resamples, level=level, rng=rng).to_json() if values else None,
                "scored": len(values), "skipped": dict(reasons)}
        if len(systems) == 2 and not run.unavailable:
            a, b = (run.scores.get(s, {}) for s in systems)
            pairs = [u for u in utts if u in a and u in b]
            if pairs:
                diff = paired_diff_ci([a[u].value for u in pairs], [b[u].value for u in pairs],
                                      resamples=resamples, level=level, rng=rng)
                entry["diff"] = diff.to_json()
                entry["verdict"] = verdict(diff.low, diff.high, m.higher_is_better, len(pairs))
        out[run.name] = entry
    return out


def verdict(low: float, high: float, higher_is_better: bool, n: int) -> str:
    """'better' / 'worse' (for the fine-tuned model) when the CI excludes 0, else 'no clear difference'."""
    if n < 2 or low <= 0 <= high:
        return "no clear difference"
    up = low > 0
    return "better" if up == higher_is_better else "worse"
