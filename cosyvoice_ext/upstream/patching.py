"""The patch engine: apply a supported commit's patch series to an upstream tree atomically and
idempotently, report per-file state, and revert to pristine upstream without ever losing a user's edits.

Series are stored per supported commit: `patches/<name>/series` plus its `NNNN-slug.patch` files
(DEP-3 headers), where `<name>` is the lock entry's `patches` folder. Which series applies to a tree
is decided by recognising the tree's commit (`tree.recognise`), never by asking the user.

Patches are applied with real `git apply` in a private staging directory holding copies of the
touched files; the tree itself is only written after the whole series applied there and every
result matched the hashes in vendor.lock. Then every file and the applied record are replaced as
one journaled transaction (`journal`), under a lock that lets one command at a time work on a tree
(`treelock`); an interrupted earlier command is recovered first (`session`).
"""

from __future__ import annotations

import glob
import re
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Collection, Iterator

from ..errors import EnvironmentProblem, LockError, PatchConflict, VerificationError
from . import applied, journal, pin, treelock
from .applied import Record
from .lockfile import Commit, Lock
from .tree import FileState, Recognition, State, classify, recognise, submodule_missing, unsupported_error

_DIFF_TARGET = re.compile(r"^\+\+\+ b/(\S+)", re.M)


@dataclass(frozen=True)
class Patch:
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def sha256(self) -> str:
        return pin.sha256(self.path.read_bytes())

    def touched(self) -> list[str]:
        return sorted(set(_DIFF_TARGET.findall(self.text)))


def patches_root() -> Path:
    """The installed `patches/` folder (one sub-folder per supported commit)."""
    return Path(str(resources.files("cosyvoice_ext.patches")))


def series_dir(commit: Commit, root: Path | None = None) -> Path:
    return (root or patches_root()) / commit.patches_dir


def series_for(commit: Commit, root: Path | None = None) -> list[Patch]:
    """The patch series of a supported commit, in apply order."""
    return read_series(series_dir(commit, root))


def read_series(patches_dir: Path) -> list[Patch]:
    """Patches in `series` order; a listed file that does not exist is an error, not a skip."""
    series = patches_dir / "series"
    if not series.is_file():
        raise LockError(f"{series} does not exist", hint="reinstall cosyvoice-ext")
    out = []
    for line in series.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        path = patches_dir / name
        if not path.is_file():
            raise LockError(f"patch {name} is listed in {series} but missing", hint="restore it or remove it from series")
        out.append(Patch(name, path))
    return out


def touched_files(patches: list[Patch]) -> list[str]:
    return sorted({f for p in patches for f in p.touched()})


def check_lock_matches_series(commit: Commit, patches: list[Patch]) -> None:
    """Refuse to work with patches that differ from the ones the lock was generated for."""
    want = [(p["name"], p["sha256"]) for p in commit.series]
    have = [(p.name, p.sha256) for p in patches]
    if want != have:
        changed = sorted({n for n, _ in set(want) ^ set(have)})
        raise LockError(
            f"patches/{commit.patches_dir} does not match vendor.lock for {commit.label} (changed, added, removed "
            "or reordered: " + ", ".join(changed or ["order"]) + ")",
            hint="regenerate the lock with 'cosyext lock' and commit both",
        )


def stage_series(contents: dict[str, bytes], patches: list[Patch], where: Path, reverse: bool = False,
                 only: Collection[str] | None = None) -> dict[str, bytes]:
    """Apply (or reverse) `patches` to copies of `contents`; return the new contents.

    `only`: apply just the parts of each patch that touch these files (the others are kept as they
    are), which is how a partly applied series is finished or undone. Raises PatchConflict naming
    the first patch that does not apply; nothing under `where` (the tree the contents came from,
    named in messages) is ever written. git runs through `subprocess.run`, which kills and reaps it
    when Ctrl-C or SIGTERM interrupts the wait, so the private directory is removed after it.
    """
    include = None if only is None else [f"--include={glob.escape(f)}" for f in sorted(only)]
    if include == []:
        return dict(contents)
    with tempfile.TemporaryDirectory(prefix="cosyext-stage-") as tmp:
        stage = Path(tmp)
        for rel, data in contents.items():
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
        # a repository of its own, so `git apply` never resolves paths against an enclosing one
        _git_in(stage, "init", "-q")
        for patch in (reversed(patches) if reverse else patches):
            res = _git_in(stage, "apply", "--whitespace=nowarn", *(["--reverse"] if reverse else []),
                          *(include or []), str(patch.path.resolve()))
            if res.returncode != 0:
                what = "reverse-apply" if reverse else "apply"
                raise PatchConflict(
                    f"patch {patch.name} does not {what} to {where}: {res.stderr.strip()}\n"
                    "  upstream changed since the patch was made, or a patched file was edited; nothing was written",
                    hint=f"run 'cosyext status --upstream {where}' to see which file differs",
                )
        return {rel: (stage / rel).read_bytes() for rel in contents}


def _git_in(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise EnvironmentProblem("git is not installed (patches are applied with 'git apply')",
                                 hint="install git (e.g. apt-get install git), then run the command again") from None


def read_files(root: Path, files) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel in files}


@contextmanager
def session(root: Path, command: str) -> Iterator[str | None]:
    """Hold the tree lock for a whole command and first finish (or undo) whatever an interrupted
    command left in the tree's journal. Yields the line saying what recovery did, or None."""
    with treelock.locked(root, what=f"cosyext {command} --upstream {root}"):
        yield journal.recover(root)


@dataclass
class Outcome:
    message: str
    changed: list[str]

    def after(self, recovered: str | None) -> "Outcome":
        """The outcome, saying first that an interrupted command was recovered (library callers)."""
        return Outcome(f"{recovered}\n{self.message}", self.changed) if recovered else self


@dataclass(frozen=True)
class Target:
    """A tree, the supported commit it is at, and that commit's series."""

    root: Path
    recognition: Recognition
    commit: Commit
    patches: list[Patch]


def target(root: Path, lock: Lock, *, allow_drift: bool = False, patches_dir: Path | None = None) -> Target:
    """Recognise which supported commit `root` is at and load that commit's series.

    With `allow_drift`, a tree at no supported commit is treated as its nearest one, so files the
    series does not touch may differ (they are listed); touched files are still checked later.
    """
    record = applied.read(root)
    rec = recognise(root, lock, record)
    commit = rec.commit
    if commit is None:
        if not allow_drift:
            raise unsupported_error(rec, lock)
        commit = rec.nearest
    patches = series_for(commit, patches_dir)
    check_lock_matches_series(commit, patches)
    unknown = [f for f in touched_files(patches) if f not in commit.files]
    if unknown:
        raise LockError(f"patches/{commit.patches_dir} touches files vendor.lock does not lock for {commit.label}: "
                        f"{', '.join(unknown)}", hint="regenerate the lock with 'cosyext lock'")
    return Target(root, rec, commit, patches)


def _partition(states: list[FileState]) -> dict[State, list[str]]:
    by: dict[State, list[str]] = {s: [] for s in State}
    for st in states:
        by[st.state].append(st.path)
    return by


def _restore_hint(t: Target) -> str:
    """How to get upstream's copy of a file back: git only where the tree is a checkout whose HEAD is
    the supported commit (anywhere else `git checkout` would not give upstream's bytes)."""
    if t.recognition.by == "git":
        return f"restore them with 'git -C {t.root} checkout -- <file>'"
    return (f"restore them from upstream {t.commit.label} (or re-vendor a clean tree with "
            f"'cosyext vendor DIR --rev {t.commit.name}')")


def _refuse_bad_tree(t: Target, by: dict[State, list[str]], allow_drift: bool, files: list[str]) -> None:
    root, commit = t.root, t.commit
    if by[State.MISSING]:
        missing = [FileState(f, State.MISSING) for f in by[State.MISSING]]
        hint = (f"check out the submodule: git -C {root} submodule update --init"
                if submodule_missing(missing, commit) and t.recognition.by == "git"
                else f"get a complete tree with 'cosyext vendor DIR --rev {commit.name}'")
        raise VerificationError(
            f"{len(by[State.MISSING])} file(s) of upstream {commit.label} missing under {root}: "
            + ", ".join(by[State.MISSING][:8]) + (" ..." if len(by[State.MISSING]) > 8 else ""), hint=hint)
    drifted = by[State.DRIFTED]
    blocking = drifted if not allow_drift else [f for f in drifted if f in files]
    if blocking:
        raise PatchConflict(
            f"these files differ from both upstream {commit.label} and its patched version (local edits), "
            "so nothing was changed:\n" + "\n".join(f"  {f}" for f in blocking),
            hint=f"keep your edits elsewhere, then {_restore_hint(t)}"
            + ("" if allow_drift else "; or pass --allow-drift if they are not files the patches touch"),
        )


def _unapply_older(t: Target, record: Record | None, by: dict[State, list[str]]) -> dict[str, bytes]:
    """Pristine contents of the files an older series patched (reversed from the record's copies)."""
    if not by[State.PATCHED_OLDER]:
        return {}
    assert record is not None
    files = sorted(record.patched)
    pristine = stage_series(read_files(t.root, files), [Patch(n, p) for n, p in zip(record.names, record.paths)],
                            t.root, reverse=True)
    bad = [f for f, data in pristine.items() if f not in t.commit.files or not t.commit.files[f].matches(data)]
    if bad:
        raise PatchConflict(f"undoing the older patch series did not give pristine upstream for {', '.join(bad)}",
                            hint=f"re-vendor a clean tree with 'cosyext vendor DIR' (nothing was written to {t.root})")
    return pristine


def apply_series(root: Path, lock: Lock, check: bool = False, allow_drift: bool = False,
                 patches_dir: Path | None = None, t: Target | None = None) -> Outcome:
    """Recognise the tree's commit, verify it, then apply that commit's whole series or nothing
    (upgrading a series applied by an older cosyvoice-ext in place). `t`: an already made `target()`,
    made under the same `session()`."""
    with session(root, "apply-patches") as recovered:
        t = t or target(root, lock, allow_drift=allow_drift, patches_dir=patches_dir)
        return _apply(t, check, allow_drift).after(recovered)


def _apply(t: Target, check: bool, allow_drift: bool) -> Outcome:
    root, commit, patches = t.root, t.commit, t.patches
    files = touched_files(patches)
    record = applied.read(root)
    by = _partition(classify(root, commit, record))
    _refuse_bad_tree(t, by, allow_drift, files)
    patched = [f for f in files if f in by[State.PATCHED]]
    what = f"{len(patches)} patches for upstream {commit.label}"
    if len(patched) == len(files) and not by[State.PATCHED_OLDER]:
        return Outcome(f"already applied: {what}, {len(files)} file(s) patched in {root}", [])
    # partly applied without a journal (a cosyvoice-ext older than the journal crashed, or a file was
    # copied by hand): every file is pristine or patched, so patch only the pristine ones
    partly = bool(patched) and not by[State.PATCHED_OLDER]
    current = read_files(root, files)
    reverted = _unapply_older(t, record, by)
    staged = stage_series({**current, **{f: d for f, d in reverted.items() if f in current}}, patches, root,
                          only=[f for f in files if f not in patched] if partly else None)
    stale = [f for f, data in staged.items() if f not in commit.patched or not commit.patched[f].matches(data)]
    if stale:
        raise LockError(f"patched result of {', '.join(stale)} does not match vendor.lock",
                        hint="regenerate the lock with 'cosyext lock' after changing patches")
    upgrade = (f" (replacing an older series of {len(record.names)} patches)" if reverted else
               f" (finishing a partly applied series: {len(patched)} of them were patched already)" if partly else "")
    writes = {**{f: d for f, d in reverted.items() if f not in staged}, **staged}
    old = {**read_files(root, [f for f in writes if f not in current]), **current}
    writes = {f: d for f, d in writes.items() if d != old[f]}
    journal.preflight(root, sorted(writes))
    if check:
        return Outcome(f"check passed: {what} apply cleanly to {len(files)} file(s) in {root}{upgrade}", [])
    journal.commit(root, "apply-patches", {f: old[f] for f in writes}, writes,
                   record=lambda into: applied.build(into, patches, staged, commit.commit))
    return Outcome(f"applied {what} to {len(files)} file(s) in {root}{upgrade}", sorted(writes))


def revert_series(root: Path, lock: Lock, patches_dir: Path | None = None) -> Outcome:
    """Restore pristine upstream for every patched file; refuse if any touched file was edited."""
    with session(root, "revert") as recovered:
        return _revert(target(root, lock, allow_drift=False, patches_dir=patches_dir)).after(recovered)


def _revert(t: Target) -> Outcome:
    root, commit, patches = t.root, t.commit, t.patches
    files = touched_files(patches)
    record = applied.read(root)
    by = _partition(classify(root, commit, record))
    older_files = sorted(record.patched) if record and by[State.PATCHED_OLDER] else []
    _refuse_bad_tree(t, by, allow_drift=True, files=sorted(set(files) | set(older_files)))
    if older_files:
        restored = _unapply_older(t, record, by)
        current = read_files(root, restored)
        restored = {f: d for f, d in restored.items() if d != current[f]}
        journal.commit(root, "revert", {f: current[f] for f in restored}, restored, record=None)
        return Outcome(f"reverted an older series of {len(record.names)} patches: "
                       f"{len(restored)} file(s) restored to pristine upstream {commit.label}", sorted(restored))
    patched = [f for f in files if f in by[State.PATCHED]]
    if not patched:
        applied.remove(root)
        return Outcome(f"nothing to revert: {root} is pristine upstream {commit.label}", [])
    partly = len(patched) != len(files)  # (see _apply): reverse only the patched files
    current = read_files(root, files)
    staged = stage_series(current, patches, root, reverse=True, only=patched if partly else None)
    bad = [f for f, data in staged.items() if not commit.files[f].matches(data)]
    if bad:
        raise VerificationError(f"reverting did not give pristine upstream for {', '.join(bad)}; nothing was written",
                                hint=f"re-vendor with 'cosyext vendor DIR --rev {commit.name}'")
    staged = {f: d for f, d in staged.items() if d != current[f]}
    journal.commit(root, "revert", {f: current[f] for f in staged}, staged, record=None)
    part = f" (the series was partly applied: {len(patched)} of {len(files)} file(s))" if partly else ""
    return Outcome(f"reverted {len(patches)} patches: {len(staged)} file(s) restored to pristine upstream "
                   f"{commit.label}{part}", sorted(staged))
