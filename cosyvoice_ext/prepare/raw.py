"""Raw recordings -> cut, loudness-normalised, transcribed utterances in DEST/segments/ (the stage that
runs before features when `--asr` is given or SRC is one audio file).

For each recording without a transcript next to it: decode (ffmpeg, 24 kHz mono), VAD and plan the
cuts (`slicing`), normalise each utterance's loudness (`loudness`), write it to
`DEST/segments/UTT.wav` (16-bit PCM; rewritten only when its bytes change, so the feature cache,
keyed by size and mtime, stays valid across re-runs), transcribe it (`transcribe`), filter it.
A recording with a `.txt`/`.lab` next to it is a ready-cut utterance: its transcript wins, nothing
is cut or transcribed.

Everything slow is cached under DEST/.cosyext-prepare/ (`slices.jsonl`: the cuts and loudness of a
recording, keyed by its size/mtime and the slicing options; `asr.jsonl`: Whisper's result per
segment, keyed by the segment's bytes, the model and the language), appended and fsynced as each
finishes, so a killed run loses at most the item in flight and a re-run gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from . import loudness as loud_mod
from . import slicing
from . import transcribe as asr_mod
from .sources import TRANSCRIPT_SUFFIXES, Problem, Utterance, _read_transcript, _safe_id
from .state import file_key, write_atomic

SEGMENT_RATE = 24000
SEGMENTS_DIR = "segments"
SLICES = "slices.jsonl"
ASR_CACHE = "asr.jsonl"
WRITTEN = "transcripts.json"


@dataclasses.dataclass(frozen=True)
class RawOptions:
    asr: str | None = None
    language: str | None = None
    slice: slicing.SliceOptions = slicing.SliceOptions()
    target_lufs: float = -20.0
    min_speech_ratio: float = 0.5
    #: Whisper's own thresholds for "this decode failed" (transcribe's logprob_threshold, no_speech_threshold)
    min_asr_logprob: float = -1.0
    max_no_speech: float = 0.6
    max_compression_ratio: float = 2.4
    max_clipped: float = 0.001


@dataclasses.dataclass
class Segment:
    """One cut utterance and what happened to it (for the TSV and the report)."""

    utt: str
    recording: str
    spk: str
    start: float
    end: float
    speech_start: float
    speech_end: float
    path: Path
    speech_ratio: float
    lufs_before: float | None
    gain_db: float
    peak_limited: bool
    clipped: float
    text: str = ""
    source: str = ""
    language: str = ""
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    status: str = "kept"

    @property
    def seconds(self) -> float:
        return round(self.end - self.start, 3)


def find(src: Path, dest: Path, speaker: str | None) -> tuple[list[tuple[Path, str, str]], list[Utterance],
                                                              list[Problem]]:
    """(recordings to cut as (path, id, speaker), ready-cut pairs, problems); DEST is never searched."""
    src = Path(src).expanduser().resolve()
    if src.is_file():
        stem = _safe_id(src.stem)
        return [(src, stem, speaker or stem)], [], []
    if not src.is_dir():
        raise UsageError(f"source {src} does not exist", hint="cosyext prepare RECORDING.wav DEST --asr small")
    recordings, pairs, problems = [], [], []
    for root, dirs, files in os.walk(src):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != dest
                         and dest not in (here / d).resolve().parents)
        for name in sorted(files):
            path = here / name
            if path.suffix.lower() not in slicing.AUDIO_SUFFIXES or not path.is_file():
                continue
            rel = path.relative_to(src).with_suffix("")
            rid = _safe_id("_".join(rel.parts))
            spk = speaker or _safe_id("_".join(rel.parts[:-1]) or src.name)
            transcript = next((path.with_suffix(s) for s in TRANSCRIPT_SUFFIXES if path.with_suffix(s).is_file()), None)
            if transcript is None:
                recordings.append((path, rid, spk))
                continue
            text, why = _read_transcript(transcript)
            if why:
                problems.append(Problem(rid, str(path), why))
            else:
                pairs.append(Utterance(rid, path, text, spk))
    if not recordings and not pairs and not problems:
        raise UsageError(f"no recordings under {src} ({', '.join(slicing.AUDIO_SUFFIXES)})",
                         hint="cosyext prepare FOLDER_OR_FILE DEST --asr small")
    return recordings, pairs, problems


class _Jsonl:
    """An append-only, fsynced cache (a torn last line from a kill is ignored)."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        self.items: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and key in rec:
                    self.items[rec[key]] = rec
        torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self._fh = open(path, "a", encoding="utf-8")
        if torn:
            self._fh.write("\n")

    def add(self, rec: dict[str, Any]) -> None:
        self._fh.write(json.dumps(rec, separators=(",", ":"), sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.items[rec[self.key]] = rec

    def close(self) -> None:
        self._fh.close()


def _wav_bytes(x: np.ndarray, rate: int) -> bytes:
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.clip(x, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> None:
    """Keep an identical file (and its mtime: the feature cache is keyed by it)."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    write_atomic(path, data)


def _to16k(x: np.ndarray) -> np.ndarray:
    from scipy.signal import resample_poly

    return resample_poly(x, 2, 3).astype(np.float32)  # 24 kHz -> 16 kHz


def run(recordings: list[tuple[Path, str, str]], dest: Path, state_dir: Path, o: RawOptions,
        say, tqdm, no_bar, *, use_tsv: bool = True) -> tuple[list[Segment], list[Problem], tuple[int, int, int]]:
    """Cut, normalise, write and transcribe every recording; returns every segment (kept or not).

    `use_tsv=False` (--force: start over) ignores the texts in an existing transcripts.tsv."""
    seg_dir = dest / SEGMENTS_DIR
    seg_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    slices = _Jsonl(state_dir / SLICES, "recording")
    problems: list[Problem] = []
    segments: list[Segment] = []
    try:
        for path, rid, spk in tqdm(recordings, desc="slicing", unit="rec", disable=no_bar, file=sys.stderr):
            try:
                segments.extend(_slice_one(path, rid, spk, seg_dir, slices, o))
            except ValueError as exc:
                problems.append(Problem(rid, str(path), f"cannot decode: {exc}"))
                say(f"skipped {path}: cannot decode: {exc}")
                continue
            if not any(s.recording == rid for s in segments):
                problems.append(Problem(rid, str(path), "no speech found by the VAD"))
    finally:
        slices.close()
    keep = {s.path.name for s in segments}
    for stale in seg_dir.glob("*.wav"):
        if stale.name not in keep:
            stale.unlink()
    counts = _transcribe(segments, dest, state_dir, o, say, tqdm, no_bar, use_tsv)
    return segments, problems, counts


def _slice_one(path: Path, rid: str, spk: str, seg_dir: Path, slices: _Jsonl, o: RawOptions) -> list[Segment]:
    key = file_key(path)
    opts = f"{o.slice.key()};lufs={o.target_lufs};rate={SEGMENT_RATE}"
    rec = slices.items.get(str(path))
    cached = rec is not None and rec.get("file") == key and rec.get("options") == opts
    if cached and all((seg_dir / s["name"]).is_file() and hashlib.sha256((seg_dir / s["name"]).read_bytes())
                      .hexdigest() == s["sha256"] for s in rec["segments"]):
        return [_segment(s, rid, spk, seg_dir) for s in rec["segments"]]
    audio = slicing.decode_ffmpeg(path, SEGMENT_RATE)
    if cached:
        plan_rows = rec["segments"]
    else:
        probs = slicing.speech_probs(_to16k(audio))
        cuts = slicing.plan(probs, len(audio) / SEGMENT_RATE, o.slice)
        plan_rows = []
        for i, c in enumerate(cuts):
            plan_rows.append({"name": f"{rid}_{i:04d}.wav", "start": c.start, "end": c.end,
                              "speech_start": c.speech_start, "speech_end": c.speech_end,
                              "speech_ratio": round(slicing.speech_ratio(probs, c, o.slice.threshold), 4)})
    out_rows = []
    for row in plan_rows:
        piece = audio[int(round(row["start"] * SEGMENT_RATE)):int(round(row["end"] * SEGMENT_RATE))]
        normed, info = loud_mod.normalise(piece, SEGMENT_RATE, o.target_lufs)
        data = _wav_bytes(normed, SEGMENT_RATE)
        _write_if_changed(seg_dir / row["name"], data)
        out_rows.append({**{k: row[k] for k in ("name", "start", "end", "speech_start", "speech_end", "speech_ratio")},
                         "lufs_before": info.lufs_before, "gain_db": info.gain_db, "peak_limited": info.peak_limited,
                         "clipped": info.clipped_fraction, "sha256": hashlib.sha256(data).hexdigest()})
    slices.add({"recording": str(path), "file": key, "options": opts, "segments": out_rows})
    return [_segment(s, rid, spk, seg_dir) for s in out_rows]


def _segment(s: dict[str, Any], rid: str, spk: str, seg_dir: Path) -> Segment:
    return Segment(utt=s["name"][:-4], recording=rid, spk=spk, start=s["start"], end=s["end"],
                   speech_start=s["speech_start"], speech_end=s["speech_end"], path=seg_dir / s["name"],
                   speech_ratio=s["speech_ratio"], lufs_before=s["lufs_before"], gain_db=s["gain_db"],
                   peak_limited=s["peak_limited"], clipped=s["clipped"])


def _prefilter(s: Segment, o: RawOptions) -> str | None:
    span = s.speech_end - s.speech_start
    if span < o.slice.min_sec:
        return f"too short: {span:.2f} s of speech < {o.slice.min_sec:g} s"
    if span > o.slice.max_sec:
        return f"too long: {span:.2f} s of speech > {o.slice.max_sec:g} s (no pause to cut at)"
    if s.speech_ratio < o.min_speech_ratio:
        return f"low speech ratio: {s.speech_ratio:.2f} < {o.min_speech_ratio:g}"
    if s.clipped > o.max_clipped:
        return f"clipped: {100 * s.clipped:.2f}% of samples at full scale > {100 * o.max_clipped:g}%"
    return None


def _transcribe(segments: list[Segment], dest: Path, state_dir: Path, o: RawOptions, say, tqdm,
                no_bar, use_tsv: bool) -> tuple[int, int, int]:
    tsv_path = dest / asr_mod.TSV_NAME
    tsv = asr_mod.read(tsv_path) if use_tsv else {}
    written_path = state_dir / WRITTEN
    written: dict[str, dict[str, Any]] = json.loads(written_path.read_text(encoding="utf-8")) \
        if written_path.is_file() else {}
    model_id = asr_mod.model_identity(o.asr) if o.asr else None
    cache = _Jsonl(state_dir / ASR_CACHE, "key")
    model = None
    computed = reused = edited = 0
    try:
        for s in tqdm(segments, desc="transcribing", unit="seg", disable=no_bar, file=sys.stderr):
            row, before = tsv.get(s.utt), written.get(s.utt)
            if row is not None and (row.get("start"), row.get("end")) != (f"{s.start:.3f}", f"{s.end:.3f}"):
                say(f"warning: {tsv_path.name} row {s.utt} is for {row.get('start')}-{row.get('end')} s, the segment "
                    f"is now {s.start:.3f}-{s.end:.3f} s (slicing changed): its text is not used")
                row = None
            if row is not None and (before is None or before.get("source") == "edited"
                                    or row.get("text", "") != before.get("text")):
                s.text, s.source = " ".join(row.get("text", "").split()), "edited"
                edited += 1
            why = _prefilter(s, o)
            if why is None and s.source != "edited":
                if o.asr is None:
                    why = f"no transcript: pass --asr MODEL, or write one into {asr_mod.TSV_NAME} and --resume"
                else:
                    key = hashlib.sha256(f"{model_id}|{o.language}|".encode() + s.path.read_bytes()).hexdigest()[:32]
                    hit = cache.items.get(key)
                    if hit is None:
                        if model is None:
                            model = asr_mod.load(o.asr)
                        import soundfile

                        audio, _ = soundfile.read(s.path, dtype="float32")
                        r = asr_mod.transcribe(model, _to16k(audio), o.language)
                        hit = {"key": key, **dataclasses.asdict(r)}
                        cache.add(hit)
                        computed += 1
                    else:
                        reused += 1
                    s.text, s.source, s.language = hit["text"], "asr", hit["language"]
                    s.avg_logprob, s.no_speech_prob = hit["avg_logprob"], hit["no_speech_prob"]
                    s.compression_ratio = hit.get("compression_ratio", 0.0)
                    why = _asr_filter(s, o)
            elif why is None and not s.text:
                why = f"empty transcript ({asr_mod.TSV_NAME})"
            s.status = why or "kept"
    finally:
        cache.close()
    rows = [{"utt": s.utt, "recording": s.recording, "start": f"{s.start:.3f}", "end": f"{s.end:.3f}", "text": s.text,
             "source": s.source, "status": s.status, "language": s.language,
             "avg_logprob": "" if s.avg_logprob is None else s.avg_logprob,
             "no_speech_prob": "" if s.no_speech_prob is None else s.no_speech_prob,
             "compression_ratio": "" if s.compression_ratio is None else s.compression_ratio} for s in segments]
    write_atomic(tsv_path, asr_mod.render(rows))
    write_atomic(written_path, json.dumps({s.utt: {"text": s.text, "source": s.source} for s in segments},
                                          sort_keys=True, indent=0).encode("utf-8"))
    return computed, reused, edited


def _asr_filter(s: Segment, o: RawOptions) -> str | None:
    if not s.text:
        return "empty ASR transcript"
    if s.no_speech_prob is not None and not s.no_speech_prob <= o.max_no_speech:
        return f"ASR: no speech (no_speech_prob {s.no_speech_prob:.2f} > {o.max_no_speech:g})"
    if s.avg_logprob is not None and not s.avg_logprob >= o.min_asr_logprob:  # NaN (a broken model) fails too
        return f"low ASR confidence: avg_logprob {s.avg_logprob:.2f} < {o.min_asr_logprob:g}"
    if s.compression_ratio is not None and not s.compression_ratio <= o.max_compression_ratio:
        return (f"low ASR confidence: compression ratio {s.compression_ratio:.1f} > {o.max_compression_ratio:g} "
                "(repeated text: Whisper looping)")
    return None
