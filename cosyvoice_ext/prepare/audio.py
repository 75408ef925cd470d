"""Decode and check one recording before it costs feature extraction or a place in a shard.

The bytes stored in the shard's `audio_data` are the file's own bytes (as upstream's
make_parquet_list.py stores them), and they are decoded from exactly those bytes here, so what
passed the check is what training will read. The exception is a recording that must be cut to
whole speech tokens (see `align`), or whose length another decoder may count differently (lossy
formats): that one is stored as a WAV of its first N frames (:func:`wav_prefix`), sample for
sample what libsndfile decodes from the file.
"""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import numpy as np

MIN_SAMPLE_RATE = 16000  # upstream's resample() drops anything below this
#: containers whose frame count every decoder agrees on (PCM or lossless), so the file's own bytes can be
#: stored when no cut is needed; lossy ones (MP3, Ogg) are stored re-encoded (decoder priming differs)
EXACT_LENGTH_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "AIFF"})
#: read these subtypes as integers so a WAV of a prefix holds the very same sample values
_EXACT_DTYPE = {"PCM_S8": "int16", "PCM_U8": "int16", "PCM_16": "int16", "PCM_24": "int32", "PCM_32": "int32",
                "FLOAT": "float32", "DOUBLE": "float64"}


@dataclasses.dataclass(frozen=True)
class Decoded:
    """Mono float32 samples in [-1, 1] at the file's own rate."""

    samples: np.ndarray
    sample_rate: int
    #: libsndfile's container and encoding names ("WAV", "PCM_16"), "" when unknown
    format: str = ""
    subtype: str = ""

    @property
    def exact_length(self) -> bool:
        """Every decoder (upstream's torchaudio/ffmpeg included) sees the same number of frames."""
        return self.format in EXACT_LENGTH_FORMATS

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def read_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


def decode(data: bytes) -> Decoded:
    """Decode with libsndfile (soundfile); multi-channel audio is averaged like upstream's opener does."""
    import soundfile

    with soundfile.SoundFile(io.BytesIO(data)) as f:
        samples = f.read(dtype="float32", always_2d=True)
        return Decoded(samples.mean(axis=1).astype(np.float32), int(f.samplerate), f.format, f.subtype)


def wav_prefix(path: Path, frames: int) -> bytes:
    """A WAV of the first `frames` frames of `path`, every channel, at its own rate.

    PCM and float sources keep their encoding and values exactly; others (MP3, Vorbis...) become
    16-bit PCM. Deterministic: the same input gives the same bytes.
    """
    import soundfile

    with soundfile.SoundFile(io.BytesIO(read_bytes(path))) as f:
        subtype = f.subtype if f.subtype in _EXACT_DTYPE and soundfile.check_format("WAV", f.subtype) else "PCM_16"
        data = f.read(frames=frames, dtype=_EXACT_DTYPE.get(subtype, "int16"), always_2d=True)
        rate = f.samplerate
    if len(data) != frames:
        raise ValueError(f"{path} has {len(data)} frames, fewer than the {frames} planned (changed since?)")
    out = io.BytesIO()
    soundfile.write(out, data, rate, format="WAV", subtype=subtype)
    return out.getvalue()


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
