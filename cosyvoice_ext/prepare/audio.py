"""Decode and check one recording before it costs feature extraction or a place in a shard.

The bytes stored in the shard's `audio_data` are the file's own bytes (as upstream's
make_parquet_list.py stores them), and they are decoded from exactly those bytes here, so what
passed the check is what training will read.
"""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import numpy as np

MIN_SAMPLE_RATE = 16000  # upstream's resample() drops anything below this


@dataclasses.dataclass(frozen=True)
class Decoded:
    """Mono float32 samples in [-1, 1] at the file's own rate."""

    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def read_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


def decode(data: bytes) -> Decoded:
    """Decode with libsndfile (soundfile); multi-channel audio is averaged like upstream's opener does."""
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return Decoded(samples.mean(axis=1).astype(np.float32), int(rate))


def check(path: Path, *, min_sec: float, max_sec: float) -> tuple[Decoded | None, str | None]:
    """(audio, None) for a usable file, else (None, reason a user understands)."""
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        return None, "audio file not found"
    except OSError as exc:
        return None, f"audio file cannot be read: {exc.strerror or exc}"
    if not data:
        return None, "audio file is empty (0 bytes)"
    try:
        audio = decode(data)
    except Exception as exc:  # libsndfile raises its own error types for every malformed-file case
        return None, f"unreadable audio: {_first_line(exc)}"
    if audio.sample_rate < MIN_SAMPLE_RATE:
        return None, f"sample rate {audio.sample_rate} Hz is below {MIN_SAMPLE_RATE} Hz (upstream's pipeline drops it)"
    if audio.seconds < min_sec:
        return None, f"too short: {audio.seconds:.2f} s < --min-sec {min_sec:g}"
    if audio.seconds > max_sec:
        return None, f"too long: {audio.seconds:.1f} s > --max-sec {max_sec:g}"
    if not np.isfinite(audio.samples).all():
        return None, "audio contains NaN or infinite samples"
    if float(np.abs(audio.samples).max(initial=0.0)) == 0.0:
        return None, "audio is digital silence"
    return audio, None


def _first_line(exc: Exception) -> str:
    """libsndfile's message without the `Error opening <BytesIO ...>:` prefix that names no file."""
    text = str(exc).strip() or type(exc).__name__
    return re.sub(r"^Error opening <[^>]*>:\s*", "", text.splitlines()[0]) or type(exc).__name__
