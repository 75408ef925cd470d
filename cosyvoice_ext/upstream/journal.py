"""Replace several files of an upstream tree as one transaction (apply-patches, revert), so that no
error, signal or crash between two replacements leaves a tree mixed for good.

1. preflight: everything inside the tree that would stop a write (a read-only file or directory,
   `.cosyext` not being a directory, another filesystem) is found before anything is written;
2. stage: the new bytes and a backup of the old bytes of every file, and the new applied record,
   go under `TREE/.cosyext/journal/`, fsynced;
3. commit point: `journal.json` (every file with its old and new sha256, where its new bytes are
   staged and where the old ones are kept) is written to a temporary name, fsynced and renamed;
4. each file is replaced by a rename, then the record is swapped;
5. the touched directories are fsynced and the journal is removed.

An exception during 4 (an I/O error, Ctrl-C, SIGTERM) rolls back at once. A crash (kill -9, power
loss) leaves the journal; `recover()`, which apply-patches, revert and status run first, then
finishes the command ("rolled forward": the journal exists only once every check passed) or, when
a staged copy is gone or damaged, undoes it ("rolled back"). A file matching neither its old nor
its new hash (edited after the crash) stops recovery with the file named; nothing is guessed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..errors import EnvironmentProblem, PatchConflict
from . import pin
from .applied import RECORD_DIR

META_DIR = RECORD_DIR.parent  # .cosyext
JOURNAL_DIR = META_DIR / "journal"
JOURNAL_FILE = "journal.json"
VERSION = 1

#: writes the new applied record into the directory it is given; None: the command removes the record
RecordWriter = Callable[[Path], None] | None


@dataclass(frozen=True)
class Entry:
    path: str
    old_sha256: str
    new_sha256: str
    staged: str  # the new bytes, relative to the journal directory
    backup: str  # the old bytes, relative to the journal directory
    mode: int


@dataclass(frozen=True)
class Journal:
    command: str
    entries: list[Entry]
    record: str  # "write" or "remove"


# --- preflight -------------------------------------------------------------------------------------

def _writable(p: Path, directory: bool = False) -> bool:
    """Writable for us, and not marked read-only by its mode (root ignores modes; we respect them)."""
    want = os.W_OK | (os.X_OK if directory else 0)
    return os.access(p, want) and bool(p.stat().st_mode & 0o222)


def preflight(root: Path, paths: list[str]) -> None:
    """Raise EnvironmentProblem naming every reason a transaction over `paths` could not be written."""
    problems: list[str] = []
    meta = root / META_DIR
    if meta.is_symlink() or (meta.exists() and not meta.is_dir()):
        problems.append(f"{META_DIR} is not a directory (cosyext keeps its record and journal there)")
    elif meta.is_dir():
        if not _writable(meta, directory=True):
            problems.append(f"{META_DIR}/ is read-only")
        for sub in (RECORD_DIR, JOURNAL_DIR):
            p = root / sub
            if p.is_symlink() or (p.exists() and not p.is_dir()):
                problems.append(f"{sub} is not a directory cosyext made")
            elif sub == JOURNAL_DIR and p.exists():
                problems.append(f"{sub}/ is left from another command")
    elif not _writable(root, directory=True):
        problems.append(f"{root}/ is read-only (cosyext needs to create {META_DIR}/ in it)")
    device = (meta if meta.is_dir() else root).stat().st_dev
    seen: set[Path] = set()
    for rel in sorted(paths):
        f = root / rel
        if f.is_symlink() or not f.is_file():
            problems.append(f"{rel} is not a regular file")
        elif not _writable(f):
            problems.append(f"{rel} is read-only")
        d = f.parent
        if d in seen or not d.is_dir():
            continue
        seen.add(d)
        if not _writable(d, directory=True):
            problems.append(f"{d.relative_to(root)}/ is read-only")
        elif d.stat().st_dev != device:
            problems.append(f"{d.relative_to(root)}/ is on another filesystem than {META_DIR}/ (files are renamed "
                            "into place)")
    if problems:
        raise EnvironmentProblem(f"cannot write to {root}; nothing was changed:\n" + "\n".join(f"  {p}" for p in problems),
                                 hint="make those paths writable (chmod u+w), move away what is in cosyext's "
                                      f"place ({META_DIR}), then run the command again")


# --- small durable-I/O helpers ---------------------------------------------------------------------

def _fsync(p: Path, directory: bool = False) -> None:
    fd = os.open(p, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename order still holds
    finally:
        os.close(fd)


def _write_synced(p: Path, data: bytes, mode: int | None = None) -> None:
    with open(p, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if mode is not None:
        os.chmod(p, mode)


def _sync_tree(d: Path) -> None:
    for p in sorted(d.rglob("*")):
        _fsync(p, directory=p.is_dir())
    _fsync(d, directory=True)


def _sha(p: Path) -> str | None:
    try:
        return pin.sha256(p.read_bytes())
    except OSError:
        return None


def _rmtree(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.exists():
        shutil.rmtree(p)


# --- the transaction -------------------------------------------------------------------------------

def commit(root: Path, command: str, old: dict[str, bytes], new: dict[str, bytes], record: RecordWriter) -> None:
    """Replace every file in `new` (whose current bytes must still be `old`) and the applied record,
    all or nothing. The caller holds the tree lock and has run `recover()`."""
    paths = sorted(new)
    preflight(root, paths)
    jdir = root / JOURNAL_DIR
    try:
        j = _stage(root, jdir, command, paths, old, new, record)
    except BaseException as exc:
        _discard(root, jdir)
        if isinstance(exc, OSError):
            raise EnvironmentProblem(f"could not stage the new files under {jdir}: {exc}; nothing was changed",
                                     hint="free some space or fix the permissions, then run the command again") from exc
        raise
    try:
        _forward(root, jdir, j)
    except BaseException as exc:
        undone = _try_backward(root, jdir, j)
        if not isinstance(exc, OSError):
            raise  # Ctrl-C, SIGTERM: rolled back (or left for the next run), the CLI says it was interrupted
        where = exc.filename or "a file"
        if undone:
            raise EnvironmentProblem(f"replacing {where} failed ({exc.strerror or exc}); rolled back: nothing was "
                                     "changed", hint=f"fix the cause, then run 'cosyext {command} --upstream {root}' again") from exc
        raise EnvironmentProblem(f"replacing {where} failed ({exc.strerror or exc}) and undoing it failed too; the "
                                 f"journal in {jdir} lets the next run finish or undo the command",
                                 hint=f"fix the cause, then run 'cosyext status --upstream {root}' (the next run "
                                      "recovers the tree)") from exc
    _discard(root, jdir)


def _stage(root: Path, jdir: Path, command: str, paths: list[str], old: dict[str, bytes], new: dict[str, bytes],
           record: RecordWriter) -> Journal:
    (jdir / "new").mkdir(parents=True)
    (jdir / "old").mkdir()
    entries = []
    for i, rel in enumerate(paths):
        f = root / rel
        current = f.read_bytes()
        if current != old[rel]:
            raise PatchConflict(f"{rel} changed while cosyext worked on it; nothing was changed",
                                hint=f"run 'cosyext {command} --upstream {root}' again")
        mode = stat.S_IMODE(f.stat().st_mode)
        _write_synced(jdir / "new" / str(i), new[rel], mode)
        _write_synced(jdir / "old" / str(i), current, mode)
        entries.append(Entry(rel, pin.sha256(current), pin.sha256(new[rel]), f"new/{i}", f"old/{i}", mode))
    if (root / RECORD_DIR).is_dir():
        shutil.copytree(root / RECORD_DIR, jdir / "record-old")
    if record is not None:
        record(jdir / "record-new")
    _sync_tree(jdir)
    j = Journal(command, entries, "write" if record is not None else "remove")
    _write_journal(jdir, j)
    return j


def _write_journal(jdir: Path, j: Journal) -> None:
    """The commit point: before it the tree is untouched, after it the command can always be finished."""
    from .. import __version__

    doc = {"version": VERSION, "command": j.command, "cosyvoice_ext": __version__,
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "record": j.record,
           "files": [{"path": e.path, "old_sha256": e.old_sha256, "new_sha256": e.new_sha256, "staged": e.staged,
                      "backup": e.backup, "mode": e.mode} for e in j.entries]}
    tmp = jdir / (JOURNAL_FILE + ".tmp")
    _write_synced(tmp, (json.dumps(doc, indent=2) + "\n").encode())
    os.replace(tmp, jdir / JOURNAL_FILE)
    _fsync(jdir, directory=True)


def _forward(root: Path, jdir: Path, j: Journal) -> None:
    for e in j.entries:
        dest = root / e.path
        if _sha(dest) != e.new_sha256:
            os.replace(jdir / e.staged, dest)
    applied = root / RECORD_DIR
    if j.record == "write":
        if (jdir / "record-new").is_dir():
            _rmtree(applied)
            os.replace(jdir / "record-new", applied)
    else:
        _rmtree(applied)
    _sync_dirs(root, j)


def _backward(root: Path, jdir: Path, j: Journal) -> None:
    for i, e in enumerate(j.entries):
        dest = root / e.path
        if _sha(dest) != e.old_sha256:
            tmp = jdir / f"restore-{i}"
            shutil.copyfile(jdir / e.backup, tmp)
            os.chmod(tmp, e.mode)
            _fsync(tmp)
            os.replace(tmp, dest)
    applied = root / RECORD_DIR
    _rmtree(applied)
    if (jdir / "record-old").is_dir():
        shutil.copytree(jdir / "record-old", jdir / "record-restore", dirs_exist_ok=True)
        os.replace(jdir / "record-restore", applied)
    _sync_dirs(root, j)


def _try_backward(root: Path, jdir: Path, j: Journal) -> bool:
    """Undo at once after a failure; on success the journal goes, else it stays for the next run."""
    try:
        _backward(root, jdir, j)
    except BaseException:
        return False
    _discard(root, jdir)
    return True


def _sync_dirs(root: Path, j: Journal) -> None:
    for d in sorted({(root / e.path).parent for e in j.entries} | {root / META_DIR}):
        if d.is_dir():
            _fsync(d, directory=True)


def _discard(root: Path, jdir: Path) -> None:
    """Remove the journal (its commit record first), and `.cosyext/` when nothing else is in it."""
    try:
        (jdir / JOURNAL_FILE).unlink()
    except OSError:
        pass
    shutil.rmtree(jdir, ignore_errors=True)
    try:
        (root / META_DIR).rmdir()
    except OSError:
        pass


# --- recovery --------------------------------------------------------------------------------------

def _load(jdir: Path) -> Journal:
    try:
        doc = json.loads((jdir / JOURNAL_FILE).read_text(encoding="utf-8"))
        entries = [Entry(str(e["path"]), str(e["old_sha256"]), str(e["new_sha256"]), str(e["staged"]),
                         str(e["backup"]), int(e["mode"])) for e in doc["files"]]
        if doc.get("version") != VERSION or doc["record"] not in ("write", "remove"):
            raise ValueError("unknown journal version")
        for e in entries:  # a journal only ever names paths inside the tree and inside itself
            for rel in (e.path, e.staged, e.backup):
                if Path(rel).is_absolute() or ".." in Path(rel).parts or rel in ("", "."):
                    raise ValueError(f"path {rel!r} leaves the tree")
        return Journal(str(doc["command"]), entries, doc["record"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PatchConflict(f"{jdir / JOURNAL_FILE} cannot be read ({exc}); an interrupted cosyext command "
                            "left it, so the tree may be partly changed",
                            hint=f"check the tree with 'cosyext status --upstream {jdir.parents[1]}' after moving "
                                 f"{jdir} away") from None


def recover(root: Path) -> str | None:
    """Finish (or undo) a command a crash interrupted; one line saying which, or None if none was.

    The caller holds the tree lock."""
    jdir = root / JOURNAL_DIR
    if not jdir.is_dir() or jdir.is_symlink():
        return None
    if not (jdir / JOURNAL_FILE).is_file():
        _discard(root, jdir)
        return (f"removed what an interrupted command left in {jdir}: it holds no journal, so that command had "
                "changed nothing yet (or had finished)")
    j = _load(jdir)
    now = {e.path: _sha(root / e.path) for e in j.entries}
    neither = [e.path for e in j.entries if now[e.path] not in (e.old_sha256, e.new_sha256)]
    if neither:
        raise PatchConflict(
            f"an interrupted 'cosyext {j.command}' left a journal in {jdir}, but these files now match neither "
            "their version before it nor after it (edited since?), so nothing was changed:\n"
            + "\n".join(f"  {p}" for p in neither),
            hint=f"undo your edits to those files (or move {jdir} away to forget that command), then run "
                 f"'cosyext status --upstream {root}'")
    done = sum(1 for e in j.entries if now[e.path] == e.new_sha256)
    forward = all(now[e.path] == e.new_sha256 or _sha(jdir / e.staged) == e.new_sha256 for e in j.entries)
    backward = all(now[e.path] == e.old_sha256 or _sha(jdir / e.backup) == e.old_sha256 for e in j.entries)
    what = f"recovered {root}: an interrupted 'cosyext {j.command}' had replaced {done} of {len(j.entries)} file(s); "
    try:
        if forward:
            _forward(root, jdir, j)
            what += "rolled forward (the command is now finished)"
        elif backward:
            _backward(root, jdir, j)
            what += "rolled back (the tree is as it was before that command)"
        else:
            raise PatchConflict(f"an interrupted 'cosyext {j.command}' left a journal in {jdir} whose staged copies "
                                "are damaged, so it can be neither finished nor undone; nothing was changed",
                                hint=f"re-vendor a clean tree with 'cosyext vendor DIR' (or move {jdir} away and "
                                     f"check with 'cosyext status --upstream {root}')")
    except OSError as exc:
        raise EnvironmentProblem(f"recovering {root} from an interrupted 'cosyext {j.command}' failed: {exc}",
                                 hint=f"fix the cause, then run 'cosyext status --upstream {root}' again") from exc
    _discard(root, jdir)
    return what
