"""Where samples' results live: ``MODEL_DIR/samples/metrics.jsonl`` (one row per sampled checkpoint,
appended by rank 0, rewritten atomically) and, inside the training process, the metrics of each
checkpoint for the plugins that run after samples on the same checkpoint (early_stop).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import UsageError

DIR = "samples"
METRICS_FILE = "metrics.jsonl"

#: checkpoint name (`epoch_3_whole`) -> {"samples/sim_campplus": value, ...}, on every rank
_latest: dict[str, dict[str, float]] = {}
#: metric name -> higher_is_better, for the metrics this run records
_directions: dict[str, bool] = {}


def samples_dir(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir) / DIR


def metrics_path(model_dir: str | os.PathLike) -> Path:
    return samples_dir(model_dir) / METRICS_FILE


def reset(directions: dict[str, bool] | None = None) -> None:
    """A training process starts: forget earlier runs' results (tests run several in one interpreter)."""
    _latest.clear()
    _directions.clear()
    _directions.update(directions or {})


def record(checkpoint: str, metrics: dict[str, float]) -> None:
    _latest[checkpoint] = dict(metrics)


def value(checkpoint: str, metric: str) -> float | None:
    """The metric of a checkpoint sampled in this process; None when it was not sampled (`every: N`).
    NaN when it was sampled but the metric could not score any sentence."""
    row = _latest.get(checkpoint)
    if row is None:
        return None
    v = row.get(metric)
    return math.nan if v is None else float(v)


def higher_is_better(metric: str) -> bool | None:
    return _directions.get(metric)


def append_row(model_dir: str | os.PathLike, row: dict[str, Any]) -> Path:
    """Add one row to metrics.jsonl: the whole file is rewritten beside it and renamed over it, so a
    killed run never leaves half a line (a resumed run appends to what the first one wrote)."""
    path = metrics_path(model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    tmp = path.with_name(f".{METRICS_FILE}.tmp")
    tmp.write_text(old + json.dumps(row, sort_keys=True, allow_nan=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_rows(model_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row of a run's metrics.jsonl ([] when the run sampled nothing); a bad line is a UsageError."""
    path = metrics_path(model_dir)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{n} is not a JSON line ({exc.msg})",
                             hint=f"remove the line, or move {path} aside") from exc
        if not isinstance(row, dict) or not isinstance(row.get("checkpoint"), str):
            raise UsageError(f"{path}:{n} is not a samples row (no 'checkpoint')",
                             hint=f"remove the line, or move {path} aside")
        rows.append(row)
    return rows
