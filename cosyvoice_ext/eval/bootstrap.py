"""Means with percentile-bootstrap confidence intervals, and the paired difference of two systems.

Why the bootstrap: per-utterance WER and similarity are far from normal (WER is mostly 0 with a
long tail), and eval sets are small (tens of utterances), so a t interval is off; resampling
utterances with replacement makes no shape assumption. Why paired: both systems speak the same
texts with the same seeds, so resampling utterance *pairs* keeps each text's difficulty in both
arms and gives a much tighter interval for the difference than two independent CIs would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95
#: resample at most this many rows at once (memory: chunk x n float64)
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` utterances and its bootstrap interval [low, high] at ``level``."""

    mean: float
    low: float
    high: float
    n: int
    level: float

    def to_json(self) -> dict:
        return {"mean": self.mean, "ci": [self.low, self.high], "n": self.n, "level": self.level}


def _boot_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = len(values)
    rows = max(1, _CHUNK_CELLS // n)
    out = np.empty(resamples)
    for start in range(0, resamples, rows):
        k = min(rows, resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        out[start:start + k] = values[idx].mean(axis=1)
    return out


def mean_ci(values, *, resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
            rng: np.random.Generator | int | None = 0) -> Estimate:
    """Mean of ``values`` with its percentile-bootstrap CI (one value: a zero-width interval)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("no values to estimate a mean from")
    if not np.isfinite(x).all():
        raise ValueError("values must be finite")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"level must be in (0, 1) and resamples >= 1, got {level}, {resamples}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    mean = float(x.mean())
    if x.size == 1:
        return Estimate(mean, mean, mean, 1, level)
    means = _boot_means(x, resamples, gen)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Estimate(mean, float(low), float(high), int(x.size), level)


def paired_diff_ci(a, b, **kw) -> Estimate:
    """``mean(b - a)`` over paired utterances (b: fine-tuned, a: base) with its bootstrap CI."""
    xa, xb = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if xa.shape != xb.shape:
        raise ValueError(f"paired samples differ in length: {xa.size} vs {xb.size}")
    return mean_ci(xb - xa, **kw)
