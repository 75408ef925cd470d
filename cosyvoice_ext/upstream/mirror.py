"""Where upstream comes from without GitHub: git bundles and local mirrors.

A *mirror folder* holds one entry per repository, named after it: `CosyVoice.bundle` or
`CosyVoice.git` (a bare or normal git repository), and the same for `Matcha-TTS`. Tests, CI and
the demo find it through ``COSYEXT_UPSTREAM_MIRROR``; when that is unset they use the offline copy
a development checkout keeps beside it (``../shared/upstream``), else GitHub.
"""

from __future__ import annotations

import os
from pathlib import Path

MIRROR_ENV = "COSYEXT_UPSTREAM_MIRROR"
COSYVOICE = "CosyVoice"
MATCHA = "Matcha-TTS"
GITHUB = "github"
_BUNDLE_SIGNATURES = (b"# v2 git bundle", b"# v3 git bundle")


def is_bundle(path: Path) -> bool:
    """A git bundle file (`git bundle create`), recognised by its signature line, not its name."""
    try:
        with open(path, "rb") as f:
            return f.read(16).startswith(_BUNDLE_SIGNATURES)
    except OSError:
        return False


def is_git_repo(path: Path) -> bool:
    """A normal checkout (has .git) or a bare repository."""
    return path.is_dir() and ((path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir()))


def find_repo(folder: Path, name: str) -> Path | None:
    """The bundle or git repository for `name` in a mirror folder, if there is one."""
    for candidate in (folder / f"{name}.bundle", folder / f"{name}.git", folder / name):
        if candidate.is_file() and is_bundle(candidate):
            return candidate
        if is_git_repo(candidate):
            return candidate
    return None


def is_mirror_folder(path: Path) -> bool:
    return path.is_dir() and not is_git_repo(path) and find_repo(path, COSYVOICE) is not None


def sibling_matcha(source: Path) -> Path | None:
    """The Matcha-TTS bundle/repository next to a CosyVoice bundle/repository, if any."""
    return find_repo(source.parent, MATCHA)


def checkout_shared() -> Path | None:
    """The `shared/upstream` folder beside this source checkout, or beside one of its parents (a CI
    clone may sit deeper than the development checkout); meaningful for a development install only."""
    checkout = Path(__file__).resolve().parents[2]
    for parent in checkout.parents:
        candidate = parent / "shared" / "upstream"
        if find_repo(candidate, COSYVOICE) is not None:
            return candidate
    return None


def default_source() -> str:
    """The upstream source tests and the demo use: $COSYEXT_UPSTREAM_MIRROR, else the checkout's
    ``../shared/upstream`` when it exists, else GitHub."""
    env = os.environ.get(MIRROR_ENV, "").strip()
    if env:
        return env
    shared = checkout_shared()
    return str(shared) if shared is not None else GITHUB


def git_repos(source: str) -> tuple[str, str | None] | None:
    """(CosyVoice repository to clone, Matcha-TTS repository or None) for a git bundle, a git
    repository or a mirror folder given as --source; None when `source` is none of those.

    A Matcha-TTS bundle or repository is found inside a mirror folder or beside a CosyVoice one.
    """
    path = Path(source).expanduser()
    if is_mirror_folder(path):
        repo, matcha = find_repo(path, COSYVOICE), find_repo(path, MATCHA)
    elif (path.is_file() and is_bundle(path)) or is_git_repo(path):
        repo, matcha = path, sibling_matcha(path.resolve())
    else:
        return None
    return str(repo.resolve()), str(matcha.resolve()) if matcha else None
