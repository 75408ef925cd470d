"""Upstream's on-disk training format, as tools/make_parquet_list.py lays it out: per shard a parquet
file plus `utt2parquet_N.json` / `spk2parquet_N.json`, and per set `data.list`, `utt2data.list`,
`spk2data.list` listing them. We name shards `.parquet` (upstream uses `.tar` for the same bytes).

Every file is written under a temporary name and renamed into place, so a kill leaves either the
old file or the new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .state import write_atomic

COLUMNS = ("utt", "wav", "audio_data", "text", "spk", "utt_embedding", "spk_embedding", "speech_token")
#: CosyVoice3 data (upstream ace7c47) also carries the instruct text every sample is conditioned on
INSTRUCT = "instruct"


def schema(instruct: bool = False):
    """Upstream's parquet columns; `instruct` adds CosyVoice3's `instruct` string column at the end."""
    import pyarrow as pa

    fields = [
        ("utt", pa.string()),
        ("wav", pa.string()),
        ("audio_data", pa.binary()),
        ("text", pa.string()),
        ("spk", pa.string()),
        ("utt_embedding", pa.list_(pa.float32())),
        ("spk_embedding", pa.list_(pa.float32())),
        ("speech_token", pa.list_(pa.int64())),
    ]
    if instruct:
        fields.append((INSTRUCT, pa.string()))
    return pa.schema(fields)


def shard_paths(parquet_dir: Path, index: int) -> tuple[Path, Path, Path]:
    """(parquet, utt2parquet json, spk2parquet json) for shard `index`."""
    return (parquet_dir / f"parquet_{index:09d}.parquet",
            parquet_dir / f"utt2parquet_{index:09d}.json",
            parquet_dir / f"spk2parquet_{index:09d}.json")


def write_shard(rows: list[dict[str, Any]], parquet_dir: Path, index: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet_dir.mkdir(parents=True, exist_ok=True)
    parquet, utt_json, spk_json = shard_paths(parquet_dir, index)
    table = pa.Table.from_pylist(rows, schema=schema(instruct=bool(rows) and INSTRUCT in rows[0]))
    tmp = parquet.with_name(f".{parquet.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    spks = sorted({r["spk"] for r in rows})
    write_atomic(utt_json, _json({r["utt"]: str(parquet) for r in rows}))
    write_atomic(spk_json, _json({s: str(parquet) for s in spks}))
    os.replace(tmp, parquet)
    return parquet


def _json(obj: dict[str, str]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, indent=2).encode("utf-8")


def write_lists(set_dir: Path, n_shards: int) -> Path:
    """data.list, utt2data.list, spk2data.list (absolute paths, one per line); returns data.list."""
    parquet_dir = set_dir / "parquet"
    set_dir.mkdir(parents=True, exist_ok=True)
    paths = [shard_paths(parquet_dir, i) for i in range(n_shards)]
    for name, col in (("data.list", 0), ("utt2data.list", 1), ("spk2data.list", 2)):
        write_atomic(set_dir / name, "".join(f"{p[col]}\n" for p in paths).encode("utf-8"))
    return set_dir / "data.list"


def remove_stale(parquet_dir: Path, keep: int) -> list[Path]:
    """Delete shards numbered `keep` and above (left by an earlier run that planned more)."""
    removed = []
    if not parquet_dir.is_dir():
        return removed
    for p in sorted(parquet_dir.iterdir()):
        stem = p.name.split(".")[0] if not p.name.startswith(".") else p.name.lstrip(".").split(".")[0]
        num = stem.rsplit("_", 1)[-1]
        if stem.startswith(("parquet_", "utt2parquet_", "spk2parquet_")) and num.isdigit() and \
                (int(num) >= keep or p.name.startswith(".")):
            p.unlink()
            removed.append(p)
    return removed
