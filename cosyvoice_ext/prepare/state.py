"""What an interrupted `cosyext prepare` already finished, kept under DEST/.cosyext-prepare/.

`run.json` says what the data is for: model family, instruct text, speech tokenizer. A resume
for another family, instruct or tokenizer is refused (the shards would mix two kinds of data);
a DEST from before run.json existed counts as CosyVoice2 (the only family then).

Two records of finished work, both safe against a kill at any instant:
- `features.jsonl`: one line per utterance whose features are computed, appended and flushed as
  each finishes; a torn last line is ignored. A line counts only while the audio file (size, mtime)
  and the feature models are the ones it was computed from.
- `shards.json` (replaced atomically): for each finished shard, a digest of what it was planned to
  hold and the sha256 of the bytes written. A shard is skipped only when both still match.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import UsageError

STATE_DIR = ".cosyext-prepare"
#: every file the state directory holds
RUN_FILES = ("run.json", "features.jsonl", "shards.json", "slices.jsonl", "asr.jsonl", "transcripts.json")
#: what a run records about itself; all but "models" must match for a resume
RUN_KEYS = ("family", "instruct", "speech_tokenizer")
LEGACY_RUN = {"family": "cosyvoice2", "instruct": None, "speech_tokenizer": ""}


def file_key(path: Path) -> list[int]:
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, fsync, rename: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class PrepareState:
    def __init__(self, dest: Path) -> None:
        self.dir = Path(dest) / STATE_DIR
        self.features_path = self.dir / "features.jsonl"
        self.shards_path = self.dir / "shards.json"
        self.run_path = self.dir / "run.json"
        self._features: dict[str, dict[str, Any]] = {}
        self._shards: dict[str, dict[str, str]] = {}
        self._fh = None

    @staticmethod
    def exists(dest: Path) -> bool:
        return (Path(dest) / STATE_DIR).is_dir()

    def load(self) -> None:
        if self.features_path.is_file():
            for line in self.features_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # torn write from an interrupted run
                if isinstance(rec, dict) and "utt" in rec:
                    self._features[rec["utt"]] = rec
        if self.shards_path.is_file():
            try:
                self._shards = json.loads(self.shards_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                self._shards = {}

    # the run ---------------------------------------------------------------------------------
    def earlier_run(self) -> dict[str, Any] | None:
        """What an earlier run in this DEST was for (None for a fresh DEST)."""
        if self.run_path.is_file():
            try:
                rec = json.loads(self.run_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                rec = None
            if isinstance(rec, dict):
                return rec
        return dict(LEGACY_RUN) if self.dir.is_dir() else None

    def check_run(self, run: dict[str, Any], *, resume_hint: Callable[[dict[str, Any]], str]) -> None:
        """Refuse data for another family/instruct/tokenizer than DEST holds; then record this run.

        A run without features ("" tokenizer) matches any tokenizer: its rows get recomputed anyway.
        """
        earlier = self.earlier_run()
        if earlier is not None:
            differ = [k for k in RUN_KEYS if earlier.get(k) != run.get(k)
                      and not (k == "speech_tokenizer" and "" in (earlier.get(k) or "", run.get(k) or ""))]
            if differ:
                raise UsageError(
                    f"{self.dir.parent} holds data prepared for {describe(earlier)}; this run is for {describe(run)}: "
                    "resuming would mix the two in one dataset",
                    hint=f"{resume_hint(earlier)}   (continues the earlier run), or prepare into a new DEST")
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_path, (json.dumps(run, indent=1, sort_keys=True) + "\n").encode("utf-8"))

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        torn = self.features_path.is_file() and self.features_path.stat().st_size > 0 and \
            not self.features_path.read_bytes().endswith(b"\n")
        self._fh = open(self.features_path, "a", encoding="utf-8")
        if torn:
            self._fh.write("\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    # features ---------------------------------------------------------------------------------
    def cached_features(self, utt: str, key: list[int], models: str) -> dict[str, Any] | None:
        rec = self._features.get(utt)
        if rec and rec.get("file") == key and rec.get("models") == models:
            return rec
        return None

    def add_features(self, utt: str, key: list[int], models: str, seconds: float,
                     embedding: list[float], tokens: list[int], **extra: Any) -> dict[str, Any]:
        """Record one utterance's features; `extra` (JSON values) travels with them (e.g. how to store its audio)."""
        rec = {"utt": utt, "file": key, "models": models, "seconds": seconds,
               "utt_embedding": embedding, "speech_token": tokens, **extra}
        assert self._fh is not None, "open() first"
        self._fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._features[utt] = rec
        return rec

    # shards -----------------------------------------------------------------------------------
    def shard_done(self, name: str, spec: str, path: Path) -> bool:
        rec = self._shards.get(name)
        return bool(rec and rec.get("spec") == spec and Path(path).is_file() and sha256_file(path) == rec.get("sha256"))

    def mark_shard(self, name: str, spec: str, path: Path) -> None:
        self._shards[name] = {"spec": spec, "sha256": sha256_file(path)}
        self._save_shards()

    def forget_shard(self, name: str) -> None:
        if self._shards.pop(name, None) is not None:
            self._save_shards()

    def shard_names(self) -> list[str]:
        return sorted(self._shards)

    def _save_shards(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.shards_path, json.dumps(self._shards, indent=1, sort_keys=True).encode("utf-8"))


def describe(run: dict[str, Any]) -> str:
    """`cosyvoice3 (speech_tokenizer_v3.onnx, instruct '...')` for messages."""
    details = [run.get("speech_tokenizer") or "no speech tokenizer"]
    if run.get("instruct") is not None:
        details.append(f"instruct {run['instruct']!r}")
    return f"{run.get('family')} ({', '.join(details)})"
