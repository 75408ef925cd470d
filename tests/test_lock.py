"""vendor.lock: every supported commit, coverage of what training imports, freshness against
patches/, and the rule that no other file repeats a commit, URL or package version."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cosyvoice_ext.cli import main
from cosyvoice_ext.upstream import lockfile, lockgen, patching, pin
from tests.conftest import MAIN, PIN

ROOT = Path(__file__).resolve().parent.parent


def test_lock_lists_both_supported_commits_newest_last(lock):
    assert [c.commit[:8] for c in lock.commits] == ["44316c34", "ace7c47f"]
    pin_c, main_c = lock.resolve(PIN), lock.resolve(MAIN)
    assert lock.newest is main_c and lock.resolve(None) is main_c
    assert pin_c.families == ["cosyvoice2"] and main_c.families == ["cosyvoice2", "cosyvoice3"]
    assert pin_c.pypi["sha256"] == "8a0cb77abdf74d6f185a2da384123e189671da41535671a6b50aae12eca405d3"
    assert main_c.pypi is None  # no wheel carries ace7c47
    assert pin_c.submodules[pin.MATCHA_PATH] == main_c.submodules[pin.MATCHA_PATH] == \
        "dd9105b34bf2be2230f4aa1e4769fb586a3c824e"
    assert main_c.rebased_from == pin_c.name
    # readable names and hash prefixes both resolve; ambiguity or garbage does not
    assert lock.resolve(pin_c.name) is pin_c and lock.find("ACE7C47") is main_c
    assert lock.find("abc") is None and lock.find("not-a-commit") is None


@pytest.mark.parametrize("rev", [PIN, MAIN])
def test_lock_is_current_against_patches(upstream_at, lock, rev):
    """Fails whenever a patch or a series changes without `cosyext lock` being re-run."""
    commit = lock.resolve(rev)
    regenerated = lockgen.regenerate(commit, upstream_at(rev, patched=False), patching.series_for(commit))
    assert regenerated.to_dict() == commit.to_dict(), "vendor.lock is stale: run 'cosyext lock' and commit it"


@pytest.mark.parametrize("rev", [PIN, MAIN])
def test_lock_records_every_patch_and_patched_file(lock, rev):
    commit = lock.resolve(rev)
    series = patching.series_for(commit)
    assert [p["name"] for p in commit.series] == [p.name for p in series]
    assert all(p["sha256"] == s.sha256 for p, s in zip(commit.series, series))
    assert set(commit.patched) == set(patching.touched_files(series))
    assert "cosyvoice/bin/train.py" not in commit.patched  # train.py stays upstream's file


def test_lock_check_command_detects_staleness(pristine_tree, tmp_path, capsys):
    stale = tmp_path / "vendor.lock"
    text = lockfile.default_lock_path().read_text()
    first_patch_sha = lockfile.load().resolve(PIN).series[0]["sha256"]
    stale.write_text(text.replace(first_patch_sha, "0" * 64))
    assert main(["lock", "--commit", PIN, "--upstream", str(pristine_tree), "--lock", str(stale), "--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    assert main(["lock", "--commit", PIN, "--upstream", str(pristine_tree), "--lock", str(stale)]) == 0
    assert stale.read_text() == text


def test_a_bad_lock_is_a_clear_error(tmp_path):
    from tests.helpers import run_cosyext

    bad = tmp_path / "vendor.lock"
    bad.write_bytes(b"\x00\xff random bytes")
    (tmp_path / "tree" / "cosyvoice").mkdir(parents=True)
    res = run_cosyext("status", "--upstream", str(tmp_path / "tree"), "--lock", str(bad))
    assert res.returncode == 2 and "not a valid TOML lock file" in res.stderr and "Traceback" not in res.stderr


def test_no_other_file_repeats_a_commit_url_or_package_version(lock):
    """The lock is the one source of truth: code, scripts and docs name commits by reading it."""
    needles = {lock.upstream_url, *lock.submodule_urls.values()}
    for c in lock.commits:
        needles |= {c.commit, c.commit[:12], *c.submodules.values()}
        if c.pypi:
            needles |= {f"{c.pypi['name']}=={c.pypi['version']}", c.pypi["sha256"], c.pypi["filename"]}
    offenders = []
    for f in sorted((ROOT / "cosyvoice_ext").rglob("*.py")) + sorted((ROOT / "hooks").glob("*.py")) + \
            sorted((ROOT / "scripts").iterdir()) + [ROOT / "pyproject.toml"]:
        text = f.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{f.relative_to(ROOT)}: {n}" for n in needles if n in text]
    assert offenders == []


TRAINING_MODULES = [
    "cosyvoice.utils.executor", "cosyvoice.utils.train_utils", "cosyvoice.utils.losses",
    "cosyvoice.dataset.dataset", "cosyvoice.dataset.processor", "cosyvoice.tokenizer.tokenizer",
    "cosyvoice.llm.llm", "cosyvoice.flow.flow", "cosyvoice.flow.flow_matching", "cosyvoice.flow.decoder",
    "cosyvoice.transformer.upsample_encoder", "cosyvoice.hifigan.generator", "matcha.utils.audio",
]
EXTRA_MODULES = {MAIN: ["cosyvoice.flow.DiT.dit", "cosyvoice.utils.onnx"]}


@pytest.mark.parametrize("rev", [PIN, MAIN])
def test_lock_covers_every_upstream_module_training_imports(upstream_at, lock, rev):
    tree = upstream_at(rev)
    modules = TRAINING_MODULES + EXTRA_MODULES.get(rev, [])
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import runpy; sys.argv=['train.py','--help']\n"
        "try: runpy.run_path('cosyvoice/bin/train.py', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print('\\n'.join(sorted({getattr(m, '__file__', None) or '' for m in list(sys.modules.values())})))\n"
    )
    env_path = f"{tree}:{tree / pin.MATCHA_PATH}"
    res = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    rel = {str(Path(line).relative_to(tree)) for line in res.stdout.splitlines() if line.startswith(str(tree))}
    commit = lock.resolve(rev)
    assert "cosyvoice/bin/train.py" in commit.files
    assert rel, "no upstream module was imported"
    assert rel <= set(commit.files), sorted(rel - set(commit.files))


def test_readme_supported_upstreams_table_matches_the_lock(lock):
    """Docs match the code: one README row per supported commit, with its name, hash and families."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Supported upstreams"):]
    rows = [line for line in table.split("\n\n", 2)[1].splitlines()[2:] if line.startswith("|")]
    assert len(rows) == len(lock.commits)
    for c in lock.commits:
        row = next(r for r in rows if f"`{c.name}`" in r)
        assert f"`{c.commit[:8]}`" in row, row
        for fam in c.families:
            assert {"cosyvoice2": "CosyVoice2", "cosyvoice3": "CosyVoice3"}[fam] in row, row
        assert (f"patches/{c.patches_dir}" in row) and ("(default)" in row) == (c is lock.newest), row
