"""Classify an upstream tree file by file against vendor.lock: pristine, patched (by this or an
older patch series), drifted, missing."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from . import pin
from .applied import Record
from .lockfile import Lock


class State(str, Enum):
    PRISTINE = "pristine"
    PATCHED = "patched"
    PATCHED_OLDER = "patched-older"
    DRIFTED = "drifted"
    MISSING = "missing"


@dataclass(frozen=True)
class FileState:
    path: str
    state: State


def classify(root: Path, lock: Lock, record: Record | None = None) -> list[FileState]:
    """State of every locked file under `root` (content hashes, not timestamps or git).

    `record` is what an earlier `apply-patches` left in the tree: files matching its results
    but not the current lock were patched by an older series.
    """
    out = []
    for rel, pristine in sorted(lock.files.items()):
        f = root / rel
        if not f.is_file():
            out.append(FileState(rel, State.MISSING))
            continue
        data = f.read_bytes()
        patched = lock.patched.get(rel)
        if patched is not None and patched.matches(data):
            out.append(FileState(rel, State.PATCHED))
        elif pristine.matches(data):
            out.append(FileState(rel, State.PRISTINE))
        elif record is not None and record.patched.get(rel) == pin.sha256(data):
            out.append(FileState(rel, State.PATCHED_OLDER))
        else:
            out.append(FileState(rel, State.DRIFTED))
    return out


def git_head(root: Path) -> str | None:
    """HEAD commit if `root` is the top of a git checkout, else None."""
    if not (root / ".git").exists():
        return None
    try:
        import git

        return git.Repo(root).head.commit.hexsha
    except Exception:
        return None


def describe_origin(root: Path, lock: Lock) -> str:
    """Say how the tree was recognised: by its git HEAD or by content alone."""
    head = git_head(root)
    if head == lock.upstream_commit:
        return f"git checkout at the pinned commit {head[:12]}"
    if head:
        return f"git checkout at {head[:12]} (not the pinned {lock.upstream_commit[:12]}); verified by content"
    return "plain directory (no git checkout); verified by content"
