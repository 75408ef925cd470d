"""Bring upstream at a supported commit into a directory: from GitHub, a git bundle, a local git
mirror (or a folder of them), a plain directory, or the PyPI wheel that carries the same bytes where
one exists. Everything is staged and verified against vendor.lock before DEST is touched, so a
failure leaves DEST exactly as it was.

Interrupted (Ctrl-C, or SIGTERM, which the CLI turns into the same exception), vendor stops the git
or pip child it waits for, then removes its staging directory and temporary wheel directory before
the process exits. A staging directory that a `kill -9` left beside DEST is removed by the next
vendor into the same DEST (a running vendor holds a lock on its own, so that one is never touched)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import EnvironmentProblem, UsageError, VerificationError
from . import mirror, pin, treelock
from .lockfile import Commit, Lock

log = logging.getLogger("cosyvoice_ext")


# --- verification ---------------------------------------------------------------------------

def verify_locked_files(root: Path, commit: Commit) -> None:
    """Raise VerificationError naming every file `commit` locks that is missing or differs."""
    missing, differ = [], []
    for rel, h in sorted(commit.files.items()):
        f = root / rel
        if not f.is_file():
            if not (h.optional and not f.exists()):  # a training-only source has no inference files
                missing.append(rel)
        elif not h.matches(f.read_bytes()):
            differ.append(rel)
    if missing or differ:
        lines = [f"  missing: {p}" for p in missing[:20]] + [f"  differs: {p}" for p in differ[:20]]
        more = len(missing) + len(differ) - len(lines)
        if more > 0:
            lines.append(f"  ... and {more} more")
        raise VerificationError(
            f"{len(missing)} locked file(s) missing and {len(differ)} differing from upstream {commit.label} "
            f"in {root}:\n" + "\n".join(lines),
            hint=f"use an untouched source at {commit.commit}, or a git bundle or mirror (--source PATH)",
        )


# --- sources ---------------------------------------------------------------------------------

def _require_pypi(commit: Commit) -> dict[str, str]:
    if not commit.pypi:
        raise UsageError(f"no PyPI package carries upstream {commit.label}",
                         hint="use a git source: --source github, a git bundle or a mirror folder "
                              "(or --rev for a commit with a wheel)")
    return commit.pypi


def download_wheel(commit: Commit, into: Path) -> Path:
    """pip-download the commit's wheel (no deps) and check its sha256 before anything reads it."""
    pypi = _require_pypi(commit)
    spec = f"{pypi['name']}=={pypi['version']}"
    log.info("downloading %s from PyPI (pip shows progress)", spec)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(into), spec]
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.STDOUT)
    wheel = into / pypi["filename"]
    if proc.returncode != 0 or not wheel.is_file():
        raise EnvironmentProblem(f"could not download {spec} from PyPI (pip exit {proc.returncode})",
                                 hint="check network access to PyPI, or pass a downloaded file: --source PATH.whl")
    return wheel


def check_wheel(wheel: Path, commit: Commit) -> None:
    pypi = _require_pypi(commit)
    digest = pin.sha256(wheel.read_bytes())
    if digest != pypi["sha256"]:
        raise VerificationError(f"{wheel.name} has sha256 {digest}, vendor.lock pins {pypi['sha256']}",
                                hint="delete the file and download it again (it may be truncated or replaced)")


def assemble_from_wheel(wheel: Path, commit: Commit, staging: Path) -> None:
    """Lay out upstream's paths from the wheel (empty __init__ files are recreated)."""
    check_wheel(wheel, commit)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for rel, h in commit.files.items():
            if h.pypi is None:
                continue
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if h.pypi == "":
                out.write_bytes(b"")
            elif h.pypi in names:
                out.write_bytes(zf.read(h.pypi))


def copy_tree(src: Path, commit: Commit, staging: Path) -> None:
    """Copy the locked files of a plain directory (an air-gapped copy)."""
    for rel in commit.files:
        f = src / rel
        if f.is_file():
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out)


def _git(*args: str, what: str, hint: str) -> None:
    """Run git (progress shows on a terminal; otherwise its messages go into the error).

    `subprocess.run` kills and reaps the child when an exception (Ctrl-C, SIGTERM) interrupts the
    wait, so no git is still writing into the staging directory while vendor removes it."""
    live = sys.stderr.isatty()
    cmd = ["git", "-c", "protocol.ext.allow=never", "-c", "advice.detachedHead=false", *args]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=None if live else subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise EnvironmentProblem("git is not installed (vendor clones with it)",
                                 hint="install git, or use --source pypi / a .whl / a plain directory") from None
    if proc.returncode != 0:
        said = (proc.stderr or "").strip() or ("see git's message above" if live else f"exit {proc.returncode}")
        raise EnvironmentProblem(f"{what}: {said}", hint=hint)


def clone_git(url: str, commit: Commit, staging: Path, submodule_urls: dict[str, str],
              matcha: str | None) -> None:
    """Clone `url` (GitHub, a bundle or a local mirror) at `commit`, then the Matcha-TTS submodule."""
    log.info("cloning %s", url)
    progress = ["--progress"] if sys.stderr.isatty() else []
    hint = ("check the source (it must hold that commit) and the network, or use an offline git bundle: "
            "--source PATH/CosyVoice.bundle")
    what = f"git could not clone/check out {url} at {commit.commit}"
    _git("clone", "--no-checkout", *progress, "--", url, str(staging), what=what, hint=hint)
    _git("-C", str(staging), "checkout", "-q", commit.commit, what=what, hint=hint)
    sub_commit = commit.submodules.get(pin.MATCHA_PATH)
    if sub_commit is None:
        return
    target = staging / pin.MATCHA_PATH
    if not any(f for f in commit.files if f.startswith(pin.MATCHA_PATH + "/") and not (staging / f).exists()):
        return
    src = matcha or submodule_urls[pin.MATCHA_PATH]
    log.info("fetching submodule %s from %s", pin.MATCHA_PATH, src)
    if target.exists():
        shutil.rmtree(target)
    what = f"git could not fetch the Matcha-TTS submodule at {sub_commit} from {src}"
    hint = "pass a local copy with --matcha-source PATH (a bundle or a git mirror)"
    _git("clone", "--no-checkout", *progress, "--", src, str(target), what=what, hint=hint)
    _git("-C", str(target), "checkout", "-q", sub_commit, what=what, hint=hint)


# --- the command's core ---------------------------------------------------------------------

def vendor(dest: Path, source: str, lock: Lock, rev: str | None = None, matcha: str | None = None) -> str:
    """Stage `source` at the supported commit `rev` (default: the newest), verify it, move it into place."""
    commit = lock.resolve(rev)
    dest = dest.resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} already exists and is not empty; nothing was changed",
                         hint=f"choose a new directory, or check it with 'cosyext status --upstream {dest}'")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for old in _leftover_staging(dest):
        log.warning("removing %s, left beside %s by an interrupted vendor", old, dest.name)
        shutil.rmtree(old, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(dest), dir=dest.parent))
    try:
        with treelock.locked(staging, wait=0):
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; DEST should look like any new directory
            kind = _fill(staging, source, lock, commit, matcha)
            verify_locked_files(staging, commit)
            if dest.exists():
                dest.rmdir()
            staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    absent = [rel for rel, h in commit.files.items() if h.optional and not (dest / rel).exists()]
    note = (f"; {len(absent)} inference file(s) are not in this source (training works; 'cosyext synth' and "
            "'cosyext eval' need a git source)") if absent else ""
    return (f"vendored upstream {commit.label} ({', '.join(commit.families)}) from {kind} into {dest} "
            f"({len(commit.files) - len(absent)} locked files verified{note})")


def _staging_prefix(dest: Path) -> str:
    return f".{dest.name}.cosyext-"


def _leftover_staging(dest: Path) -> list[Path]:
    """Staging directories of earlier vendors into `dest` that nobody holds: a `kill -9` left them."""
    name = re.compile(re.escape(_staging_prefix(dest)) + r"[a-z0-9_]{8}")
    out = []
    for p in sorted(dest.parent.iterdir()):
        if name.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
            try:
                if not treelock.is_locked(p):
                    out.append(p)
            except OSError:
                continue  # gone meanwhile
    return out


def _fill(staging: Path, source: str, lock: Lock, commit: Commit, matcha: str | None) -> str:
    subs = lock.submodule_urls
    if source == mirror.GITHUB:
        clone_git(lock.upstream_url, commit, staging, subs, matcha)
        return "GitHub"
    if source == "pypi":
        _require_pypi(commit)
        with tempfile.TemporaryDirectory(prefix="cosyext-wheel-") as tmp:
            assemble_from_wheel(download_wheel(commit, Path(tmp)), commit, staging)
        return f"PyPI {commit.pypi['name']}=={commit.pypi['version']}"
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".whl":
        assemble_from_wheel(path, commit, staging)
        return f"wheel {path}"
    repos = mirror.git_repos(source)
    if repos is not None:
        clone_git(repos[0], commit, staging, subs, matcha or repos[1])
        kind = "mirror folder" if mirror.is_mirror_folder(path) else "git bundle" if path.is_file() else "git mirror"
        return f"{kind} {path}"
    if path.is_dir():
        copy_tree(path, commit, staging)
        return f"directory {path}"
    if "://" in source or source.startswith("git@"):
        clone_git(source, commit, staging, subs, matcha)
        return source
    raise UsageError(f"unknown source {source!r}: not 'github', 'pypi', a .whl file, a git bundle, a mirror folder, "
                     "a directory or a git URL",
                     hint=f"cosyext vendor DEST --source PATH/CosyVoice.bundle (or set ${mirror.MIRROR_ENV})")
