"""`cosyext vendor`: any supported commit from any source, verified file by file before DEST is written."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import git
import pytest

from cosyvoice_ext.cli import main
from cosyvoice_ext.errors import UsageError, VerificationError
from cosyvoice_ext.upstream import mirror, pin, sources
from cosyvoice_ext.upstream.tree import recognise
from tests.conftest import MAIN, PIN
from tests.helpers import default_signals, run_cosyext, tree_digest


@pytest.fixture
def bundle_dir(upstream_source) -> Path:
    """The mirror folder holding CosyVoice.bundle and Matcha-TTS.bundle."""
    folder = Path(upstream_source)
    if mirror.find_repo(folder, mirror.COSYVOICE) is None:
        pytest.fail(f"these tests need an offline mirror folder; {upstream_source!r} is not one "
                    f"(set ${mirror.MIRROR_ENV})", pytrace=False)
    return folder


def test_default_is_the_newest_supported_commit_from_a_bundle_file(bundle_dir, lock, tmp_path, capsys):
    dest = tmp_path / "CosyVoice"
    bundle = mirror.find_repo(bundle_dir, mirror.COSYVOICE)
    assert main(["vendor", str(dest), "--source", str(bundle)]) == 0  # Matcha-TTS.bundle beside it is found
    newest = lock.newest
    out = capsys.readouterr().out
    assert f"vendored upstream {newest.label}" in out and f"{len(newest.files)} locked files verified" in out
    assert git.Repo(dest).head.commit.hexsha == newest.commit
    for rel, h in newest.files.items():
        assert pin.git_blob_id((dest / rel).read_bytes()) == h.blob, rel
    assert (dest / "third_party/Matcha-TTS/matcha/utils/audio.py").is_file()
    assert recognise(dest, lock).commit is newest


@pytest.mark.parametrize("rev_of", [lambda c: c.name, lambda c: c.commit[:8]])
def test_rev_by_name_or_hash_prefix_from_a_mirror_folder(bundle_dir, lock, tmp_path, rev_of):
    old = lock.resolve(PIN)
    dest = tmp_path / "CosyVoice"
    assert main(["vendor", str(dest), "--source", str(bundle_dir), "--rev", rev_of(old)]) == 0
    assert git.Repo(dest).head.commit.hexsha == old.commit
    assert recognise(dest, lock).commit is old


def test_mirror_env_is_the_default_source(bundle_dir, lock, tmp_path):
    env = {**os.environ, mirror.MIRROR_ENV: str(bundle_dir)}
    res = run_cosyext("vendor", str(tmp_path / "up"), env=env)
    assert res.returncode == 0, res.stderr
    assert f"from mirror folder {bundle_dir}" in res.stdout


def test_unknown_rev_lists_the_supported_ones(tmp_path, lock):
    res = run_cosyext("vendor", str(tmp_path / "up"), "--rev", "deadbeef")
    assert res.returncode == 2
    assert "not a supported upstream commit" in res.stderr and lock.resolve(PIN).name in res.stderr
    assert "cosyext rebase" in res.stderr and not (tmp_path / "up").exists()


def test_list_shows_commits_newest_first(lock):
    res = run_cosyext("vendor", "--list")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert lines[0].startswith(lock.newest.name) and "(default)" in lines[0]
    assert "cosyvoice3" in lines[0] and "PyPI" in lines[1]


def test_vendor_from_wheel_file(pypi_wheel, lock, tmp_path, capsys):
    dest = tmp_path / "CosyVoice"
    old = lock.resolve(PIN)
    assert main(["vendor", str(dest), "--source", str(pypi_wheel), "--rev", PIN]) == 0
    inference = [rel for rel, h in old.files.items() if h.optional]
    assert inference  # upstream's cli/ files: the wheel carries other versions of them
    out = capsys.readouterr().out
    assert f"{len(old.files) - len(inference)} locked files verified; {len(inference)} inference file(s)" in out
    assert "'cosyext synth' and 'cosyext eval' need a git source" in out
    for rel, h in old.files.items():
        if h.optional:
            assert not (dest / rel).exists(), rel  # never the wheel's differing copy
            continue
        assert pin.git_blob_id((dest / rel).read_bytes()) == h.blob, rel
    assert (dest / "third_party/Matcha-TTS/matcha/utils/audio.py").is_file()
    assert oct(dest.stat().st_mode & 0o777) != oct(0o700)
    assert recognise(dest, lock).commit is old  # a plain tree, recognised by content


@pytest.mark.upstream  # downloads the wheel from PyPI
def test_vendor_from_pypi_by_name(tmp_path, lock):
    res = run_cosyext("vendor", str(tmp_path / "up"), "--source", "pypi", "--rev", PIN)
    assert res.returncode == 0, res.stderr
    pypi = lock.resolve(PIN).pypi
    assert f"PyPI {pypi['name']}=={pypi['version']}" in res.stdout and "next: cosyext apply-patches" in res.stdout


def test_pypi_for_a_commit_no_wheel_carries_says_so(tmp_path, lock):
    res = run_cosyext("vendor", str(tmp_path / "up"), "--source", "pypi")  # default: the newest commit
    assert res.returncode == 2
    assert f"no PyPI package carries upstream {lock.newest.label}" in res.stderr and "next:" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_tampered_wheel_is_refused_and_dest_untouched(pypi_wheel, tmp_path):
    bad = tmp_path / pypi_wheel.name
    with zipfile.ZipFile(pypi_wheel) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "cosyvoice/llm/llm.py":
                data = data.replace(b"import torch", b"import torch  # tampered", 1)
            dst.writestr(item, data)
    res = run_cosyext("vendor", str(tmp_path / "dest"), "--source", str(bad), "--rev", PIN)
    assert res.returncode == 1
    assert "sha256" in res.stderr and "next:" in res.stderr
    assert not (tmp_path / "dest").exists()
    assert [p.name for p in tmp_path.iterdir()] == [bad.name]  # no staging directory left behind


def test_directory_source_with_an_edited_file_is_refused(pristine_tree, lock, tmp_path):
    src = tmp_path / "mirror"
    shutil.copytree(pristine_tree, src, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    (src / "cosyvoice/dataset/processor.py").write_text("# changed\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(VerificationError, match="differs: cosyvoice/dataset/processor.py"):
        sources.vendor(dest, str(src), lock, rev=PIN)
    assert dest.is_dir() and not any(dest.iterdir())


def test_existing_nonempty_dest_is_left_alone(pristine_tree, lock, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("user data")
    before = tree_digest(dest)
    with pytest.raises(UsageError, match="not empty"):
        sources.vendor(dest, str(pristine_tree), lock, rev=PIN)
    assert tree_digest(dest) == before


def test_bare_git_mirror_with_separate_submodule_mirror(bundle_dir, lock, tmp_path):
    for name in (mirror.COSYVOICE, mirror.MATCHA):
        subprocess.run(["git", "clone", "-q", "--bare", str(mirror.find_repo(bundle_dir, name)),
                        str(tmp_path / "mirrors" / f"{name}.git")], check=True)
    dest = tmp_path / "checkout"
    assert main(["vendor", str(dest), "--source", str(tmp_path / "mirrors" / "CosyVoice.git"), "--rev", MAIN,
                 "--matcha-source", str(tmp_path / "mirrors" / "Matcha-TTS.git")]) == 0
    assert recognise(dest, lock).commit is lock.resolve(MAIN)


def test_git_mirror_missing_the_commit_says_so(pristine_tree, lock, tmp_path):
    repo = git.Repo.init(tmp_path / "repo")
    shutil.copy2(pristine_tree / "cosyvoice/bin/train.py", tmp_path / "repo" / "train.py")
    repo.index.add(["train.py"])
    repo.index.commit("unrelated")
    res = run_cosyext("vendor", str(tmp_path / "dest"), "--source", str(tmp_path / "repo"))
    assert res.returncode == 2
    assert lock.newest.commit in res.stderr and "next:" in res.stderr
    assert not (tmp_path / "dest").exists()


def test_unreachable_git_url_fails_cleanly(tmp_path):
    res = run_cosyext("vendor", str(tmp_path / "dest"), "--source", "https://host.invalid/CosyVoice.git")
    assert res.returncode == 2
    assert "could not clone" in res.stderr and "bundle" in res.stderr and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []


# --- interrupted vendor: nothing left behind -----------------------------------------------------------

#: a slow source: git clones for real, then stalls before it returns (as a slow network would)
SLOW_GIT = """#!/bin/sh
case " $* " in *" clone "*) "{git}" "$@" || exit $?; touch "{ready}"; exec sleep 120;; esac
exec "{git}" "$@"
"""

#: `cosyext vendor --source pypi` whose download stalls once the wheel is in the temporary directory
SLOW_WHEEL = r"""
import shutil, sys, time
from pathlib import Path
from cosyvoice_ext.upstream import sources
wheel, ready = Path(sys.argv[1]), Path(sys.argv[2])
def slow_download(commit, into):
    shutil.copy2(wheel, into / wheel.name)
    ready.write_text(str(into))
    time.sleep(120)
sources.download_wheel = slow_download
from cosyvoice_ext.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    end = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the child never got there"
        time.sleep(0.05)


def _slow_git_env(tmp_path: Path, ready: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "git"
    shim.write_text(SLOW_GIT.format(git=shutil.which("git"), ready=ready))
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path / "tmp")}


@pytest.mark.parametrize("sig, rc, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_a_signal_mid_clone_leaves_nothing_beside_dest(bundle_dir, tmp_path, sig, rc, word):
    parent, ready = tmp_path / "parent", tmp_path / "ready"
    parent.mkdir()
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "cosyvoice_ext.cli", "vendor", str(parent / "CosyVoice"),
                             "--source", str(bundle_dir)], env=_slow_git_env(tmp_path, ready),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)
    _wait_for(ready, proc)
    assert [p.name for p in parent.iterdir()][0].startswith(".CosyVoice.cosyext-")  # the clone is staged
    os.kill(proc.pid, getattr(signal, sig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err
    assert err.strip().splitlines()[-1] == f"cosyext vendor: {word} ({sig})" and "Traceback" not in err
    assert list(parent.iterdir()) == [] and list((tmp_path / "tmp").iterdir()) == []
    time.sleep(0.5)
    assert list(parent.iterdir()) == []  # no git child left running that could write there again


def test_sigterm_mid_download_leaves_no_temporary_wheel_dir(pypi_wheel, tmp_path):
    parent, ready, tmp = tmp_path / "parent", tmp_path / "ready", tmp_path / "tmp"
    parent.mkdir()
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WHEEL, str(pypi_wheel), str(ready), "vendor",
                             str(parent / "CosyVoice"), "--source", "pypi", "--rev", PIN],
                            env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_signals)
    _wait_for(ready, proc)
    wheel_dir = Path(ready.read_text())
    assert wheel_dir.parent == tmp and (wheel_dir / pypi_wheel.name).is_file()
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "cosyext vendor: terminated (SIGTERM)"
    assert list(tmp.iterdir()) == [] and list(parent.iterdir()) == []


def test_the_next_vendor_removes_what_a_kill_9_left(bundle_dir, tmp_path, lock):
    parent, ready = tmp_path / "parent", tmp_path / "ready"
    parent.mkdir()
    (tmp_path / "tmp").mkdir()
    dest = parent / "CosyVoice"
    proc = subprocess.Popen([sys.executable, "-m", "cosyvoice_ext.cli", "vendor", str(dest), "--source",
                             str(bundle_dir)], env=_slow_git_env(tmp_path, ready), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _wait_for(ready, proc)
    os.kill(proc.pid, signal.SIGKILL)  # nothing can clean up after this
    proc.communicate(timeout=60)
    (left,) = parent.iterdir()
    (parent / ".other.cosyext-abcdefgh").mkdir()  # another DEST's: not ours to remove
    res = run_cosyext("vendor", str(dest), "--source", str(bundle_dir))
    assert res.returncode == 0, res.stderr
    assert f"removing {left}" in res.stderr
    assert sorted(p.name for p in parent.iterdir()) == [".other.cosyext-abcdefgh", "CosyVoice"]
    assert recognise(dest, lock).commit is lock.newest
