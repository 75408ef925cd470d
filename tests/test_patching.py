"""apply-patches / status / revert on the real upstream tree: atomic, idempotent, never losing edits."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cosyvoice_ext.cli import main
from cosyvoice_ext.errors import LockError, PatchConflict, VerificationError
from cosyvoice_ext.upstream import lockgen, patching, pin
from cosyvoice_ext.upstream.patching import Patch
from tests.conftest import MAIN, PIN
from tests.helpers import run_cosyext, tree_digest

TRAIN_UTILS = "cosyvoice/utils/train_utils.py"
TRAIN_PY = "cosyvoice/bin/train.py"
# train.py's git blob id at each supported commit: the series never touches it
UPSTREAM_TRAIN_PY_BLOB = {PIN: "3e4016f5688507935ff5bd2a60dcd2a6a5295410", MAIN: "d650161c"}


@pytest.fixture
def pin_commit(lock):
    return lock.resolve(PIN)


def series(commit) -> list[Patch]:
    return patching.series_for(commit)


def with_series(lock, commit, patches: list[Patch], tmp_path):
    """A patches folder holding `patches` as `commit`'s series, and a lock that expects exactly them."""
    root = tmp_path / "patches"
    d = root / commit.patches_dir
    d.mkdir(parents=True)
    for p in patches:
        (d / p.name).write_bytes(p.path.read_bytes())
    (d / "series").write_text("".join(p.name + "\n" for p in patches))
    new = dataclasses.replace(commit, series=[{"name": p.name, "sha256": p.sha256} for p in patches])
    return root, dataclasses.replace(lock, commits=[new if c is commit else c for c in lock.commits])


@pytest.mark.parametrize("rev", [PIN, MAIN])
def test_apply_patches_then_train_py_is_byte_identical_upstream(upstream_at, lock, tmp_path, capsys, rev):
    import shutil

    root = tmp_path / "CosyVoice"
    shutil.copytree(upstream_at(rev, patched=False), root, symlinks=True)
    commit = lock.resolve(rev)
    assert main(["apply-patches", "--upstream", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"applied {len(series(commit))} patches for upstream {commit.label}" in out
    assert "recognised by its HEAD" in out
    data = (root / TRAIN_UTILS).read_bytes()
    assert commit.patched[TRAIN_UTILS].matches(data)
    assert pin.git_blob_id(data) == commit.patched[TRAIN_UTILS].blob
    assert pin.git_blob_id((root / TRAIN_PY).read_bytes()).startswith(UPSTREAM_TRAIN_PY_BLOB[rev])
    assert b"cosyext_relay" in data and b"group_join.options._timeout" not in data
    assert b"except ModuleNotFoundError" in data  # only a missing cosyvoice_ext means "not installed"


def test_second_apply_says_already_applied_and_changes_nothing(pristine_copy, capsys):
    assert main(["apply-patches", "--upstream", str(pristine_copy)]) == 0
    before = tree_digest(pristine_copy)
    capsys.readouterr()
    assert main(["apply-patches", "--upstream", str(pristine_copy)]) == 0
    assert "already applied" in capsys.readouterr().out
    assert tree_digest(pristine_copy) == before


def test_check_is_a_dry_run(pristine_copy, capsys):
    before = tree_digest(pristine_copy)
    assert main(["apply-patches", "--upstream", str(pristine_copy), "--check"]) == 0
    assert "check passed" in capsys.readouterr().out
    assert tree_digest(pristine_copy) == before


def _with_extra_patch(lock, commit, tmp_path, text: str):
    """The real series plus one more patch, and a lock that knows about it."""
    extra = tmp_path / "0099-broken.patch"
    extra.write_text(text)
    return with_series(lock, commit, series(commit) + [Patch(extra.name, extra)], tmp_path)


BROKEN = """Description: a patch whose context no longer matches upstream
---
--- a/cosyvoice/utils/train_utils.py
+++ b/cosyvoice/utils/train_utils.py
@@ -1,3 +1,3 @@
-this line is not in upstream
+neither is this one
 nor this
"""


def test_failing_patch_leaves_tree_byte_identical(pristine_copy, lock, pin_commit, tmp_path):
    patches_dir, new_lock = _with_extra_patch(lock, pin_commit, tmp_path, BROKEN)
    before = tree_digest(pristine_copy)
    with pytest.raises(PatchConflict) as exc:
        patching.apply_series(pristine_copy, new_lock, patches_dir=patches_dir)
    assert "0099-broken.patch" in str(exc.value) and "nothing was written" in str(exc.value)
    assert tree_digest(pristine_copy) == before


def test_edited_patched_file_is_named_and_kept(pristine_copy, capsys):
    target = pristine_copy / TRAIN_UTILS
    edited = target.read_bytes() + b"\n# my local tweak\n"
    target.write_bytes(edited)
    assert main(["apply-patches", "--upstream", str(pristine_copy)]) == 1
    err = capsys.readouterr().err
    assert TRAIN_UTILS in err and "nothing was changed" in err and "next:" in err
    assert target.read_bytes() == edited
    assert main(["revert", "--upstream", str(pristine_copy)]) == 1  # refuses too
    assert target.read_bytes() == edited


def test_drift_elsewhere_blocks_unless_allowed(pristine_copy, pin_commit, capsys):
    other = pristine_copy / "cosyvoice/dataset/dataset.py"
    other.write_bytes(other.read_bytes() + b"# edit\n")
    assert main(["apply-patches", "--upstream", str(pristine_copy)]) == 1
    assert "cosyvoice/dataset/dataset.py" in capsys.readouterr().err
    assert pin_commit.files[TRAIN_UTILS].matches((pristine_copy / TRAIN_UTILS).read_bytes())
    assert main(["apply-patches", "--upstream", str(pristine_copy), "--allow-drift"]) == 0
    assert pin_commit.patched[TRAIN_UTILS].matches((pristine_copy / TRAIN_UTILS).read_bytes())


def test_revert_restores_pristine(pristine_copy, pristine_tree, capsys):
    assert main(["apply-patches", "--upstream", str(pristine_copy)]) == 0
    assert main(["revert", "--upstream", str(pristine_copy)]) == 0
    assert tree_digest(pristine_copy) == tree_digest(pristine_tree)
    capsys.readouterr()
    assert main(["revert", "--upstream", str(pristine_copy)]) == 0
    assert "nothing to revert" in capsys.readouterr().out


def test_status_reports_each_state(pristine_copy, capsys):
    assert main(["apply-patches", "--upstream", str(pristine_copy)]) == 0
    (pristine_copy / "cosyvoice/flow/flow.py").write_text("# replaced\n")
    (pristine_copy / "cosyvoice/llm/llm.py").unlink()  # the tree's HEAD still says which commit it is
    capsys.readouterr()
    assert main(["status", "--upstream", str(pristine_copy), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"][TRAIN_UTILS] == "patched"
    assert doc["files"]["cosyvoice/flow/flow.py"] == "drifted"
    assert doc["files"]["cosyvoice/llm/llm.py"] == "missing"
    assert doc["counts"] == {"pristine": len(doc["files"]) - 4, "patched": 2, "patched-older": 0, "drifted": 1,
                             "missing": 1, "absent": 0}  # a git checkout has the inference files


def test_a_training_only_tree_without_inference_files_is_supported(pypi_wheel, lock, tmp_path, capsys):
    """The PyPI wheel carries no (matching) cosyvoice/cli files: such a tree trains, and says what it lacks."""
    root = tmp_path / "wheel-tree"
    assert main(["vendor", str(root), "--source", str(pypi_wheel), "--rev", PIN]) == 0
    capsys.readouterr()
    assert main(["apply-patches", "--upstream", str(root)]) == 0
    capsys.readouterr()
    assert main(["status", "--upstream", str(root), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    absent = sorted(f for f, st in doc["files"].items() if st == "absent")
    assert absent == sorted(p for p, h in lock.resolve(PIN).files.items() if h.optional) != []
    assert doc["supported"] and doc["counts"]["missing"] == 0


def test_missing_files_refused(pristine_copy, lock):
    (pristine_copy / "cosyvoice/llm/llm.py").unlink()
    with pytest.raises(VerificationError, match="cosyvoice/llm/llm.py"):
        patching.apply_series(pristine_copy, lock)


def test_changed_patch_file_is_refused(pristine_copy, lock, pin_commit, tmp_path):
    patches = series(pin_commit)
    patches_dir, _ = with_series(lock, pin_commit, patches, tmp_path)
    changed = patches_dir / pin_commit.patches_dir / patches[1].name
    changed.write_text(patches[1].text.replace("always shown", "always shown!"))
    with pytest.raises(LockError, match=patches[1].name):
        patching.apply_series(pristine_copy, lock, patches_dir=patches_dir)


def test_cli_errors_exit_2_with_next_step(tmp_path):
    res = run_cosyext("apply-patches", "--upstream", str(tmp_path / "nope"))
    assert res.returncode == 2
    assert "does not exist" in res.stderr and "next: cosyext vendor" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cosyext("-v", "apply-patches", "--upstream", str(tmp_path / "nope"))
    assert res.returncode != 0 and "Traceback" in res.stderr
    res = run_cosyext("apply-patches", "--bogus")
    assert res.returncode == 2 and "--help" in res.stderr


def _older_series(lock, commit, pristine_tree, tmp_path):
    """The current series minus its last patch, as an older cosyvoice-ext shipped it (patches + lock)."""
    older = series(commit)[:-1]
    patches_dir, _ = with_series(lock, commit, older, tmp_path)
    entry = lockgen.regenerate(commit, pristine_tree, patching.series_for(commit, patches_dir))
    return older, patches_dir, dataclasses.replace(lock, commits=[entry if c is commit else c for c in lock.commits])


def test_tree_patched_by_an_older_series_is_upgraded(pristine_copy, pristine_tree, lock, pin_commit, tmp_path, capsys):
    older, older_dir, older_lock = _older_series(lock, pin_commit, pristine_tree, tmp_path)
    patching.apply_series(pristine_copy, older_lock, patches_dir=older_dir)
    assert main(["status", "--upstream", str(pristine_copy)]) == 0
    out = capsys.readouterr().out
    assert "patched-older" in out and "upgrades it" in out
    assert main(["apply-patches", "--upstream", str(pristine_copy)]) == 0
    assert f"replacing an older series of {len(older)} patches" in capsys.readouterr().out
    for f, h in pin_commit.patched.items():
        assert h.matches((pristine_copy / f).read_bytes())
    assert main(["revert", "--upstream", str(pristine_copy)]) == 0
    assert tree_digest(pristine_copy) == tree_digest(pristine_tree)


def test_revert_of_an_older_series(pristine_copy, pristine_tree, lock, pin_commit, tmp_path):
    older, older_dir, older_lock = _older_series(lock, pin_commit, pristine_tree, tmp_path)
    patching.apply_series(pristine_copy, older_lock, patches_dir=older_dir)
    out = patching.revert_series(pristine_copy, lock)
    assert "older series" in out.message
    assert tree_digest(pristine_copy) == tree_digest(pristine_tree)
