"""vendor.lock: pins, coverage of what training imports, and freshness against patches/."""

from __future__ import annotations

import subprocess
import sys

from cosyvoice_ext import lockfile, lockgen, patching, pin
from cosyvoice_ext.cli import main

PINNED_COSYVOICE = "44316c347582d1076097c02eae549526aa80f646"
PINNED_MATCHA = "dd9105b34bf2be2230f4aa1e4769fb586a3c824e"


def test_lock_pins_upstream_and_submodule(lock):
    assert lock.upstream_commit == PINNED_COSYVOICE
    assert lock.submodules[pin.MATCHA_PATH]["commit"] == PINNED_MATCHA
    assert lock.pypi["sha256"] == "8a0cb77abdf74d6f185a2da384123e189671da41535671a6b50aae12eca405d3"


def test_lock_is_current_against_patches(pristine_tree, lock):
    """Fails whenever a patch or the series changes without `cosyext lock` being re-run."""
    regenerated = lockgen.regenerate(lock, pristine_tree, patching.read_series())
    assert regenerated.to_toml() == lockfile.default_lock_path().read_text(encoding="utf-8"), \
        "vendor.lock is stale: run 'cosyext lock' and commit it"


def test_lock_records_every_patch_and_patched_file(lock):
    series = patching.read_series()
    assert [p["name"] for p in lock.patches] == [p.name for p in series]
    assert all(p["sha256"] == s.sha256 for p, s in zip(lock.patches, series))
    assert set(lock.patched) == set(patching.touched_files(series))


def test_lock_check_command_detects_staleness(pristine_tree, tmp_path, capsys):
    stale = tmp_path / "vendor.lock"
    text = lockfile.default_lock_path().read_text()
    stale.write_text(text.replace(lockfile.load().patches[0]["sha256"], "0" * 64))
    assert main(["lock", "--upstream", str(pristine_tree), "--lock", str(stale), "--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    assert main(["lock", "--upstream", str(pristine_tree), "--lock", str(stale)]) == 0
    assert stale.read_text() == text


TRAINING_MODULES = [
    "cosyvoice.utils.executor", "cosyvoice.utils.train_utils", "cosyvoice.utils.losses",
    "cosyvoice.dataset.dataset", "cosyvoice.dataset.processor", "cosyvoice.tokenizer.tokenizer",
    "cosyvoice.llm.llm", "cosyvoice.flow.flow", "cosyvoice.flow.flow_matching", "cosyvoice.flow.decoder",
    "cosyvoice.transformer.upsample_encoder", "cosyvoice.hifigan.generator", "matcha.utils.audio",
]


def test_lock_covers_every_upstream_module_training_imports(upstream_tree, lock):
    code = (
        "import sys, importlib\n"
        f"for m in {TRAINING_MODULES!r}: importlib.import_module(m)\n"
        "import runpy; sys.argv=['train.py','--help']\n"
        "try: runpy.run_path(sys.argv[0] if False else 'cosyvoice/bin/train.py', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print('\\n'.join(sorted({getattr(m, '__file__', None) or '' for m in list(sys.modules.values())})))\n"
    )
    env_path = f"{upstream_tree}:{upstream_tree / pin.MATCHA_PATH}"
    res = subprocess.run([sys.executable, "-c", code], cwd=upstream_tree, capture_output=True, text=True,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    loaded = {line for line in res.stdout.splitlines() if line.startswith(str(upstream_tree))}
    rel = {str(__import__("pathlib").Path(f).relative_to(upstream_tree)) for f in loaded}
    assert "cosyvoice/bin/train.py" in lock.files
    assert rel, "no upstream module was imported"
    assert rel <= set(lock.files), sorted(rel - set(lock.files))
