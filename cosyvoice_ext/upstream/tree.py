"""Classify an upstream tree file by file against a supported commit (pristine, patched by this or
an older series, drifted, missing), and recognise by content which supported commit a tree is at."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..errors import VerificationError
from . import pin
from .applied import Record
from .lockfile import Commit, Lock


class State(str, Enum):
    PRISTINE = "pristine"
    PATCHED = "patched"
    PATCHED_OLDER = "patched-older"
    DRIFTED = "drifted"
    MISSING = "missing"
    #: an optional (inference) file a training-only tree does not have: fine for training
    ABSENT = "absent"


@dataclass(frozen=True)
class FileState:
    path: str
    state: State


def classify(root: Path, commit: Commit, record: Record | None = None) -> list[FileState]:
    """State of every file `commit` locks under `root` (content hashes, not timestamps or git).

    `record` is what an earlier `apply-patches` left in the tree: files matching its results
    but not the current series were patched by an older series.
    """
    if record is not None and record.commit and record.commit != commit.commit:
        record = None  # an older series of another commit says nothing about this one
    out = []
    for rel, pristine in sorted(commit.files.items()):
        f = root / rel
        if not f.is_file():
            out.append(FileState(rel, State.ABSENT if pristine.optional and not f.exists() else State.MISSING))
            continue
        data = f.read_bytes()
        patched = commit.patched.get(rel)
        if patched is not None and patched.matches(data):
            out.append(FileState(rel, State.PATCHED))
        elif pristine.matches(data):
            out.append(FileState(rel, State.PRISTINE))
        elif record is not None and record.patched.get(rel) == pin.sha256(data):
            out.append(FileState(rel, State.PATCHED_OLDER))
        else:
            out.append(FileState(rel, State.DRIFTED))
    return out


def differing(states: list[FileState]) -> list[FileState]:
    return [s for s in states if s.state in (State.DRIFTED, State.MISSING)]


@dataclass(frozen=True)
class Recognition:
    """Which supported commit a tree is at, and how that was decided."""

    root: Path
    #: the commit whose series applies (None: the tree matches no supported commit)
    commit: Commit | None
    #: the supported commit with the fewest differing locked files (== commit when recognised)
    nearest: Commit
    states: list[FileState]
    #: git HEAD of the tree, if it is a git checkout
    head: str | None
    #: "git" (HEAD is a supported commit), "content" (all locked files match), or "" (unrecognised)
    by: str

    def origin(self) -> str:
        """One line for the user: what the tree is and how it was recognised."""
        where = f"git checkout at {self.head[:12]}" if self.head else "plain directory (no git checkout)"
        if self.commit is None:
            return f"{where}; matches no supported upstream commit"
        how = "its HEAD" if self.by == "git" else "content (every locked file matches)"
        return f"{where}; supported upstream {self.commit.label}, recognised by {how}"


def recognise(root: Path, lock: Lock, record: Record | None = None) -> Recognition:
    """Decide which supported commit `root` is at.

    A git HEAD that is a supported commit decides (differences are then local edits). Otherwise the
    commit whose locked files all match (pristine, patched, or patched by an older series) wins. A
    tree matching none gets `commit=None` and the nearest commit: fewest differing locked files.
    """
    head = git_head(root)
    by_head = next((c for c in lock.commits if head and c.commit == head), None)
    scored = []
    for c in lock.commits:
        states = classify(root, c, record)
        scored.append((len(differing(states)), -lock.commits.index(c), c, states))
    if by_head is not None:
        states = next(s for _, _, c, s in scored if c is by_head)
        return Recognition(root, by_head, by_head, states, head, "git")
    scored.sort(key=lambda t: (t[0], t[1]))
    n, _, best, states = scored[0]
    if n == 0:
        return Recognition(root, best, best, states, head, "content")
    return Recognition(root, None, best, states, head, "")


def unsupported_error(rec: Recognition, lock: Lock) -> VerificationError:
    """One clear message for a tree at no supported commit: where it is, the nearest, both ways forward."""
    nearest = rec.nearest
    diff = differing(rec.states)
    at = f"is a git checkout at {rec.head[:12]}, which is not a supported upstream commit" if rec.head else \
        "is not at any supported upstream commit (compared by content; no git checkout to ask)"
    sample = "\n".join(f"  {s.state.value:8} {s.path}" for s in diff[:8]) + (
        f"\n  ... and {len(diff) - 8} more" if len(diff) > 8 else "")
    if rec.head and git_has_commit(rec.root, nearest.commit):
        fix_checkout = f"git -C {rec.root} checkout {nearest.commit} (and its submodule)"
    else:  # a plain tree, or a repository that is not an upstream clone: a fresh verified tree
        fix_checkout = f"cosyext vendor NEWDIR --rev {nearest.name}"
    msg = (f"{rec.root} {at}.\n"
           f"The nearest supported commit is {nearest.label}: {len(diff)} of its {len(nearest.files)} locked "
           f"files differ:\n{sample}\n"
           f"Supported commits: {lock.names()}.\n"
           "Two ways forward:\n"
           f"  1. use a supported commit: {fix_checkout}\n"
           f"  2. maintainers: rebase the series onto this commit: cosyext rebase --onto "
           f"{rec.head[:12] if rec.head else 'REV'} --source MIRROR (see README, 'Moving to a new upstream')")
    if rec.head is None:
        msg += f"\nIf the differences are your own edits, restore those files from upstream {nearest.label}."
    if submodule_missing(diff, nearest):
        msg += (f"\n{pin.MATCHA_PATH} is not checked out: git -C {rec.root} submodule update --init" if rec.head
                else f"\n{pin.MATCHA_PATH} is empty: 'cosyext vendor' brings it with the tree")
    return VerificationError(msg, hint=f"cosyext status --upstream {rec.root} lists the files")


def submodule_missing(diff: list[FileState], commit: Commit) -> bool:
    """Every locked Matcha-TTS file is missing: a clone without its submodule."""
    matcha = {p for p in commit.files if p.startswith(pin.MATCHA_PATH + "/")}
    return bool(matcha) and matcha <= {s.path for s in diff if s.state is State.MISSING}


def git_has_commit(root: Path, sha: str) -> bool:
    """Whether the git repository at `root` holds commit `sha` (so checking it out can work)."""
    try:
        import git

        git.Repo(root).commit(sha)
        return True
    except Exception:
        return False


def git_head(root: Path) -> str | None:
    """HEAD commit if `root` is the top of a git checkout, else None."""
    if not (root / ".git").exists():
        return None
    try:
        import git

        return git.Repo(root).head.commit.hexsha
    except Exception:
        return None
