"""`cosyext rebase`: the ace7c47 series in the repo is exactly what the command produces from the
upstream bundle (after the recorded conflict resolution), and a conflict stops with the patch, the
file, the hunk and the way to continue."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from cosyvoice_ext.upstream import lockfile, patching
from tests.conftest import MAIN, PIN
from tests.helpers import run_cosyext, tree_digest

ROOT = Path(__file__).resolve().parent.parent


def last_update(commit) -> str:
    text = (patching.series_dir(commit) / commit.series[0]["name"]).read_text()
    return re.search(r"^Last-Update: (\S+)$", text, re.M).group(1)


@pytest.fixture
def scratch(tmp_path):
    """A private copy of patches/ and vendor.lock for a rebase to write into."""
    shutil.copytree(ROOT / "patches", tmp_path / "patches")
    shutil.copy2(ROOT / "vendor.lock", tmp_path / "vendor.lock")
    return tmp_path


def rebase(scratch: Path, source: str, *args: str):
    return run_cosyext("rebase", "--source", source, "--workdir", str(scratch / "work"),
                       "--patches", str(scratch / "patches"), "--lock", str(scratch / "vendor.lock"), *args)


@pytest.mark.slow
def test_rerun_from_the_bundle_gives_byte_identical_series_and_lock(scratch, upstream_source, lock):
    main_commit = lock.resolve(MAIN)
    res = rebase(scratch, upstream_source, "--from", PIN, "--onto", MAIN[:7],
                 "--last-update", last_update(main_commit))
    assert res.returncode == 0, res.stderr
    assert f"rebased from {lock.resolve(PIN).name}" in res.stdout
    assert tree_digest(scratch / "patches") == tree_digest(ROOT / "patches")
    assert (scratch / "vendor.lock").read_bytes() == (ROOT / "vendor.lock").read_bytes()
    assert not (scratch / "work").exists()


@pytest.mark.slow
def test_conflict_stops_names_patch_file_hunk_then_continue_records_the_resolution(scratch, upstream_source, lock):
    main_commit = lock.resolve(MAIN)
    target = scratch / "patches" / main_commit.patches_dir
    recorded = (target / "resolutions").iterdir().__next__()
    shutil.rmtree(target)  # a first rebase onto ace7c47: no series, no recorded resolution
    lock_before = (scratch / "vendor.lock").read_bytes()
    res = rebase(scratch, upstream_source, "--from", PIN, "--onto", MAIN, "--last-update", last_update(main_commit))
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr
    assert "patch 0007-training-without-inference-imports.patch (7 of 8)" in err
    assert "conflict in cosyvoice/utils/class_utils.py" in err
    assert "hunk: @@ -35,7 +35,6 @@" in err
    assert "cosyext rebase --continue" in err and "cosyext rebase --abort" in err
    assert not target.exists() and (scratch / "vendor.lock").read_bytes() == lock_before
    # --continue refuses while markers remain
    cont = run_cosyext("rebase", "--continue", "--workdir", str(scratch / "work"))
    assert cont.returncode == 1 and "conflict markers remain" in cont.stderr
    # resolve as a maintainer would: upstream's new imports, minus the inference one, moved into the function
    f = scratch / "work/repo/cosyvoice/utils/class_utils.py"
    text = f.read_text()
    text = re.sub(r"<<<<<<< HEAD\n(.*?)from cosyvoice\.cli\.model import [^\n]*\n=======\n.*?>>>>>>> [^\n]*\n",
                  r"\1", text, flags=re.S)
    f.write_text(text.replace("import CosyVoiceModel, CosyVoice2Model\n",
                              "import CosyVoiceModel, CosyVoice2Model, CosyVoice3Model\n"))
    cont = run_cosyext("rebase", "--continue", "--workdir", str(scratch / "work"))
    assert cont.returncode == 0, cont.stderr
    for p in patching.read_series(target):
        assert p.path.read_bytes() == (ROOT / "patches" / main_commit.patches_dir / p.name).read_bytes(), p.name
    assert (target / "resolutions" / recorded.name).read_bytes() == recorded.read_bytes()
    new = lockfile.load(scratch / "vendor.lock").resolve(MAIN)
    assert new.families == ["cosyvoice2", "cosyvoice3"] and new.rebased_from == lock.resolve(PIN).name
    assert [p["name"] for p in new.series] == [p["name"] for p in main_commit.series][:8]
    assert new.files == main_commit.files


def test_abort_removes_only_the_work_dir(scratch, upstream_source, lock):
    shutil.rmtree(scratch / "patches" / lock.resolve(MAIN).patches_dir)
    before = tree_digest(scratch / "patches")
    res = rebase(scratch, upstream_source, "--from", PIN, "--onto", MAIN)
    assert res.returncode == 1 and (scratch / "work").is_dir()
    again = rebase(scratch, upstream_source, "--onto", MAIN)
    assert again.returncode == 2 and "already in progress" in again.stderr
    res = run_cosyext("rebase", "--abort", "--workdir", str(scratch / "work"))
    assert res.returncode == 0 and not (scratch / "work").exists()
    assert tree_digest(scratch / "patches") == before
    assert run_cosyext("rebase", "--abort", "--workdir", str(scratch / "work")).returncode == 2


def test_unknown_commit_and_bad_source_fail_cleanly(scratch, upstream_source, tmp_path):
    res = rebase(scratch, upstream_source, "--onto", "0123456789abcdef")
    assert res.returncode == 2 and "is not a commit of" in res.stderr and "Traceback" not in res.stderr
    assert not (scratch / "work").exists()
    res = rebase(scratch, str(tmp_path / "nowhere"), "--onto", MAIN)
    assert res.returncode == 2 and "is not a git bundle" in res.stderr
