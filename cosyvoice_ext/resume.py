"""Exact resume: the training state an adapter checkpoint carries besides the weights.

A run stopped after epoch k and resumed from ``epoch_k_whole.pt`` must continue exactly as if it had
never stopped. Weights alone are not enough: Adam's moments, the scheduler, AMP's grad scaler and
every random generator the run draws from (torch, CUDA, numpy, python ``random``: LoRA dropout,
flow-matching noise, upstream's sample shuffle) are part of the state. The LoRA plugin stores
:func:`capture` under ``"resume"`` in each adapter checkpoint (the optimizer holds the trainable
parameters only, so this stays small) and hands it back with :func:`expect` when it resumes.

What upstream allows, at both supported commits (read from ``cosyvoice/bin/train.py``,
``utils/executor.py`` and ``dataset/dataset.py``): train.py resumes at *epoch* granularity. It takes
``epoch`` and ``step`` from the checkpoint, restarts its loop at ``epoch + 1``, sets the scheduler's
step and the executor's step counter; the data order of an epoch depends only on the epoch number
(``random.Random(epoch)`` orders the shards) and on python's global ``random`` (the sample shuffle
buffer), which is restored here. The ``Dataset`` is an ``IterableDataset`` without a position to seek
to and the loop's start is train.py's own, so a position *within* an epoch cannot be resumed without
changing train.py: a mid-epoch checkpoint (``save_per_step``) records its position
(epoch, step, batch) and resuming from it starts the next epoch, as upstream does, with a warning.

The hook points (patch 0006, all in ``train_utils``): :func:`attach` after the optimizer and
scheduler exist, :func:`attach_scaler` where ``batch_backward`` sees the scaler, :func:`gather_rng`
at the start of ``save_model`` on every rank, :func:`restore_rng` after the ``init`` checkpoint, the
last thing train.py does before its epoch loop. torch_ddp only: DeepSpeed keeps its own optimizer.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .errors import CheckpointError

log = logging.getLogger("cosyvoice_ext.resume")

STATE_KEY = "resume"
VERSION = 1
_HINT = "resume with the train_conf the checkpoint was trained with, or start again from the base checkpoint"


@dataclass
class _Run:
    """What the hook points saw in this training process."""

    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    rng: list = field(default_factory=list)  # every rank's RNG states, gathered at the last save
    saving: str = ""  # the checkpoint being saved (upstream's model_name)
    # what is still to restore from the checkpoint we resume from, each part consumed once
    pending: dict | None = None  # optimizer and scheduler
    pending_scaler: dict | None = None
    pending_rng: list | None = None
    source: str = ""


_run = _Run()


def reset() -> None:
    """Forget everything (tests; a new training process starts with nothing)."""
    global _run
    _run = _Run()


# --- saving ---------------------------------------------------------------------------------------

def attach(optimizer: Any, scheduler: Any) -> None:
    """The optimizer and scheduler of this run (train_utils.init_optimizer_and_scheduler); restores
    theirs when resuming."""
    _run.optimizer, _run.scheduler = optimizer, scheduler
    if _run.pending is not None:
        pending, _run.pending = _run.pending, None
        _restore_optimizer_and_scheduler(pending)


def attach_scaler(scaler: Any) -> None:
    """AMP's GradScaler (train_utils.batch_backward, every step): the first sighting restores its state
    before it scales anything."""
    if scaler is None or scaler is _run.scaler:
        return
    _run.scaler = scaler
    saved, _run.pending_scaler = _run.pending_scaler, None
    if saved and _enabled(scaler):
        scaler.load_state_dict(saved)
        log.info("cosyext resume: grad scaler restored (scale %g)", float(saved.get("scale", float("nan"))))


def gather_rng(model_name: str) -> None:
    """Collect every rank's RNG states before rank 0 writes ``model_name`` (a collective: all ranks call it)."""
    import torch.distributed as dist

    mine = rng_state()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        states: list = [None] * dist.get_world_size()
        dist.all_gather_object(states, mine)
    else:
        states = [mine]
    _run.rng, _run.saving = states, model_name


def capture(info_dict: Mapping[str, Any]) -> dict:
    """The resume state for the checkpoint being saved (rank 0): plain tensors, numbers and containers,
    so ``torch.load(weights_only=True)`` reads it."""
    opt, sched, scaler = _run.optimizer, _run.scheduler, _run.scaler
    return {
        "version": VERSION,
        "optimizer": None if opt is None else opt.state_dict(),
        "optimizer_class": None if opt is None else type(opt).__name__,
        "scheduler": None if sched is None or not hasattr(sched, "state_dict") else _plain_scheduler(sched),
        "scheduler_class": None if sched is None else type(sched).__name__,
        "grad_scaler": scaler.state_dict() if scaler is not None and _enabled(scaler) else None,
        "rng": list(_run.rng) or [rng_state()],
        "world_size": max(len(_run.rng), 1),
        "position": {"checkpoint": _run.saving, "epoch": int(info_dict.get("epoch", -1)),
                     "step": int(info_dict.get("step", 0)), "batch_idx": info_dict.get("batch_idx"),
                     "end_of_epoch": _run.saving.endswith("_whole") or _run.saving == "init"},
    }


# --- resuming -------------------------------------------------------------------------------------

def expect(state: Any, source: str) -> None:
    """The checkpoint we resume from carries ``state``: restore it at the hook points that follow."""
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise CheckpointError(f"{source}: its resume state is not version {VERSION} of cosyext's format",
                              hint="resume from a checkpoint written by this cosyvoice-ext, or start from the base")
    state = _clone(state)
    _run.pending, _run.pending_scaler, _run.pending_rng = state, state.get("grad_scaler"), state.get("rng") or []
    _run.source = source
    pos = state.get("position") or {}
    if not pos.get("end_of_epoch", True):
        log.warning("cosyext resume: %s was saved within epoch %s (step %s, batch %s); upstream's train.py resumes "
                    "at the next epoch, so the rest of epoch %s is not trained", source, pos.get("epoch"),
                    pos.get("step"), pos.get("batch_idx"), pos.get("epoch"))


def restore_rng() -> None:
    """Put back this rank's RNG states, right before train.py's epoch loop (after the ``init`` save)."""
    states, _run.pending_rng = _run.pending_rng, None
    if states is None:
        return
    rank, world = _rank(), _world_size()
    if len(states) != world:
        log.warning("cosyext resume: %s was saved with %d rank(s), this run has %d: the data split differs, so "
                    "the run cannot continue exactly; RNG states are restored for the ranks both have",
                    _run.source, len(states), world)
    if rank < len(states):
        set_rng_state(states[rank])
        log.info("cosyext resume: RNG states (torch, numpy, python%s) of rank %d restored from %s",
                 ", cuda" if states[rank].get("cuda") is not None else "", rank, _run.source)


def rng_state() -> dict:
    """This process's random generators as plain tensors and numbers."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                                        "gauss": gauss},
                             "torch": torch.get_rng_state(), "numpy": None, "cuda": None}
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch's training stack
        np = None
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("numpy") is not None:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _restore_optimizer_and_scheduler(pending: Mapping[str, Any]) -> None:
    opt, sched, source = _run.optimizer, _run.scheduler, _run.source
    saved_opt = pending.get("optimizer")
    if opt is not None and saved_opt is not None:
        if pending.get("optimizer_class") != type(opt).__name__:
            raise CheckpointError(f"{source} was trained with the optimizer {pending.get('optimizer_class')}, "
                                  f"this run builds {type(opt).__name__}", hint=_HINT)
        _check_optimizer_shapes(opt, saved_opt, source)
        try:
            opt.load_state_dict(saved_opt)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{source}: the optimizer state does not fit this run's optimizer ({exc})",
                                  hint=_HINT) from exc
    saved_sched = pending.get("scheduler")
    if sched is not None and saved_sched is not None:
        if pending.get("scheduler_class") != type(sched).__name__:
            raise CheckpointError(f"{source} was trained with the scheduler {pending.get('scheduler_class')}, "
                                  f"this run builds {type(sched).__name__}", hint=_HINT)
        sched.load_state_dict(saved_sched)
    n = sum(len(s) for s in (saved_opt or {}).get("state", {}).values())
    log.info("cosyext resume: optimizer %s (%d state tensors) and scheduler %s (step %s) restored from %s",
             pending.get("optimizer_class"), n, pending.get("scheduler_class"),
             (saved_sched or {}).get("last_epoch"), source)


def _check_optimizer_shapes(opt: Any, saved: Mapping[str, Any], source: str) -> None:
    """Name the first parameter whose saved moments have another shape (load_state_dict would not)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    saved_count = sum(len(g.get("params", [])) for g in saved.get("param_groups", []))
    if saved_count != len(params):
        raise CheckpointError(f"{source}: its optimizer state is for {saved_count} parameter tensors, this run "
                              f"trains {len(params)}", hint=_HINT)
    for index, entry in (saved.get("state") or {}).items():
        param = params[int(index)] if int(index) < len(params) else None
        for name, value in entry.items():
            if param is not None and isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise CheckpointError(f"{source}: optimizer state {name} of parameter #{index} has shape "
                                      f"{tuple(value.shape)}, the parameter {tuple(param.shape)}", hint=_HINT)


def _plain_scheduler(sched: Any) -> dict:
    """The scheduler's state dict minus anything a weights-only load would refuse (callables, objects)."""
    return {k: v for k, v in sched.state_dict().items() if _is_plain(v)}


def _is_plain(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_is_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, (str, int)) and _is_plain(x) for k, x in v.items())
    return False


def _clone(v: Any) -> Any:
    """A private copy (the checkpoint is memory-mapped; the optimizer updates its moments in place)."""
    if isinstance(v, torch.Tensor):
        return v.clone()
    if isinstance(v, dict):
        return {k: _clone(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clone(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_clone(x) for x in v)
    return v


def _enabled(scaler: Any) -> bool:
    return bool(getattr(scaler, "is_enabled", lambda: True)())


def _rank() -> int:
    return int(os.environ.get("RANK", 0))


def _world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))
