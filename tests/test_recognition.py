"""apply-patches / status / revert recognise which supported commit a tree is at, by content, and
give one clear message for a tree at no supported commit."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cosyvoice_ext.cli import main
from cosyvoice_ext.upstream import mirror
from tests.conftest import MAIN, PIN
from tests.helpers import tree_digest


def plain_copy(src, dest):
    """The tree without any .git: only content can tell its commit."""
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns(".git", ".cosyext"))
    return dest


@pytest.mark.parametrize("rev", [PIN, MAIN])
def test_plain_directory_is_recognised_by_content_and_gets_its_own_series(upstream_at, lock, tmp_path, capsys, rev):
    root = plain_copy(upstream_at(rev, patched=False), tmp_path / "tree")
    commit = lock.resolve(rev)
    assert main(["apply-patches", "--upstream", str(root)]) == 0
    out = capsys.readouterr().out
    assert "plain directory" in out and f"supported upstream {commit.label}, recognised by content" in out
    for f, h in commit.patched.items():
        assert h.matches((root / f).read_bytes()), f
    assert main(["status", "--upstream", str(root), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["supported"] and doc["commit"] == commit.commit and doc["counts"]["patched"] == len(commit.patched)
    assert main(["revert", "--upstream", str(root)]) == 0
    assert tree_digest(root) == tree_digest(plain_copy(upstream_at(rev, patched=False), tmp_path / "again"))


@pytest.fixture
def unsupported_checkout(upstream_source, lock, tmp_path):
    """A git checkout of upstream one commit before ace7c47: only 2 training files differ from it."""
    src = mirror.find_repo(Path(upstream_source), mirror.COSYVOICE) if upstream_source != mirror.GITHUB \
        else lock.upstream_url
    root = tmp_path / "CosyVoice"
    subprocess.run(["git", "clone", "-q", str(src), str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "checkout", "-q", "ace7c47~1"], check=True)
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return root, head


def test_unsupported_git_checkout_gets_one_clear_message_and_nothing_changes(unsupported_checkout, lock, capsys):
    root, head = unsupported_checkout
    before = tree_digest(root / "cosyvoice")
    assert main(["apply-patches", "--upstream", str(root)]) == 1
    err = capsys.readouterr().err
    newest = lock.resolve(MAIN)
    assert f"git checkout at {head[:12]}, which is not a supported upstream commit" in err
    assert f"nearest supported commit is {newest.label}" in err  # fewest differing locked files
    assert f"git -C {root} checkout {newest.commit}" in err  # way forward 1
    assert "cosyext rebase --onto" in err  # way forward 2
    assert err.count("error:") == 1 and "Traceback" not in err
    assert tree_digest(root / "cosyvoice") == before
    assert main(["status", "--upstream", str(root), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["supported"] is False and doc["head"] == head and doc["nearest"]["name"] == newest.name
    assert "submodule update --init" in err  # a plain git clone has no Matcha-TTS
    upstream_diff = [f for f, st in doc["files"].items() if f.startswith("cosyvoice/") and st != "pristine"]
    assert 0 < len(upstream_diff) <= 2, upstream_diff


def test_unsupported_plain_directory_has_no_git_advice(unsupported_checkout, lock, tmp_path, capsys):
    root = plain_copy(unsupported_checkout[0], tmp_path / "plain")
    assert main(["revert", "--upstream", str(root)]) == 1
    err = capsys.readouterr().err
    assert "no git checkout to ask" in err and "git -C" not in err
    assert f"cosyext vendor NEWDIR --rev {lock.resolve(MAIN).name}" in err


def test_status_never_calls_a_partly_patched_tree_applied(upstream_at, tmp_path, capsys):
    root = tmp_path / "tree"
    shutil.copytree(upstream_at(MAIN), root, symlinks=True)
    pristine = upstream_at(MAIN, patched=False)
    shutil.copy2(pristine / "cosyvoice/utils/onnx.py", root / "cosyvoice/utils/onnx.py")  # one file back to upstream
    assert main(["status", "--upstream", str(root)]) == 1
    out = capsys.readouterr().out
    assert "PARTLY patched" in out and "patch series applied" not in out


def test_a_users_own_repository_is_not_told_to_check_out_an_upstream_commit(upstream_at, lock, tmp_path, capsys):
    import git

    root = plain_copy(upstream_at(MAIN, patched=False), tmp_path / "mine")
    (root / "cosyvoice/utils/onnx.py").write_text("# my fork\n")
    repo = git.Repo.init(root)
    repo.index.add(["cosyvoice/utils/onnx.py"])
    repo.index.commit("my fork")
    assert main(["apply-patches", "--upstream", str(root)]) == 1
    err = capsys.readouterr().err
    assert "which is not a supported upstream commit" in err
    assert "git -C" not in err and f"cosyext vendor NEWDIR --rev {lock.resolve(MAIN).name}" in err
