"""Long recordings -> utterances: decode with ffmpeg, find speech with silero-vad, cut on pauses.

Why each piece:
- ffmpeg decodes anything users have (wav, flac, mp3, m4a, video soundtracks) to mono float32 at
  one rate, so later stages see one kind of audio.
- silero-vad (its ONNX model ships inside the pip package; loaded from there, never torch.hub) gives
  a speech probability per 32 ms frame at 16 kHz. Speech regions come from those with hysteresis
  (on at `threshold`, off below `threshold - 0.15`), as silero's own `get_speech_timestamps` does.
- `plan` turns regions into utterances inside [min_sec, max_sec]: split at every pause of at least
  `split_pause`, merge a too-short piece into the neighbour across the shorter pause (when the
  result still fits and that pause is under `max_merge_pause`), split a too-long piece at its
  longest internal pause (recursively; a region with no pause is split at its longest
  low-probability run). Cuts are always at the middle of a
  pause, never inside speech on purpose; each utterance then keeps `pad` seconds of silence at
  either side (never past the cut), so lead and trail silence are trimmed.

`plan` is a pure function of the regions and probabilities: the same audio gives the same cuts.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..errors import EnvironmentProblem

VAD_RATE = 16000
VAD_FRAME = 512  # samples per silero frame at 16 kHz (32 ms)
FRAME_SEC = VAD_FRAME / VAD_RATE
#: what ffmpeg decodes; the folder walk picks recordings by these suffixes
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac", ".wma", ".webm", ".mp4", ".mkv",
                  ".aiff", ".aif")


@dataclasses.dataclass(frozen=True)
class SliceOptions:
    min_sec: float = 2.0
    max_sec: float = 15.0
    #: pauses at least this long always end an utterance (when both sides can stand alone)
    split_pause: float = 0.5
    #: a too-short piece is merged into a neighbour only across a shorter pause (a long silence inside an
    #: utterance teaches the model to pause)
    max_merge_pause: float = 1.0
    #: silence kept at each side of an utterance
    pad: float = 0.1
    threshold: float = 0.5
    #: shorter silences do not end a speech region; shorter speech bursts are dropped
    min_silence: float = 0.1
    min_speech: float = 0.25

    def key(self) -> str:
        return ",".join(f"{k}={v!r}" for k, v in sorted(dataclasses.asdict(self).items()))


@dataclasses.dataclass(frozen=True)
class Cut:
    """One utterance of a recording: stored audio [start, end) and its speech [speech_start, speech_end)."""

    start: float
    end: float
    speech_start: float
    speech_end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def decode_ffmpeg(path: Path, rate: int) -> np.ndarray:
    """Mono float32 at `rate` from any file ffmpeg reads; channels averaged. ValueError with ffmpeg's message."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise EnvironmentProblem("ffmpeg is not installed: prepare needs it to decode recordings",
                                 hint="sudo apt-get install ffmpeg")
    proc = subprocess.run([exe, "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1",
                           "-ar", str(rate), "-f", "f32le", "-acodec", "pcm_f32le", "-"],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ValueError(msg[-1] if msg else f"ffmpeg exited {proc.returncode}")
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)


_VAD = None


def load_vad():
    """silero-vad's ONNX model from the installed package (offline; no torch.hub), one onnxruntime thread.

    ONNX rather than the package's JIT model: the same probabilities (within 5e-5) at about twice the speed
    on one CPU thread (benchmarks/bench_prepare.py: 2.1x), and VAD is the slowest stage without ASR."""
    global _VAD
    if _VAD is None:
        try:
            from silero_vad import load_silero_vad
        except ImportError as exc:
            raise EnvironmentProblem(f"slicing recordings needs silero-vad ({exc})",
                                     hint="pip install silero-vad") from exc
        _VAD = load_silero_vad(onnx=True)
    return _VAD


def speech_probs(audio16k: np.ndarray) -> np.ndarray:
    """Speech probability of every 32 ms frame (the last frame zero-padded)."""
    import torch

    model = load_vad()
    model.reset_states()
    n = -(-len(audio16k) // VAD_FRAME)
    padded = np.zeros(n * VAD_FRAME, dtype=np.float32)
    padded[:len(audio16k)] = audio16k
    frames = torch.from_numpy(padded).view(n, VAD_FRAME)
    out = np.empty(n, dtype=np.float32)
    with torch.inference_mode():
        for i in range(n):
            out[i] = float(model(frames[i:i + 1], VAD_RATE))
    model.reset_states()
    return out


def regions(probs: np.ndarray, o: SliceOptions) -> list[tuple[int, int]]:
    """Speech regions as [first, last+1) frame indices, with hysteresis, short gaps closed, short bursts dropped."""
    off = max(o.threshold - 0.15, 0.01)
    raw: list[list[int]] = []
    inside = False
    for i, p in enumerate(probs):
        if not inside and p >= o.threshold:
            inside = True
            raw.append([i, i + 1])
        elif inside:
            if p < off:
                inside = False
            else:
                raw[-1][1] = i + 1
    min_gap = round(o.min_silence / FRAME_SEC)
    merged: list[list[int]] = []
    for r in raw:
        if merged and r[0] - merged[-1][1] < min_gap:
            merged[-1][1] = r[1]
        else:
            merged.append(r)
    min_len = round(o.min_speech / FRAME_SEC)
    return [(a, b) for a, b in merged if b - a >= min_len]


def plan(probs: np.ndarray, total_sec: float, o: SliceOptions) -> list[Cut]:
    """Utterances of one recording (see the module doc); pieces that cannot fit the bounds are returned as
    they are, for the caller's length filter to report."""
    regs = regions(probs, o)
    if not regs:
        return []
    # groups of regions, as lists of (start_frame, end_frame)
    split_gap = o.split_pause / FRAME_SEC
    groups: list[list[tuple[int, int]]] = [[regs[0]]]
    for r in regs[1:]:
        if r[0] - groups[-1][-1][1] >= split_gap:
            groups.append([r])
        else:
            groups[-1].append(r)
    groups = _merge_short(groups, o)
    out: list[list[tuple[int, int]]] = []
    for g in groups:
        out.extend(_split_long(g, probs, o))
    cuts: list[Cut] = []
    for i, g in enumerate(out):
        s, e = g[0][0] * FRAME_SEC, min(g[-1][1] * FRAME_SEC, total_sec)
        lo = 0.0 if i == 0 else (out[i - 1][-1][1] + g[0][0]) / 2 * FRAME_SEC
        hi = total_sec if i == len(out) - 1 else (g[-1][1] + out[i + 1][0][0]) / 2 * FRAME_SEC
        cuts.append(Cut(round(max(lo, s - o.pad), 3), round(min(hi, e + o.pad), 3), round(s, 3), round(e, 3)))
    return cuts


def _span(g: list[tuple[int, int]]) -> float:
    return (g[-1][1] - g[0][0]) * FRAME_SEC


def _merge_short(groups: list[list[tuple[int, int]]], o: SliceOptions) -> list[list[tuple[int, int]]]:
    """Merge each too-short group into the neighbour across the shorter pause while the result fits."""
    changed = True
    while changed:
        changed = False
        for i, g in enumerate(groups):
            if _span(g) >= o.min_sec:
                continue
            options = []
            if i > 0:
                options.append((g[0][0] - groups[i - 1][-1][1], i - 1))
            if i + 1 < len(groups):
                options.append((groups[i + 1][0][0] - g[-1][1], i + 1))
            for gap, j in sorted(options):
                a, b = min(i, j), max(i, j)
                if gap * FRAME_SEC > o.max_merge_pause:
                    continue
                if _span(groups[a] + groups[b]) <= o.max_sec:
                    groups[a:b + 1] = [groups[a] + groups[b]]
                    changed = True
                    break
            if changed:
                break
    return groups


def _split_long(g: list[tuple[int, int]], probs: np.ndarray, o: SliceOptions) -> list[list[tuple[int, int]]]:
    """Split at the longest internal pause (preferring cuts leaving both sides >= min_sec), recursively."""
    if _span(g) <= o.max_sec:
        return [g]
    if len(g) == 1:
        return [[r] for r in _split_region(g[0], probs, o)]
    gaps = [(g[k + 1][0] - g[k][1], k) for k in range(len(g) - 1)]
    fine = [(gap, k) for gap, k in gaps if _span(g[:k + 1]) >= o.min_sec and _span(g[k + 1:]) >= o.min_sec]
    _, k = max(fine or gaps, key=lambda t: (t[0], -abs(t[1] - len(g) / 2)))
    return _split_long(g[:k + 1], probs, o) + _split_long(g[k + 1:], probs, o)


def _split_region(r: tuple[int, int], probs: np.ndarray, o: SliceOptions) -> list[tuple[int, int]]:
    """A region with no pause the VAD closed: cut at the middle of its longest run of the lowest probabilities."""
    a, b = r
    if (b - a) * FRAME_SEC <= o.max_sec:
        return [r]
    margin = int(min(o.min_sec, (b - a) * FRAME_SEC / 2 - 0.1) / FRAME_SEC)
    lo, hi = a + max(margin, 1), b - max(margin, 1)
    seg = probs[lo:hi]
    level = float(seg.min() + 0.1 * (np.median(seg) - seg.min()))  # the dip, not just any quieter frame
    quiet = seg <= level
    best, best_len, run_start = None, 0, None
    for i, q in enumerate(np.append(quiet, False)):
        if q and run_start is None:
            run_start = i
        elif not q and run_start is not None:
            if i - run_start > best_len:
                best, best_len = (run_start + i) // 2, i - run_start
            run_start = None
    cut = lo + (best if best is not None else len(seg) // 2)
    return _split_region((a, cut), probs, o) + _split_region((cut, b), probs, o)


def speech_ratio(probs: np.ndarray, cut: Cut, threshold: float) -> float:
    """Share of the stored audio's frames the VAD calls speech."""
    a, b = int(cut.start / FRAME_SEC), max(int(np.ceil(cut.end / FRAME_SEC)), int(cut.start / FRAME_SEC) + 1)
    window = probs[a:b]
    return float((window >= threshold).mean()) if len(window) else 0.0
