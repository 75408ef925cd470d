"""Which checkpoints an export merges: one ``--checkpoint``, or epochs of a ``--run`` directory
(the one ``best.yaml`` names, the latest, or the N best by CV loss as upstream's ``average_model.py``).

``best.yaml`` (early stopping) names the best checkpoint by the metric early stopping watched: a CV
loss, or a sample metric recorded during training (``samples/sim_campplus``, docs/samples.md); it
records which, and export says so.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from ...early_stop import BEST_FILE, read_best
from ...errors import UsageError

_EPOCH = re.compile(r"^epoch_(\d+)_whole(\.pt)?$")
DEEPSPEED_STATES = "mp_rank_00_model_states.pt"  # what DeepSpeed's save_checkpoint writes per tag

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Candidate:
    """One epoch checkpoint of a run, with its CV loss when the run recorded one."""

    epoch: int
    path: Path
    cv_loss: float | None


def select(run_dir: str | os.PathLike | None, checkpoint: str | os.PathLike | None, average_n: int, val_best: bool,
           progress: Progress) -> list[Candidate]:
    """The checkpoints to merge, from exactly one of ``checkpoint`` and ``run_dir``."""
    if (checkpoint is None) == (run_dir is None):
        raise UsageError("give exactly one of --checkpoint FILE or --run DIR")
    if checkpoint is not None:
        if average_n != 1 or val_best:
            raise UsageError("--average/--val-best choose among a run's epochs: use them with --run DIR")
        path = Path(checkpoint)
        return [Candidate(-1, path / DEEPSPEED_STATES if path.is_dir() else path, None)]
    chosen = best_pointer(run_dir) if average_n == 1 and not val_best else None
    if chosen:
        progress(f"using {chosen[0].path.name}, the best checkpoint by {best_metric(run_dir)} recorded by early "
                 f"stopping in {Path(run_dir) / BEST_FILE}")
        return chosen
    return choose(run_candidates(run_dir), average_n, val_best)


def run_candidates(run_dir: str | os.PathLike) -> list[Candidate]:
    """Epoch checkpoints of a run with the CV loss from ``epoch_N_whole.yaml``.

    torch DDP runs write ``epoch_N_whole.pt``; DeepSpeed runs a directory ``epoch_N_whole/``.
    """
    run = Path(run_dir)
    if not run.is_dir():
        why = "is not a directory" if run.exists() else "does not exist"
        raise UsageError(f"run directory {run} {why}", hint="pass the --model_dir you trained with")
    out = []
    for p in sorted(run.iterdir()):
        m = _EPOCH.match(p.name)
        if not m or (p.is_dir() and not (p / DEEPSPEED_STATES).is_file()):
            continue
        path = p / DEEPSPEED_STATES if p.is_dir() else p
        out.append(Candidate(int(m.group(1)), path, cv_loss(run / f"epoch_{m.group(1)}_whole.yaml")))
    if not out:
        raise UsageError(f"no epoch_*_whole.pt checkpoints in {run}", hint="train at least one epoch, or pass --checkpoint")
    return sorted(out, key=lambda c: c.epoch)


def choose(candidates: list[Candidate], average: int, val_best: bool) -> list[Candidate]:
    """The N best by CV loss (``val_best``), else the N latest epochs."""
    if average < 1:
        raise UsageError(f"--average must be >= 1, got {average}")
    if average > len(candidates):
        raise UsageError(f"--average {average} but the run has only {len(candidates)} epoch checkpoint(s)")
    if not val_best:
        return candidates[-average:]
    missing = [f"epoch_{c.epoch}_whole.yaml" for c in candidates if c.cv_loss is None]
    if missing:
        raise UsageError(f"--val-best needs the CV loss of every epoch; none in {', '.join(missing)}",
                         hint="drop --val-best to average the latest epochs")
    return sorted(candidates, key=lambda c: (c.cv_loss, c.epoch))[:average]


def best_pointer(run_dir: str | os.PathLike) -> list[Candidate] | None:
    """The checkpoint `best.yaml` names (written by the early-stop plugin), if it exists."""
    best = read_best(run_dir)
    if best is None:
        return None
    path = Path(run_dir) / best["checkpoint"]
    if path.is_dir():
        path = path / DEEPSPEED_STATES
    if not path.is_file():
        raise UsageError(f"{Path(run_dir) / BEST_FILE} points at {path}, which does not exist",
                         hint="pass --checkpoint FILE, or --average 1 --val-best to choose by CV loss")
    return [Candidate(best.get("epoch", -1), path, best.get("value"))]


def best_metric(run_dir: str | os.PathLike) -> str:
    """What best.yaml chose by: 'CV loss 1.23', or a sample metric ('samples/sim_campplus 0.61, higher is better')."""
    best = read_best(run_dir) or {}
    metric = str(best.get("metric", "loss"))
    value = best.get("value")
    shown = f" {value:.6g}" if isinstance(value, float) else ""
    if metric.startswith("samples/"):
        direction = "higher" if best.get("higher_is_better") else "lower"
        return f"{metric}{shown}, {direction} is better"
    return f"CV {metric}{shown}"


def cv_loss(yaml_path: Path) -> float | None:
    """``loss_dict.loss`` from upstream's info yaml, read as plain data (no python tags constructed)."""
    if not yaml_path.is_file():
        return None
    try:
        info = yaml.load(yaml_path.read_text(encoding="utf-8"), Loader=_PlainLoader)
        return float(info["loss_dict"]["loss"])
    except (yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        return None


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader that reads unknown tags (``!!python/tuple`` ...) as plain data instead of failing."""


def _plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_PlainLoader.add_multi_constructor("", _plain)
