"""Shared fixtures: the real upstream tree, assembled from the PyPI wheel that carries upstream's
bytes, verified against vendor.lock, and (for `upstream_tree`) patched by our series."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cosyvoice_ext import lockfile, patching, sources


@pytest.fixture(scope="session")
def lock() -> lockfile.Lock:
    return lockfile.load()


@pytest.fixture(scope="session")
def pypi_wheel(tmp_path_factory, lock) -> Path:
    """The pinned wheel, downloaded once per test session (pip's own cache makes repeats cheap)."""
    return sources.download_wheel(lock, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def pristine_tree(tmp_path_factory, lock, pypi_wheel) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "CosyVoice"
    sources.vendor(root, str(pypi_wheel), lock)
    return root


@pytest.fixture
def pristine_copy(pristine_tree, tmp_path) -> Path:
    """A private pristine tree a test may modify."""
    root = tmp_path / "CosyVoice"
    shutil.copytree(pristine_tree, root)
    return root


@pytest.fixture(scope="session")
def upstream_tree(tmp_path_factory, pristine_tree, lock) -> Path:
    """Pristine upstream with our patch series applied (read-only for tests)."""
    root = tmp_path_factory.mktemp("patched") / "CosyVoice"
    shutil.copytree(pristine_tree, root)
    patching.apply_series(root, lock, patching.read_series())
    return root
