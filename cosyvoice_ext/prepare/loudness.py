"""Loudness normalisation (ITU-R BS.1770 integrated loudness via pyloudnorm) and clipping detection.

Why: recordings from different sessions differ by 10-20 dB; a TTS model learns that as part of
the voice. Every utterance is brought to `target_lufs`; when that would push a peak above
-1 dBFS the gain is lowered to keep the peak there (reported as `peak_limited`), so normalising
never clips. Clipping already in the source (runs of samples at full scale) cannot be undone and
is measured so the filter can drop badly clipped utterances.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PEAK_CEILING_DBFS = -1.0
FULL_SCALE = 0.999


@dataclasses.dataclass(frozen=True)
class Loudness:
    lufs_before: float | None  # None: too short or silent to measure
    gain_db: float
    peak_limited: bool
    clipped_fraction: float


def clipped_fraction(x: np.ndarray) -> float:
    """Share of samples inside runs of at least 3 consecutive full-scale samples (a lone peak is no clip)."""
    hot = np.abs(x) >= FULL_SCALE
    if not hot.any():
        return 0.0
    padded = np.concatenate([[False], hot, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[0::2], edges[1::2]
    runs = ends - starts
    return float(runs[runs >= 3].sum() / len(x))


def normalise(x: np.ndarray, rate: int, target_lufs: float) -> tuple[np.ndarray, Loudness]:
    """`x` brought to `target_lufs` (peak kept at or below -1 dBFS); the measurement says what was done."""
    import pyloudnorm

    clip = clipped_fraction(x)
    lufs: float | None = None
    if len(x) >= int(0.4 * rate):  # BS.1770 gates 400 ms blocks
        value = float(pyloudnorm.Meter(rate).integrated_loudness(x.astype(np.float64)))
        lufs = value if np.isfinite(value) else None
    gain_db = 0.0 if lufs is None else target_lufs - lufs
    peak = float(np.abs(x).max(initial=0.0))
    limited = False
    ceiling = 10 ** (PEAK_CEILING_DBFS / 20)
    if peak > 0 and peak * 10 ** (gain_db / 20) > ceiling:
        gain_db = 20 * np.log10(ceiling / peak)
        limited = True
    y = (x.astype(np.float64) * 10 ** (gain_db / 20)).astype(np.float32)
    return y, Loudness(None if lufs is None else round(lufs, 2), round(float(gain_db), 2), limited, round(clip, 6))
