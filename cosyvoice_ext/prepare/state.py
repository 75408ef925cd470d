"""What an interrupted `cosyext prepare` already finished, kept under DEST/.cosyext-prepare/.

Two records, both safe against a kill at any instant:
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
from typing import Any

STATE_DIR = ".cosyext-prepare"


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
                     embedding: list[float], tokens: list[int]) -> dict[str, Any]:
        rec = {"utt": utt, "file": key, "models": models, "seconds": seconds,
               "utt_embedding": embedding, "speech_token": tokens}
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
