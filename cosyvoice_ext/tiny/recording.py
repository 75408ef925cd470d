"""One long recording made of real speech, for the demo and tests of `cosyext prepare` on raw audio.

Upstream's git tree carries real recordings (`asset/*_prompt.wav`). Joined end to end with pauses
they make the kind of file users start from (one long take, no transcripts), with known joins.
"""

from __future__ import annotations

from pathlib import Path

#: the real speech upstream's tree carries (ace7c47 and 44316c34 from git; the PyPI wheel has none)
ASSETS = ("cross_lingual_prompt.wav", "zero_shot_prompt.wav")
RATE = 24000


def long_recording(upstream: Path, dest: Path, *, repeats: int = 3, pause: float = 1.2) -> Path:
    """Write `dest` (FLAC): upstream's asset clips, `repeats` rounds, `pause` seconds of silence between
    clips (and a short one at both ends). FileNotFoundError naming what is missing."""
    import numpy as np
    import soundfile

    from ..prepare.slicing import decode_ffmpeg

    asset = Path(upstream) / "asset"
    missing = [name for name in ASSETS if not (asset / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{asset} lacks {', '.join(missing)} (a git checkout of upstream has them; "
                                "the PyPI wheel does not)")
    clips = [decode_ffmpeg(asset / name, RATE) for name in ASSETS]
    gap = np.zeros(int(round(pause * RATE)), dtype=np.float32)
    edge = np.zeros(int(round(0.3 * RATE)), dtype=np.float32)
    parts = [edge]
    for i in range(repeats * len(clips)):
        parts += [clips[i % len(clips)], gap]
    parts[-1] = edge
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.flac")
    soundfile.write(tmp, np.concatenate(parts), RATE, format="FLAC")
    tmp.replace(dest)
    return dest


__all__ = ["ASSETS", "long_recording"]
