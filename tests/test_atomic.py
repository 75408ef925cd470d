"""apply-patches and revert are atomic across files: an error or a crash between two file replacements
never leaves a mixed tree for good. Problems from inside are found before anything is written, a
journal is rolled forward or back by the next run, and one command at a time works on a tree."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cosyvoice_ext.cli import main
from cosyvoice_ext.errors import EnvironmentProblem, PatchConflict
from cosyvoice_ext.upstream import journal, treelock
from tests.conftest import MAIN
from tests.helpers import default_signals, tree_digest

JOURNAL = Path(".cosyext/journal/journal.json")

#: `cosyext ARGS...` in a child that stops right after its Nth replacement of a tree file (outside
#: .cosyext), says so in READY and waits for GO: a real process paused between two replacements.
PAUSING = r"""
import os, sys, time
from pathlib import Path
root, n, ready, go = Path(sys.argv[1]).resolve(), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
real, count = os.replace, [0]
def replace(src, dst, *a, **k):
    real(src, dst, *a, **k)
    p = Path(os.path.abspath(dst))
    if root in p.parents and ".cosyext" not in p.relative_to(root).parts:
        count[0] += 1
        if count[0] == n:
            ready.write_text(str(os.getpid()))
            while not go.exists():
                time.sleep(0.02)
os.replace = replace
from cosyvoice_ext.cli import main
sys.exit(main(sys.argv[5:]))
"""


# --- helpers -----------------------------------------------------------------------------------

def state(root: Path, commit) -> str:
    """'pristine', 'patched' or 'mixed', judged on every file the series touches."""
    datas = {f: (root / f).read_bytes() for f in commit.patched}
    if all(commit.files[f].matches(d) for f, d in datas.items()):
        return "pristine"
    if all(commit.patched[f].matches(d) for f, d in datas.items()):
        return "patched"
    return "mixed"


def failing_replace(monkeypatch, root: Path, after: int, times: int | None = None) -> None:
    """os.replace fails (EIO) for tree files after `after` successful ones: `times` times, or for good."""
    real, n = os.replace, {"ok": 0, "failed": 0}
    root = root.resolve()

    def replace(src, dst, *a, **k):
        p = Path(os.path.abspath(dst))
        if root in p.parents and ".cosyext" not in p.relative_to(root).parts:
            if n["ok"] >= after and (times is None or n["failed"] < times):
                n["failed"] += 1
                raise OSError(errno.EIO, "Input/output error (injected)", str(dst))
            n["ok"] += 1
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


def wait_for(path: Path, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child exited ({proc.returncode}) before {what}: {proc.communicate()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Paused:
    """A cosyext command in a child process, paused right after its Nth replacement of a tree file."""

    def __init__(self, tmp: Path, root: Path, n: int, *args: str) -> None:
        self.ready, self.go = tmp / f"ready-{n}", tmp / f"go-{n}"
        self.out, self.err = tmp / f"out-{n}", tmp / f"err-{n}"
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.proc = subprocess.Popen([sys.executable, "-c", PAUSING, str(root), str(n), str(self.ready),
                                          str(self.go), *args], stdout=o, stderr=e,
                                          preexec_fn=default_signals)
        wait_for(self.ready, self.proc, f"replacement {n}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def resume(self) -> tuple[int, str, str]:
        self.go.write_text("go")
        rc = self.proc.wait(120)
        return rc, self.out.read_text(), self.err.read_text()


def cosyext(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cosyvoice_ext.cli", *args], capture_output=True, text=True)


@pytest.fixture
def main_copy(upstream_at, tmp_path) -> Path:
    """A private pristine tree at the 2026 commit (its series touches 4 files: room for a crash between)."""
    root = tmp_path / "CosyVoice"
    shutil.copytree(upstream_at(MAIN, patched=False), root, symlinks=True)
    return root


@pytest.fixture
def main_commit(lock):
    return lock.resolve(MAIN)


# --- an error between two replacements --------------------------------------------------------

def test_an_error_between_replacements_is_rolled_back_at_once(main_copy, main_commit, monkeypatch, capsys):
    before = tree_digest(main_copy)
    failing_replace(monkeypatch, main_copy, after=2, times=1)
    assert main(["apply-patches", "--upstream", str(main_copy)]) == 2
    err = capsys.readouterr().err
    assert "Input/output error (injected)" in err and "rolled back" in err and "Traceback" not in err
    assert tree_digest(main_copy) == before  # the two files already replaced are back, no journal or record left
    assert main(["apply-patches", "--upstream", str(main_copy)]) == 0
    assert state(main_copy, main_commit) == "patched"


def test_a_lasting_error_leaves_a_journal_that_the_next_status_rolls_forward(main_copy, main_commit, monkeypatch,
                                                                             capsys):
    failing_replace(monkeypatch, main_copy, after=2)  # the rollback fails too: as bad as a crash
    assert main(["apply-patches", "--upstream", str(main_copy)]) == 2
    err = capsys.readouterr().err
    assert "journal" in err and "next run" in err and "Traceback" not in err
    assert state(main_copy, main_commit) == "mixed"
    doc = json.loads((main_copy / JOURNAL).read_text())
    assert doc["command"] == "apply-patches"
    assert sorted(e["path"] for e in doc["files"]) == sorted(main_commit.patched)
    for e in doc["files"]:  # every file with its old and new sha256, and where its new bytes are staged
        assert e["old_sha256"] == main_commit.files[e["path"]].sha256
        assert e["new_sha256"] == main_commit.patched[e["path"]].sha256
        staged = main_copy / JOURNAL.parent / e["staged"]
        assert staged.is_file() or main_commit.patched[e["path"]].matches((main_copy / e["path"]).read_bytes())
    monkeypatch.undo()
    assert main(["status", "--upstream", str(main_copy)]) == 0
    out = capsys.readouterr().out
    assert "rolled forward" in out and "patch series applied" in out
    assert state(main_copy, main_commit) == "patched"
    assert not (main_copy / JOURNAL.parent).exists()
    assert main(["revert", "--upstream", str(main_copy)]) == 0  # the record was completed too


def test_an_interrupted_revert_is_finished_before_the_next_apply(main_copy, main_commit, monkeypatch, capsys):
    assert main(["apply-patches", "--upstream", str(main_copy)]) == 0
    failing_replace(monkeypatch, main_copy, after=1)
    assert main(["revert", "--upstream", str(main_copy)]) == 2
    assert state(main_copy, main_commit) == "mixed"
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["apply-patches", "--upstream", str(main_copy)]) == 0
    out = capsys.readouterr().out
    assert "interrupted 'cosyext revert'" in out and "rolled forward" in out and "applied 10 patches" in out
    assert state(main_copy, main_commit) == "patched"


# --- kill -9 between two replacements -----------------------------------------------------------

@pytest.mark.parametrize("command, start, after", [("apply-patches", "pristine", "patched"),
                                                   ("revert", "patched", "pristine")])
def test_kill_9_between_replacements_then_the_next_run_rolls_forward(main_copy, main_commit, tmp_path, command, start,
                                                                     after):
    if start == "patched":
        assert cosyext("apply-patches", "--upstream", str(main_copy)).returncode == 0
    child = Paused(tmp_path, main_copy, 2, command, "--upstream", str(main_copy))
    child.kill9()
    assert state(main_copy, main_commit) == "mixed"  # what a crash leaves: 2 of 4 files replaced
    assert (main_copy / JOURNAL).is_file()
    res = cosyext("status", "--upstream", str(main_copy))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"interrupted 'cosyext {command}' had replaced 2 of 4 file(s); rolled forward" in res.stdout
    assert ("patch series applied" if after == "patched" else "pristine upstream") in res.stdout
    assert state(main_copy, main_commit) == after and not (main_copy / JOURNAL.parent).exists()
    res = cosyext("status", "--upstream", str(main_copy), "--format", "json")
    assert res.returncode == 0 and json.loads(res.stdout)["recovered"] is None


@pytest.mark.parametrize("sig, rc", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_between_replacements_rolls_back_at_once(main_copy, tmp_path, sig, rc):
    before = tree_digest(main_copy)
    child = Paused(tmp_path, main_copy, 2, "apply-patches", "--upstream", str(main_copy))
    os.kill(child.proc.pid, sig)
    assert child.proc.wait(60) == rc
    err = child.err.read_text()
    assert err.strip().splitlines()[-1] == f"cosyext apply-patches: {'terminated' if rc == 143 else 'interrupted'} " \
        f"({sig.name})" and "Traceback" not in err
    assert tree_digest(main_copy) == before  # rolled back: no journal, no record, no half-patched file


def test_staged_bytes_lost_after_a_crash_rolls_back(main_copy, main_commit, tmp_path):
    Paused(tmp_path, main_copy, 1, "apply-patches", "--upstream", str(main_copy)).kill9()
    doc = json.loads((main_copy / JOURNAL).read_text())
    not_yet = [e for e in doc["files"] if (main_copy / JOURNAL.parent / e["staged"]).is_file()]
    (main_copy / JOURNAL.parent / not_yet[-1]["staged"]).unlink()  # cannot finish: undo instead
    res = cosyext("apply-patches", "--upstream", str(main_copy), "--check")
    assert res.returncode == 0, res.stderr
    assert "had replaced 1 of 4 file(s); rolled back" in res.stdout and "check passed" in res.stdout
    assert state(main_copy, main_commit) == "pristine"


def test_a_file_edited_after_the_crash_stops_recovery_and_status_says_so(main_copy, main_commit, tmp_path):
    Paused(tmp_path, main_copy, 2, "apply-patches", "--upstream", str(main_copy)).kill9()
    doc = json.loads((main_copy / JOURNAL).read_text())
    edited = doc["files"][0]["path"]
    (main_copy / edited).write_bytes((main_copy / edited).read_bytes() + b"# my edit\n")
    for command in ("status", "apply-patches", "revert"):
        res = cosyext(command, "--upstream", str(main_copy))
        assert res.returncode == 1, (command, res.stdout, res.stderr)
        assert "series applied" not in res.stdout and "Traceback" not in res.stderr
        assert edited in res.stderr and "match neither" in res.stderr and "next:" in res.stderr
    assert (main_copy / JOURNAL).is_file()  # kept until the user decides
    assert (main_copy / edited).read_bytes().endswith(b"# my edit\n")


# --- found before anything is written -------------------------------------------------------------

def _cosyext_is_a_file(root: Path) -> str:
    shutil.rmtree(root / ".cosyext", ignore_errors=True)  # (a patched tree is still recognised by content)
    (root / ".cosyext").write_text("not a directory\n")
    return ".cosyext"


def _read_only_file(root: Path) -> str:
    (root / "cosyvoice/utils/train_utils.py").chmod(0o444)  # the last file of the series
    return "cosyvoice/utils/train_utils.py"


def _read_only_directory(root: Path) -> str:
    (root / "cosyvoice/utils").chmod(0o555)
    return "cosyvoice/utils"


def _journal_is_a_file(root: Path) -> str:
    (root / ".cosyext").mkdir(exist_ok=True)
    (root / ".cosyext/journal").write_text("mine\n")
    return ".cosyext/journal"


@pytest.mark.parametrize("sabotage", [_cosyext_is_a_file, _read_only_file, _read_only_directory, _journal_is_a_file])
@pytest.mark.parametrize("command", ["apply-patches", "revert"])
def test_problems_inside_the_tree_are_found_before_anything_is_written(main_copy, sabotage, command, capsys):
    if command == "revert":
        assert main(["apply-patches", "--upstream", str(main_copy)]) == 0
    named = sabotage(main_copy)
    before = tree_digest(main_copy)
    try:
        assert main([command, "--upstream", str(main_copy)]) == 2
        err = capsys.readouterr().err
        assert named in err and "nothing was changed" in err and "next:" in err and "Traceback" not in err
        assert tree_digest(main_copy) == before
    finally:
        (main_copy / "cosyvoice/utils").chmod(0o755)


def test_a_directory_where_an_old_version_put_its_temp_file_is_left_alone(main_copy, main_commit):
    mine = main_copy / "cosyvoice/utils/.train_utils.py.cosyext-tmp"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["apply-patches", "--upstream", str(main_copy)]) == 0
    assert state(main_copy, main_commit) == "patched" and (mine / "notes.txt").read_text() == "mine"


# --- one command at a time ------------------------------------------------------------------------

def test_a_second_apply_waits_for_the_first_and_neither_tracebacks(main_copy, main_commit, tmp_path):
    first = Paused(tmp_path, main_copy, 1, "apply-patches", "--upstream", str(main_copy))
    err2 = tmp_path / "second.err"
    with open(err2, "w") as e:
        second = subprocess.Popen([sys.executable, "-m", "cosyvoice_ext.cli", "apply-patches", "--upstream",
                                   str(main_copy)], stdout=subprocess.PIPE, stderr=e, text=True)
    end = time.monotonic() + 60
    while "waiting for it" not in err2.read_text():
        assert second.poll() is None and time.monotonic() < end, err2.read_text()
        time.sleep(0.05)
    time.sleep(0.5)
    assert second.poll() is None  # still waiting: the first holds the tree
    rc, out, err = first.resume()
    assert rc == 0 and "applied 10 patches" in out and "Traceback" not in err
    out2, _ = second.communicate(timeout=120)
    assert second.returncode == 0 and "already applied" in out2 and "Traceback" not in err2.read_text()
    assert state(main_copy, main_commit) == "patched"


def test_the_lock_gives_up_with_a_clear_error(main_copy, tmp_path):
    first = Paused(tmp_path, main_copy, 1, "apply-patches", "--upstream", str(main_copy))
    with pytest.raises(EnvironmentProblem, match="another cosyext command is still working on"):
        with treelock.locked(main_copy, wait=0.3):
            pass
    assert first.resume()[0] == 0


# --- hints name git only for git trees --------------------------------------------------------------

def test_a_plain_tree_with_an_empty_git_dir_gets_no_git_advice(upstream_at, tmp_path, capsys):
    root = tmp_path / "tree"
    shutil.copytree(upstream_at(MAIN, patched=False), root, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    subprocess.run(["git", "init", "-q", str(root)], check=True)  # the user's own repository, no commit yet
    edited = root / "cosyvoice/utils/onnx.py"
    edited.write_bytes(edited.read_bytes() + b"# mine\n")
    assert main(["apply-patches", "--upstream", str(root), "--allow-drift"]) == 1
    err = capsys.readouterr().err
    assert "cosyvoice/utils/onnx.py" in err and "next:" in err and "git" not in err.split("next:")[1]


# --- a partly patched tree without a journal (an older cosyvoice-ext crashed, a file copied by hand) ----

@pytest.mark.parametrize("command, after", [("apply-patches", "patched"), ("revert", "pristine")])
def test_a_partly_patched_tree_without_a_journal_is_finished_or_reverted(upstream_at, main_commit, tmp_path, capsys,
                                                                         command, after):
    root = tmp_path / "tree"
    shutil.copytree(upstream_at(MAIN), root, symlinks=True)
    shutil.rmtree(root / ".cosyext")  # as an older cosyvoice-ext killed mid-way would leave it: no journal
    pristine = upstream_at(MAIN, patched=False)
    for f in ("cosyvoice/utils/onnx.py", "cosyvoice/llm/llm.py"):  # two of the four files back to upstream
        shutil.copy2(pristine / f, root / f)
    assert main(["status", "--upstream", str(root)]) == 1
    out = capsys.readouterr().out
    assert "PARTLY patched: 2 of the 4" in out and "series applied" not in out
    assert main([command, "--upstream", str(root)]) == 0
    out = capsys.readouterr().out
    assert "partly applied" in out and f"{'applied' if after == 'patched' else 'reverted'} 10 patches" in out
    assert state(root, main_commit) == after
    assert main(["status", "--upstream", str(root)]) == 0


# --- the journal itself (unit tier: a small tree, no upstream) ---------------------------------------

@pytest.fixture
def small(tmp_path) -> Path:
    root = tmp_path / "tree"
    for i in range(3):
        (root / f"d{i}").mkdir(parents=True)
        (root / f"d{i}/f.py").write_bytes(b"old %d\n" % i)
    return root


def _change(root: Path, monkeypatch=None, after: int | None = None, times: int | None = None) -> None:
    old = {f"d{i}/f.py": (root / f"d{i}/f.py").read_bytes() for i in range(3)}
    new = {f: d.replace(b"old", b"new") for f, d in old.items()}
    if monkeypatch is not None:
        failing_replace(monkeypatch, root, after, times)
    journal.commit(root, "apply-patches", old, new, record=lambda d: (d.mkdir(), (d / "state.json").write_text("{}")))


def _contents(root: Path) -> set[bytes]:
    return {(root / f"d{i}/f.py").read_bytes()[:3] for i in range(3)}


def test_journal_commit_replaces_every_file_and_the_record(small):
    _change(small)
    assert _contents(small) == {b"new"} and (small / ".cosyext/applied/state.json").is_file()
    assert sorted(p.name for p in (small / ".cosyext").iterdir()) == ["applied"]


def test_journal_recovery_prefers_forward_then_back(small, monkeypatch):
    with pytest.raises(EnvironmentProblem, match="next run"):
        _change(small, monkeypatch, after=1)
    monkeypatch.undo()
    assert _contents(small) == {b"old", b"new"}
    doc = json.loads((small / JOURNAL).read_text())
    staged = [small / JOURNAL.parent / e["staged"] for e in doc["files"]]
    assert [p.is_file() for p in staged] == [False, True, True]  # the first one was renamed into place
    staged[2].write_bytes(b"tampered\n")  # a staged copy that no longer hashes right cannot be finished
    assert "rolled back" in journal.recover(small)
    assert _contents(small) == {b"old"} and not (small / ".cosyext").exists()
    assert journal.recover(small) is None


def test_journal_refuses_a_file_that_changed_before_the_commit(small):
    old = {"d0/f.py": b"not what is there\n"}
    with pytest.raises(PatchConflict, match="changed while"):
        journal.commit(small, "apply-patches", old, {"d0/f.py": b"new\n"}, record=None)
    assert _contents(small) == {b"old"} and not (small / ".cosyext").exists()


def test_an_unfinished_staging_area_is_discarded(small):
    (small / ".cosyext/journal/new").mkdir(parents=True)  # a crash before the journal was written
    assert "changed nothing yet" in journal.recover(small)
    assert not (small / ".cosyext").exists()


def test_tree_lock_is_reentrant_and_released(tmp_path):
    with treelock.locked(tmp_path):
        with treelock.locked(tmp_path):
            assert treelock.is_locked(tmp_path)
        assert treelock.is_locked(tmp_path)
    assert not treelock.is_locked(tmp_path)


def test_a_journal_naming_a_path_outside_the_tree_is_refused(small, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    jdir = small / ".cosyext/journal"
    (jdir / "new").mkdir(parents=True)
    (jdir / "new/0").write_text("evil")
    (jdir / "journal.json").write_text(json.dumps({"version": 1, "command": "apply-patches", "record": "remove",
        "files": [{"path": "../outside.txt", "old_sha256": "0" * 64, "new_sha256": "1" * 64, "staged": "new/0",
                   "backup": "old/0", "mode": 420}]}))
    with pytest.raises(PatchConflict, match="leaves the tree"):
        journal.recover(small)
    assert outside.read_text() == "keep me" and (jdir / "journal.json").is_file()
