"""Where an export may write: never over its inputs, never inside a directory it reads from.

Every file an export writes is put in place by a rename inside its directory
(``checkpoints.save_atomic``, ``serve.install_file``, new symlinks), so a link at an output name is
replaced, never written through. A write therefore lands at its *entry*: the real directory
(symlinked folders and ``..`` resolved) plus the file name. An export is refused (UsageError, exit
2, before anything is written) when an entry

- is an input file: ``--base`` (or the base an adapter records), ``--config``, ``--checkpoint``, the
  checkpoints chosen from ``--run``, ``--speaker-data``; as given, resolved, or a hard link to it;
- lies at or below an input directory: the ``--run`` dir, a DeepSpeed checkpoint dir, the
  ``--serve`` pretrained dir, the base's directory when it is a pretrained dir, the Qwen dir.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ... import family as families
from ... import safe_paths
from ...errors import UsageError
from ...safe_paths import at_or_inside, entry, same_file

HINT = "write the export somewhere else, e.g. -o exported/  (or -o serve/my_voice with --serve)"


@dataclass(frozen=True)
class Input:
    """Something an export reads; ``tree``: nothing may be written at or below it."""

    flag: str
    path: Path
    tree: bool = False


def pretrained_dirs(base: str | os.PathLike | None) -> list[Input]:
    """The directory of the base checkpoint (as named and as resolved) when it is a pretrained model dir."""
    if base is None:
        return []
    out = []
    for where in {entry(base).parent, Path(base).resolve().parent}:
        if families.of_pretrained(where) is not None:
            out.append(Input("the pretrained directory of the base checkpoint", where, tree=True))
    return out


def clash(write: Path, inp: Input) -> str | None:
    """Why writing ``write`` (an entry) would touch ``inp``, or None."""
    if inp.tree:
        root = inp.path.resolve()
        if write == root:
            return f"which is {inp.flag} {inp.path} itself"
        return f"inside {inp.flag} {inp.path}" if at_or_inside(write, root) else None
    if write in (entry(inp.path), inp.path.resolve()):
        return f"which is {inp.flag} {inp.path}"
    if write.is_file() and not write.is_symlink() and same_file(write, inp.path):
        return f"a hard link to {inp.flag} {inp.path}"
    return None


def refuse_overlap(output: str, writes: Iterable[Path], inputs: Iterable[Input]) -> None:
    """UsageError when any write would land on or inside an input (see the module docstring)."""
    inputs = list(inputs)
    for write in writes:
        for inp in inputs:
            why = clash(write, inp)
            if why:
                raise UsageError(f"-o {output} would write {write}, {why}: export never writes over or into what "
                                 "it reads", hint=HINT)


def check_writable(directory: Path, output: str) -> None:
    """UsageError unless this user can create or write ``directory`` (see :func:`safe_paths.check_writable`)."""
    safe_paths.check_writable(directory, f"-o {output}", HINT)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OS error while writing ``path`` (disk full, permissions changed meanwhile) into a UsageError."""
    try:
        yield
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename or path}: {exc.strerror or exc}", hint=HINT) from exc
