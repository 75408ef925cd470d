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
import pickletools
import re
import tempfile
import zipfile
import zlib
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
            if mmap and "mmap" in str(exc) and not _is_zip(path):  # legacy (non-zip) files cannot be mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            else:
                raise
    except pickle.UnpicklingError as exc:
        wanted = refused_global(exc)
        if wanted is None or _legacy_truncated(path):  # a cut-off legacy file can end in half a global's name
            raise _unreadable(path, exc) from exc
        raise CheckpointError(
            f"refusing to load {path}: it carries a pickle payload beyond plain tensors/numbers/strings "
            f"that calls the global {wanted} (loading it would run code from the file)",
            hint="re-save it as a plain state dict (torch.save(model.state_dict(), path)) where it came from, "
            "if you trust its source",
        ) from exc
    except Exception as exc:
        raise _unreadable(path, exc) from exc
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


def verify(path: str | os.PathLike) -> None:
    """Check every member of a zip checkpoint against its CRC; CheckpointError naming a damaged one.

    torch reads tensor storage without checking it, so a flipped byte becomes a wrong weight. Legacy
    (pre-zip) files carry no checksums and pass.
    """
    path = Path(path)
    if not _is_zip(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise _unreadable(path, exc) from exc
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: its member {bad} fails its CRC check",
                              hint="use another copy of the file (or the previous epoch's checkpoint)")


def nonfinite(state: Mapping[str, Any]) -> tuple[str, int, int, int] | None:
    """(key, NaN count, Inf count, size) of the first floating tensor holding NaN or Inf, else None."""
    import torch

    for key, value in state.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            if not bool(torch.isfinite(value).all()):
                return key, int(torch.isnan(value).sum()), int(torch.isinf(value).sum()), value.numel()
    return None


def refused_global(exc: BaseException) -> str | None:
    """The global a weights-only load refused (``posix.system``, ``numpy._core.multiarray._reconstruct``).

    torch words it two ways: "Unsupported global: GLOBAL x.y was not an allowed global" and "Trying to
    load unsupported GLOBAL x.y whose module x is blocked".
    """
    found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
    return found.group(1) if found else None


def _is_zip(path: Path) -> bool:
    """Whether the file starts like torch's zip format (a local file header)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _legacy_truncated(path: Path) -> bool:
    """Whether a legacy (pre-zip) checkpoint ends inside one of its five leading pickles.

    Parsed with pickletools (opcodes only, nothing constructed): magic number, protocol, system info,
    the object and the storage keys, then raw storage bytes (torch says "unexpected EOF" for those).
    """
    if _is_zip(path):
        return False
    size = path.stat().st_size
    with open(path, "rb") as f:
        for _ in range(5):
            try:
                for _op in pickletools.genops(f):
                    pass
            except ValueError:  # ran off the end ("not enough data in stream"), or an unknown opcode (junk)
                return f.tell() >= size
    return False


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    """The error for a file torch cannot parse: truncated when its end is missing, else corrupt."""
    size = path.stat().st_size if path.exists() else 0
    if _is_zip(path):
        truncated = not zipfile.is_zipfile(path)  # a zip's directory is its last record
    else:
        truncated = isinstance(exc, EOFError) or "unexpected EOF" in str(exc) or _legacy_truncated(path)
    if truncated:
        return CheckpointError(
            f"checkpoint {path} is truncated ({size} bytes; its end is missing)",
            hint="an interrupted save or copy: copy it again, or use the previous epoch's checkpoint")
    return CheckpointError(f"cannot read checkpoint {path}: not a valid torch checkpoint ({_first_line(exc)})",
                           hint="pass a file written by torch.save (train.py's epoch_N_whole.pt or a pretrained "
                           f"llm.pt/flow.pt); {size} bytes here")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
