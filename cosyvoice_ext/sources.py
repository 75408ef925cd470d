"""Bring upstream at the pin into a directory: from GitHub, a local git mirror, a plain directory or
the PyPI wheel that carries the same bytes. Everything is staged and verified against vendor.lock
before DEST is touched, so a failure leaves DEST exactly as it was."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import pin
from .errors import EnvironmentProblem, UsageError, VerificationError
from .lockfile import Lock

log = logging.getLogger("cosyvoice_ext")


# --- verification ---------------------------------------------------------------------------

def verify_locked_files(root: Path, lock: Lock) -> None:
    """Raise VerificationError naming every locked file that is missing or differs."""
    missing, differ = [], []
    for rel, h in sorted(lock.files.items()):
        f = root / rel
        if not f.is_file():
            missing.append(rel)
        elif not h.matches(f.read_bytes()):
            differ.append(rel)
    if missing or differ:
        lines = [f"  missing: {p}" for p in missing[:20]] + [f"  differs: {p}" for p in differ[:20]]
        more = len(missing) + len(differ) - len(lines)
        if more > 0:
            lines.append(f"  ... and {more} more")
        raise VerificationError(
            f"{len(missing)} locked file(s) missing and {len(differ)} differing from vendor.lock in {root}:\n"
            + "\n".join(lines),
            hint="use an untouched source at the pinned commit, or 'cosyext vendor DEST --source pypi' offline",
        )


# --- sources --------------------------------------------------------------------------------

def download_wheel(lock: Lock, into: Path) -> Path:
    """pip-download the pinned wheel (no deps) and check its sha256 before anything reads it."""
    spec = f"{lock.pypi['name']}=={lock.pypi['version']}"
    log.info("downloading %s from PyPI (pip shows progress)", spec)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(into), spec]
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.STDOUT)
    wheel = into / lock.pypi["filename"]
    if proc.returncode != 0 or not wheel.is_file():
        raise EnvironmentProblem(f"could not download {spec} from PyPI (pip exit {proc.returncode})",
                                 hint="check network access to PyPI, or pass a downloaded file: --source PATH.whl")
    return wheel


def check_wheel(wheel: Path, lock: Lock) -> None:
    digest = pin.sha256(wheel.read_bytes())
    if digest != lock.pypi["sha256"]:
        raise VerificationError(f"{wheel.name} has sha256 {digest}, vendor.lock pins {lock.pypi['sha256']}",
                                hint="delete the file and download it again (it may be truncated or replaced)")


def assemble_from_wheel(wheel: Path, lock: Lock, staging: Path) -> None:
    """Lay out upstream's paths from the wheel (empty __init__ files are recreated)."""
    check_wheel(wheel, lock)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for rel, h in lock.files.items():
            if h.pypi is None:
                continue
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if h.pypi == "":
                out.write_bytes(b"")
            elif h.pypi in names:
                out.write_bytes(zf.read(h.pypi))


def copy_tree(src: Path, lock: Lock, staging: Path) -> None:
    """Copy the locked files of a plain directory (a mirror, an air-gapped copy)."""
    for rel in lock.files:
        f = src / rel
        if f.is_file():
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out)


def clone_git(url: str, lock: Lock, staging: Path, rev: str | None, matcha: str | None) -> None:
    """Clone `url` (GitHub or a local mirror) at `rev` (default: the pin), then the Matcha submodule."""
    import git

    class Progress(git.RemoteProgress):
        def update(self, op_code, cur_count, max_count=None, message=""):  # noqa: D401
            if max_count:
                print(f"\r  clone {cur_count:.0f}/{max_count:.0f} {message}", end="", file=sys.stderr, flush=True)

    log.info("cloning %s", url)
    try:
        repo = git.Repo.clone_from(url, staging, no_checkout=True, progress=Progress())
        print(file=sys.stderr)
        repo.git.checkout(rev or lock.upstream_commit)
    except git.GitCommandError as exc:
        raise EnvironmentProblem(f"git could not clone/check out {url} at {rev or lock.upstream_commit}: "
                                 f"{exc.stderr.strip() or exc}",
                                 hint="check the URL and network, or vendor offline: --source pypi") from None
    sub = lock.submodules.get(pin.MATCHA_PATH)
    if sub is None:
        return
    target = staging / pin.MATCHA_PATH
    if any(f for f in lock.files if f.startswith(pin.MATCHA_PATH + "/") and not (staging / f).exists()):
        src = matcha or sub["url"]
        log.info("fetching submodule %s from %s", pin.MATCHA_PATH, src)
        try:
            if target.exists():
                shutil.rmtree(target)
            sub_repo = git.Repo.clone_from(src, target, no_checkout=True)
            sub_repo.git.checkout(sub["commit"] if matcha is None or _has_commit(sub_repo, sub["commit"]) else "HEAD")
        except git.GitCommandError as exc:
            raise EnvironmentProblem(f"git could not fetch the Matcha-TTS submodule from {src}: "
                                     f"{exc.stderr.strip() or exc}",
                                     hint="pass a local copy with --matcha-source PATH, or vendor with --source pypi") from None


def _has_commit(repo, sha: str) -> bool:
    try:
        repo.commit(sha)
        return True
    except Exception:
        return False


# --- the command's core ---------------------------------------------------------------------

def vendor(dest: Path, source: str, lock: Lock, rev: str | None = None, matcha: str | None = None) -> str:
    """Stage `source`, verify it against the lock, then move it into place as `dest`."""
    dest = dest.resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} already exists and is not empty; nothing was changed",
                         hint=f"choose a new directory, or check it with 'cosyext status --upstream {dest}'")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.cosyext-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; DEST should look like any new directory
    try:
        kind = _fill(staging, source, lock, rev, matcha)
        verify_locked_files(staging, lock)
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return f"vendored upstream {lock.upstream_commit[:12]} from {kind} into {dest} ({len(lock.files)} locked files verified)"


def _fill(staging: Path, source: str, lock: Lock, rev: str | None, matcha: str | None) -> str:
    if source == "github":
        clone_git(lock.upstream_url, lock, staging, rev, matcha)
        return "GitHub"
    if source == "pypi":
        with tempfile.TemporaryDirectory(prefix="cosyext-wheel-") as tmp:
            assemble_from_wheel(download_wheel(lock, Path(tmp)), lock, staging)
        return f"PyPI {lock.pypi['name']}=={lock.pypi['version']}"
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".whl":
        assemble_from_wheel(path, lock, staging)
        return f"wheel {path}"
    if path.is_dir() and ((path / ".git").exists() or (path / "HEAD").is_file() and (path / "objects").is_dir()):
        clone_git(str(path.resolve()), lock, staging, rev, matcha)
        return f"git mirror {path}"
    if path.is_dir():
        copy_tree(path, lock, staging)
        return f"directory {path}"
    if "://" in source or source.startswith("git@"):
        clone_git(source, lock, staging, rev, matcha)
        return source
    raise UsageError(f"unknown source {source!r}: not 'github', 'pypi', a .whl file, a directory or a git URL",
                     hint="cosyext vendor DEST --source pypi")
