"""Audio as metrics see it: mono float32 at its own rate, resampled to 16 kHz once on demand
(every built-in scorer works at 16 kHz: campplus, resemblyzer, DNSMOS, Whisper)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SCORER_RATE = 16000


@dataclass(eq=False)
class Clip:
    samples: np.ndarray
    sample_rate: int
    name: str = ""
    _at: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        x = np.asarray(self.samples, dtype=np.float32)
        if x.ndim == 2:  # [1, N] (upstream's tensors) or [N, channels]
            x = x.mean(axis=0 if x.shape[0] < x.shape[1] else 1)
        self.samples = np.ascontiguousarray(x.ravel(), dtype=np.float32)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    def at(self, rate: int = SCORER_RATE) -> np.ndarray:
        """The samples at ``rate`` (torchaudio's sinc resampler, as upstream's front end resamples)."""
        if rate == self.sample_rate:
            return self.samples
        if rate not in self._at:
            import torch
            import torchaudio.functional as F

            y = F.resample(torch.from_numpy(self.samples).unsqueeze(0), self.sample_rate, rate)
            self._at[rate] = y.squeeze(0).numpy().astype(np.float32)
        return self._at[rate]

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "") -> "Clip":
        from ..prepare.audio import decode

        d = decode(data)
        return cls(d.samples, d.sample_rate, name)

    @classmethod
    def load(cls, path: Path) -> "Clip":
        return cls.from_bytes(Path(path).read_bytes(), name=str(path))


def write_wav(path: Path, clip: Clip) -> None:
    """PCM16 WAV, written beside ``path`` and renamed over it (never through a link)."""
    import os

    import soundfile

    path = Path(path)
    tmp = path.with_name(f".{path.name}.cosyext-tmp")
    soundfile.write(str(tmp), np.clip(clip.samples, -1.0, 1.0), clip.sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
