"""Per-utterance lengths of upstream parquet shards, without decoding audio.

Audio length comes from the WAV header inside ``audio_data`` (RIFF ``fmt `` + ``data`` chunk size),
speech-token counts from the list column's offsets, transcripts from ``text``; also which features
the rows carry (speech tokens, speaker embeddings, CosyVoice3's ``instruct``). A sidecar index per
shard (JSON under the cosyext cache, keyed by path, size and mtime) makes repeat lint runs skip
parquet entirely; text-token counts are cached per tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INDEX_VERSION = 2
EXAMPLES = 3  # utterance ids kept per shard to name in messages


class LengthError(Exception):
    """A shard or an audio blob we cannot measure from headers."""


@dataclass
class ShardIndex:
    path: str
    utt: list[str]
    n_samples: list[int]
    sample_rate: list[int]
    speech_token_len: list[int]
    reject_len: list[int] | None  # None: no reject_speech_token column
    text: list[str]
    text_tokens: dict[str, list[int]]  # tokenizer id -> counts
    token_column: bool = True  # False: no speech_token column (speech_token_len all 0)
    embedding_columns: bool = True  # utt_embedding and spk_embedding both exist
    embedding_missing: int = 0  # rows without non-empty utt/spk embeddings (all rows without the columns)
    embedding_zero: int = 0  # rows whose utt_embedding is all zeros (`cosyext prepare --no-features`)
    instruct_column: bool = False
    instruct_missing: int = 0  # rows whose instruct is null or '' (all rows without the column)
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few utt ids per problem, for messages

    def to_json(self) -> dict[str, Any]:
        return {"version": INDEX_VERSION, **self.__dict__}


def wav_frames(blob: bytes | memoryview) -> tuple[int, int]:
    """(frames per channel, sample rate) from a RIFF/WAVE header."""
    b = bytes(blob[:12])
    if len(b) < 12 or b[:4] not in (b"RIFF", b"RIFX") or b[8:12] != b"WAVE":
        raise LengthError("audio_data is not a WAV file (only WAV headers can be read without decoding)")
    endian = "<" if b[:4] == b"RIFF" else ">"
    pos, total = 12, len(blob)
    rate = align = None
    while pos + 8 <= total:
        cid = bytes(blob[pos:pos + 4])
        size = struct.unpack(endian + "I", bytes(blob[pos + 4:pos + 8]))[0]
        if cid == b"fmt ":
            if size < 16 or pos + 24 > total:
                raise LengthError("truncated WAV fmt chunk")
            _fmt, _ch, rate, _byte_rate, align = struct.unpack(endian + "HHIIH", bytes(blob[pos + 8:pos + 22]))
        elif cid == b"data":
            if not rate or not align:
                raise LengthError("WAV data chunk before its fmt chunk")
            avail = total - (pos + 8)
            size = avail if size in (0, 0xFFFFFFFF) else min(size, avail)
            return size // align, rate
        pos += 8 + size + (size & 1)
    raise LengthError("WAV file has no data chunk")


def _cache_dir() -> Path:
    base = os.environ.get("COSYEXT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cosyext")
    return Path(base) / "lint-index"


def _cache_key(path: Path) -> str:
    st = path.stat()
    raw = f"{INDEX_VERSION}\0{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _read_parquet(path: Path) -> ShardIndex:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path, memory_map=True)
    names = set(pf.schema_arrow.names)
    need = {"utt", "text", "audio_data"}
    if not need <= names:
        raise LengthError(f"{path} lacks column(s) {', '.join(sorted(need - names))} that upstream's pipeline reads")
    optional = ("speech_token", "reject_speech_token", "utt_embedding", "spk_embedding", "instruct")
    _check_list_columns(path, pf.schema_arrow, ("speech_token", "reject_speech_token", "utt_embedding", "spk_embedding"))
    cols = ["utt", "text", "audio_data", *(c for c in optional if c in names)]
    table = pf.read(columns=cols)
    utt = [str(u) for u in table.column("utt").to_pylist()]
    text = [str(t) for t in table.column("text").to_pylist()]

    def list_lengths(name: str) -> list[int]:
        if name not in names:
            return [0] * len(utt)
        return [int(x) if x is not None else 0 for x in pc.list_value_length(table.column(name)).to_pylist()]

    emb_cols = "utt_embedding" in names and "spk_embedding" in names
    emb_ok = [a > 0 and b > 0 for a, b in zip(list_lengths("utt_embedding"), list_lengths("spk_embedding"))]
    zero = _zero_rows(table.column("utt_embedding")) if emb_cols else [False] * len(utt)
    instruct = table.column("instruct").to_pylist() if "instruct" in names else [None] * len(utt)
    no_emb = [u for u, ok in zip(utt, emb_ok) if not ok]  # no columns: every row
    no_instruct = [u for u, i in zip(utt, instruct) if not isinstance(i, str) or not i]

    n_samples, rates = [], []
    for chunk in table.column("audio_data").chunks:
        chunk = chunk.cast(pa.large_binary()) if not pa.types.is_large_binary(chunk.type) else chunk
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)[chunk.offset:chunk.offset + len(chunk) + 1]
        data = memoryview(chunk.buffers()[2]) if chunk.buffers()[2] is not None else memoryview(b"")
        for i in range(len(chunk)):
            frames, rate = wav_frames(data[offsets[i]:offsets[i + 1]])
            n_samples.append(frames)
            rates.append(rate)
    return ShardIndex(str(path), utt, n_samples, rates, list_lengths("speech_token"),
                      list_lengths("reject_speech_token") if "reject_speech_token" in names else None, text, {},
                      token_column="speech_token" in names, embedding_columns=emb_cols,
                      embedding_missing=len(no_emb), embedding_zero=sum(z and ok for z, ok in zip(zero, emb_ok)),
                      instruct_column="instruct" in names,
                      instruct_missing=len(no_instruct), examples={"embedding": no_emb[:EXAMPLES],
                                                                   "instruct": no_instruct[:EXAMPLES]})


def _check_list_columns(path: Path, schema, columns: tuple[str, ...]) -> None:
    """Columns upstream turns into tensors must be lists: a string (e.g. tokens saved as text) makes
    upstream's pipeline fail or measure characters, so the data file itself is unusable."""
    import pyarrow as pa

    from ..errors import UsageError

    for name in columns:
        if name in schema.names:
            kind = schema.field(name).type
            if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
                raise UsageError(f"{path}: column {name} is stored as {kind}, but upstream's pipeline reads it as a "
                                 "list of numbers (e.g. list<int64> speech tokens)",
                                 hint="re-create the data with 'cosyext prepare' (or store the column as a list)")


def _zero_rows(column) -> list[bool]:
    """Per row of a list<float> column: are all values 0 (an empty or null list counts as not zero)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    out: list[bool] = []
    for chunk in column.chunks:
        chunk = chunk.cast(pa.large_list(pa.float64()))
        values = np.asarray(pc.list_flatten(chunk).to_numpy(zero_copy_only=False), dtype=np.float64)
        lengths = np.asarray(pc.list_value_length(chunk).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        nonzero = np.concatenate([[0], np.cumsum(values != 0)])  # exact counts, no float round-off
        ends = np.cumsum(lengths)
        out += [bool(n > 0 and nonzero[e] == nonzero[e - n]) for n, e in zip(lengths, ends)]
    return out


def load_shard(path: Path, use_cache: bool = True) -> ShardIndex:
    path = Path(path)
    cache = _cache_dir() / f"{_cache_key(path)}.json"
    if use_cache and cache.is_file():
        try:
            d = json.loads(cache.read_text(encoding="utf-8"))
            if d.pop("version", None) == INDEX_VERSION:
                return ShardIndex(**d)
        except (OSError, ValueError, TypeError):
            pass
    idx = _read_parquet(path)
    if use_cache:
        save_shard(idx)
    return idx


def save_shard(idx: ShardIndex) -> None:
    """Best effort: a read-only cache must not break lint."""
    try:
        cache = _cache_dir() / f"{_cache_key(Path(idx.path))}.json"
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(idx.to_json()), encoding="utf-8")
        os.replace(tmp, cache)
    except OSError:
        pass


def read_data_list(path: Path) -> list[str]:
    """Shard paths exactly as upstream's read_lists sees them: every line, stripped (blank lines too:
    they take part in the shard shuffle and yield nothing)."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f]
