"""The wheel a user installs carries every module, the built-in plugins, the patches and the lock."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("dist")
    # build from a copy: an in-tree build leaves *.egg-info behind, whose stale entry points would shadow the
    # installed ones for every later import of importlib.metadata run from the checkout
    src = tmp_path_factory.mktemp("src") / "cosyvoice-ext"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info",
                                                                            "build", "cosyext-demo"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True)
    return zipfile.ZipFile(next(out.glob("cosyvoice_ext-*.whl")))


def test_wheel_has_every_module_and_data_file(wheel):
    names = set(wheel.namelist())
    expected = {f"cosyvoice_ext/{p.relative_to(ROOT / 'cosyvoice_ext')}" for p in (ROOT / "cosyvoice_ext").rglob("*.py")
                if "__pycache__" not in p.parts}
    assert not (ROOT / "hooks").exists(), "built-in plugins live in cosyvoice_ext/builtin/"
    expected |= {f"cosyvoice_ext/patches/{p.relative_to(ROOT / 'patches')}" for p in (ROOT / "patches").rglob("*")
                 if p.suffix in (".patch", ".diff") or p.name in ("series", "vendor.lock")}
    assert any(n.endswith("/resolutions/0007-training-without-inference-imports.patch.diff") for n in expected)
    assert expected - names == set(), "pyproject.toml [tool.setuptools] packages misses these"
    lock = wheel.read("cosyvoice_ext/patches/vendor.lock")
    assert lock == (ROOT / "vendor.lock").read_bytes()


def test_wheel_carries_the_builtin_plugins_and_the_console_script(wheel):
    """Built-ins are modules of the package (registered by import, not entry points): no package-dir remapping."""
    from cosyvoice_ext.plugins import DEFAULT_PLUGINS

    meta = next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))
    text = wheel.read(meta).decode()
    assert "cosyext = cosyvoice_ext.cli:main" in text and "[cosyvoice_ext]" not in text
    names = set(wheel.namelist())
    for _, module in DEFAULT_PLUGINS:
        assert f"{module.replace('.', '/')}.py" in names
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"hooks"' not in pyproject and "cosyvoice_ext.hooks" not in pyproject
