"""Regenerate vendor.lock from a pristine upstream tree and patches/ (`cosyext lock`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .errors import VerificationError
from .lockfile import FileHash, Lock
from .patching import Patch, read_files, stage_series, touched_files
from .sources import verify_locked_files


def regenerate(base: Lock, pristine_root: Path, patches: list[Patch], files: dict[str, FileHash] | None = None) -> Lock:
    """A lock with `base`'s pins, `files` (default: base's), and the series' hashes and results.

    `pristine_root` must match every locked file: the patched hashes are computed from it.
    """
    lock = replace(base, files=files or base.files, patches=[], patched={})
    verify_locked_files(pristine_root, lock)
    names = touched_files(patches)
    missing = [f for f in names if f not in lock.files]
    if missing:
        raise VerificationError(f"patches touch files that are not locked: {', '.join(missing)}",
                                hint="add them to the pin table and run 'cosyext lock --pin-table TSV'")
    staged = stage_series(read_files(pristine_root, names), patches, pristine_root)
    lock.patches = [{"name": p.name, "sha256": p.sha256} for p in patches]
    lock.patched = {f: FileHash.of(data) for f, data in staged.items()}
    return lock
