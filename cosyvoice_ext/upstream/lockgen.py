"""Recompute a supported commit's lock entry from a pristine upstream tree and its patch series
(`cosyext lock`, and the last step of `cosyext rebase`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import VerificationError
from .lockfile import Commit, FileHash
from .patching import Patch, read_files, stage_series, touched_files
from .sources import verify_locked_files


def regenerate(base: Commit, pristine_root: Path, patches: list[Patch],
               files: dict[str, FileHash] | None = None) -> Commit:
    """`base` with `files` (default: base's) and the series' hashes and patched results.

    `pristine_root` must match every locked file: the patched hashes are computed from it.
    """
    commit = replace(base, files=dict(files or base.files), series=[], patched={})
    verify_locked_files(pristine_root, commit)
    names = touched_files(patches)
    missing = [f for f in names if f not in commit.files]
    if missing:
        raise VerificationError(f"patches for {commit.label} touch files that are not locked: {', '.join(missing)}",
                                hint="lock those files too (cosyext lock --pin-table TSV for the first commit)")
    staged = stage_series(read_files(pristine_root, names), patches, pristine_root)
    commit.series = [{"name": p.name, "sha256": p.sha256} for p in patches]
    commit.patched = {f: FileHash.of(data) for f, data in staged.items()}
    return commit
