"""Reading and writing checkpoints without trusting them.

Every checkpoint we read goes through :func:`load` (``torch.load(weights_only=True)``): a file that
carries a pickle payload (anything beyond tensors, numbers, strings and containers) is refused with
a :class:`CheckpointError` instead of executing it. Adapter checkpoints written by the LoRA plugin
are told apart from full (stock) state dicts by their ``cosyext`` metadata entry.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Mapping

from .errors import CheckpointError

META_KEY = "cosyext"
ADAPTER_FORMAT = "adapter"
COUNTER_KEYS = ("epoch", "step")


def load(path: str | os.PathLike, *, mmap: bool = False) -> dict:
    """The checkpoint's top-level dict, loaded on CPU with ``weights_only=True``.

    ``mmap=True`` maps the tensors from the file instead of reading them into memory (the base
    checkpoint of a 0.5B model is re-read next to the model that already holds it).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist", hint="check the path given to --checkpoint/--base")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): an interrupted save",
            hint="use the previous epoch's checkpoint",
        )
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if mmap and "mmap" in str(exc):  # legacy (non-zip) files cannot be mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            else:
                raise
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if "global" not in reason.lower():
            raise CheckpointError(f"cannot read checkpoint {path}: not a valid torch checkpoint ({reason})") from exc
        raise CheckpointError(
            f"refusing to load {path}: it carries a pickle payload beyond plain tensors/numbers/strings "
            f"(loading it would run code from the file): {reason}",
            hint="re-save it as a plain state dict (torch.save(model.state_dict(), path)) where it came from, "
            "if you trust its source",
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(exc)}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, not a state dict",
            hint="save checkpoints with torch.save(model.state_dict(), path)",
        )
    return state


def is_adapter(state: Mapping[str, Any]) -> bool:
    """Whether a loaded checkpoint is one of our adapter checkpoints (vs a full state dict)."""
    meta = state.get(META_KEY)
    return isinstance(meta, dict) and meta.get("format") == ADAPTER_FORMAT


def family_of_state(state: Mapping[str, Any], model: str) -> str | None:
    """Which family's ``llm.pt``/``flow.pt`` a state dict looks like, by keys only one family has (else None).

    CosyVoice2's LLM has ``llm_embedding`` and a biased ``llm_decoder``, CosyVoice3's neither; CosyVoice2's
    flow has a conformer ``encoder``, CosyVoice3's a DiT estimator with ``transformer_blocks``. Used to
    say *why* a base checkpoint does not fit (a CosyVoice2 llm.pt for a CosyVoice3 config).
    """
    keys = set(state)
    if model == "llm":
        if "llm_embedding.weight" in keys:
            return "cosyvoice2"
        if "llm_decoder.weight" in keys and "llm_decoder.bias" not in keys:
            return "cosyvoice3"
    elif model == "flow":
        if any(k.startswith("decoder.estimator.transformer_blocks.") for k in keys):
            return "cosyvoice3"
        if any(k.startswith("encoder.") for k in keys):
            return "cosyvoice2"
    return None


def tensors(state: Mapping[str, Any]) -> dict:
    """Only the tensor entries of a full checkpoint (drops upstream's epoch/step counters)."""
    import torch

    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, hex; recorded in adapter metadata to pin the base checkpoint."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same directory, then rename: never a half-written file."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _unpickler_reason(exc: BaseException) -> str:
    """torch's useful line ("Unsupported global: GLOBAL os.system ...") out of its long message."""
    for line in str(exc).splitlines():
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            if rest:
                return rest.split(". Please use")[0]
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    idx = next((i for i, ln in enumerate(lines) if "WeightsUnpickler error" in ln), None)
    if idx is not None and idx + 1 < len(lines):
        return lines[idx + 1]
    return lines[0] if lines else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
