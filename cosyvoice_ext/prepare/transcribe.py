"""Transcripts for cut utterances: Whisper (openai-whisper, by name or checkpoint path) and the
editable `DEST/transcripts.tsv`.

Whisper decodes greedily (temperature 0, no conditioning on earlier windows), in `--language` or
the language it detects. Its confidence comes with the text: the token-weighted mean
`avg_logprob` and `no_speech_prob` of its windows and the largest `compression_ratio` (Whisper's
own sign of a hallucinated loop), which the filters use with Whisper's own default thresholds.

The TSV is for people: one row per cut utterance with its time span, text, where the text came
from (`asr`, `edited`, `transcript`) and why it was dropped, if it was. A re-run reads it back: a
text that differs from what prepare wrote there is a user's edit and wins over ASR (and is not
held to the ASR confidence filter). Prepare remembers what it wrote in its state directory, so an
unchanged row still follows a new ASR model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

TSV_NAME = "transcripts.tsv"
COLUMNS = ("utt", "recording", "start", "end", "text", "source", "status", "language", "avg_logprob",
           "no_speech_prob", "compression_ratio")


@dataclasses.dataclass(frozen=True)
class Asr:
    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float
    #: gzip ratio of the text (Whisper's hallucination signal: repeated phrases compress well)
    compression_ratio: float = 0.0


def model_identity(spec: str) -> str:
    """What an ASR cache entry must match: the model name, or the checkpoint file's size and mtime."""
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
        st = os.stat(path)
        return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"
    return spec


def audio_key(audio16k: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(audio16k, dtype="<f4").tobytes()).hexdigest()[:32]


def load(spec: str) -> Any:
    """An openai-whisper model (bad names/paths are exit 2 with a hint, as `cosyext eval --asr`)."""
    from ..eval.asr import load_whisper

    return load_whisper(spec)


def transcribe(model: Any, audio16k: np.ndarray, language: str | None) -> Asr:
    import torch

    with torch.inference_mode():
        out = model.transcribe(audio16k.astype(np.float32), language=language, task="transcribe", temperature=0.0,
                               condition_on_previous_text=False, fp16=False, verbose=None)
    segs = out.get("segments") or []
    weights = np.array([max(len(s.get("tokens", [])), 1) for s in segs], dtype=np.float64)
    if len(segs):
        logprob = float(np.average([s["avg_logprob"] for s in segs], weights=weights))
        no_speech = float(np.average([s["no_speech_prob"] for s in segs], weights=weights))
        ratio = float(max(s.get("compression_ratio", 0.0) for s in segs))
    else:
        logprob, no_speech, ratio = float("-inf"), 1.0, 0.0
    return Asr(" ".join(str(out.get("text", "")).split()), str(out.get("language") or language or ""),
               round(logprob, 4), round(no_speech, 4), round(ratio, 3))


_ESC = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESC = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _esc(s: str) -> str:
    return "".join(_ESC.get(c, c) for c in s)


def _unesc(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in _UNESC:
            out.append(_UNESC[s[i + 1]])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def render(rows: list[dict[str, Any]]) -> bytes:
    lines = ["\t".join(COLUMNS)]
    for r in rows:
        lines.append("\t".join(_esc("" if r.get(c) is None else str(r[c])) for c in COLUMNS))
    return ("\n".join(lines) + "\n").encode("utf-8")


def read(path: Path) -> dict[str, dict[str, str]]:
    """{utt: row} of a transcripts.tsv (missing file: {}); rows without an utt are ignored."""
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    if not lines:
        return {}
    header = lines[0].split("\t")
    rows = {}
    for line in lines[1:]:
        fields = [_unesc(f) for f in line.split("\t")]
        row = dict(zip(header, fields))
        if row.get("utt"):
            rows[row["utt"]] = row
    return rows
