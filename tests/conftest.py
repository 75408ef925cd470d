"""Shared fixtures: real upstream trees at every supported commit, vendored (hash-verified against
vendor.lock) from the upstream mirror — $COSYEXT_UPSTREAM_MIRROR, else the checkout's
../shared/upstream bundles, else GitHub — and, where asked, patched by that commit's series.

A test that cannot get upstream fails and says why; nothing is skipped."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

from cosyvoice_ext.errors import CosyextError
from cosyvoice_ext.upstream import lockfile, mirror, patching, sources

PIN = "44316c34"  # CosyVoice2 only, the commit a PyPI wheel carries
MAIN = "ace7c47"  # CosyVoice2 + CosyVoice3

#: fixtures that bring real upstream code or downloads: a test using any of them (directly or through
#: another fixture) is marked `upstream` automatically, so `-m "not slow and not upstream"` is the unit tier
UPSTREAM_FIXTURES = frozenset({"upstream_at", "upstream_source", "pypi_wheel", "pristine_tree", "upstream_tree",
                               "pristine_copy"})


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if UPSTREAM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.upstream)


@pytest.fixture(scope="session")
def lock() -> lockfile.Lock:
    return lockfile.load()


@pytest.fixture(scope="session")
def upstream_source() -> str:
    """Where tests get upstream from (see the module docstring)."""
    return mirror.default_source()


@pytest.fixture(scope="session")
def upstream_at(tmp_path_factory, lock, upstream_source) -> Callable[..., Path]:
    """`upstream_at(rev, patched=True)`: a session-wide tree at a supported commit (read-only for tests)."""
    trees: dict[tuple[str, bool], Path] = {}

    def get(rev: str, patched: bool = True) -> Path:
        commit = lock.resolve(rev)
        key = (commit.commit, patched)
        if key in trees:
            return trees[key]
        if not patched:
            root = tmp_path_factory.mktemp(f"pristine-{commit.short}") / "CosyVoice"
            try:
                sources.vendor(root, upstream_source, lock, rev=commit.commit)
            except CosyextError as exc:
                pytest.fail(f"cannot get upstream {commit.label} from {upstream_source!r}: {exc}\n"
                            f"  set ${mirror.MIRROR_ENV} to a folder holding CosyVoice.bundle and Matcha-TTS.bundle "
                            f"(or git mirrors); next: {exc.hint}", pytrace=False)
        else:
            root = tmp_path_factory.mktemp(f"patched-{commit.short}") / "CosyVoice"
            shutil.copytree(get(rev, patched=False), root, symlinks=True)
            patching.apply_series(root, lock)
        trees[key] = root
        return root

    return get


@pytest.fixture(scope="session")
def pypi_wheel(tmp_path_factory, lock) -> Path:
    """The wheel that carries the pin's files, downloaded once per test session (pip caches repeats)."""
    return sources.download_wheel(lock.resolve(PIN), tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def pristine_tree(upstream_at) -> Path:
    """Pristine upstream at the 2025 pin (CosyVoice2)."""
    return upstream_at(PIN, patched=False)


@pytest.fixture(scope="session")
def upstream_tree(upstream_at) -> Path:
    """The 2025 pin with its patch series applied (read-only for tests)."""
    return upstream_at(PIN)


@pytest.fixture
def pristine_copy(pristine_tree, tmp_path) -> Path:
    """A private pristine tree at the pin a test may modify."""
    root = tmp_path / "CosyVoice"
    shutil.copytree(pristine_tree, root, symlinks=True)
    return root
