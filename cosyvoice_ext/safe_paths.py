"""Path questions every writing command asks before it writes: where does a write land, is it
inside something, can this user write there at all. Shared by export, prepare and plot.

All three put files in place by a rename inside the target's directory, so a symlink at an output
name is replaced, never written through; a write lands at its :func:`entry`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import UsageError


def entry(path: str | os.PathLike) -> Path:
    """Where a write by rename to ``path`` lands: its real directory (links and ``..`` resolved) plus its name."""
    p = Path(path).expanduser().absolute()
    if p.name in ("", ".", ".."):
        return p.resolve()
    return p.parent.resolve() / p.name


def at_or_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or below it (both compared as given: resolve them first)."""
    return path == root or root in path.parents


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two existing paths are one file (a hard link, or the same path spelt twice)."""
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def check_writable(directory: str | os.PathLike, what: str, hint: str) -> None:
    """UsageError unless ``directory`` can be created (or written in) by this user: no file in its way,
    no read-only directory or file system above it. Nothing is written to find out."""
    p = Path(directory).expanduser().absolute()
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        kind = "a dangling symlink" if p.is_symlink() and not p.exists() else "a file"
        raise UsageError(f"{what}: {p} is {kind}, not a directory", hint=hint)
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: cannot write in {p} (permission denied or a read-only file system)", hint=hint)
