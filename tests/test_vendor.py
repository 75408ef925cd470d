"""`cosyext vendor`: every source verified file by file before DEST is written."""

from __future__ import annotations

import shutil
import zipfile

import git
import pytest

from cosyvoice_ext import pin, sources
from cosyvoice_ext.cli import main
from cosyvoice_ext.errors import UsageError, VerificationError
from cosyvoice_ext.tree import describe_origin
from tests.helpers import run_cosyext, tree_digest


def test_vendor_from_wheel_file(pypi_wheel, lock, tmp_path, capsys):
    dest = tmp_path / "CosyVoice"
    assert main(["vendor", str(dest), "--source", str(pypi_wheel)]) == 0
    assert f"{len(lock.files)} locked files verified" in capsys.readouterr().out
    for rel, h in lock.files.items():
        assert pin.git_blob_id((dest / rel).read_bytes()) == h.blob, rel
    assert (dest / "third_party/Matcha-TTS/matcha/utils/audio.py").is_file()
    assert oct(dest.stat().st_mode & 0o777) != oct(0o700)


def test_vendor_from_pypi_by_name(tmp_path):
    res = run_cosyext("vendor", str(tmp_path / "up"), "--source", "pypi")
    assert res.returncode == 0, res.stderr
    assert "PyPI cosyvoice-minicpmo==0.1.0" in res.stdout and "next: cosyext apply-patches" in res.stdout


def test_tampered_wheel_is_refused_and_dest_untouched(pypi_wheel, tmp_path):
    bad = tmp_path / pypi_wheel.name
    with zipfile.ZipFile(pypi_wheel) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "cosyvoice/llm/llm.py":
                data = data.replace(b"import torch", b"import torch  # tampered", 1)
            dst.writestr(item, data)
    res = run_cosyext("vendor", str(tmp_path / "dest"), "--source", str(bad))
    assert res.returncode == 1
    assert "sha256" in res.stderr and "next:" in res.stderr
    assert not (tmp_path / "dest").exists()
    assert [p.name for p in tmp_path.iterdir()] == [bad.name]  # no staging directory left behind


def test_directory_source_with_an_edited_file_is_refused(pristine_tree, lock, tmp_path):
    src = tmp_path / "mirror"
    shutil.copytree(pristine_tree, src)
    (src / "cosyvoice/dataset/processor.py").write_text("# changed\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest.parent / "keep").write_text("x")
    with pytest.raises(VerificationError, match="differs: cosyvoice/dataset/processor.py"):
        sources.vendor(dest, str(src), lock)
    assert dest.is_dir() and not any(dest.iterdir())


def test_existing_nonempty_dest_is_left_alone(pristine_tree, lock, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("user data")
    before = tree_digest(dest)
    with pytest.raises(UsageError, match="not empty"):
        sources.vendor(dest, str(pristine_tree), lock)
    assert tree_digest(dest) == before


def _commit_tree(src, repo_dir, files):
    repo = git.Repo.init(repo_dir)
    for rel in files:
        (repo_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, repo_dir / rel)
    repo.index.add(files)
    return repo.index.commit("import")


def test_vendor_from_local_git_mirror_with_submodule_mirror(pristine_tree, lock, tmp_path):
    matcha_prefix = pin.MATCHA_PATH + "/"
    main_files = [f for f in lock.files if not f.startswith(matcha_prefix)]
    commit = _commit_tree(pristine_tree, tmp_path / "CosyVoice.git", main_files)
    matcha_src = tmp_path / "matcha-root"
    shutil.copytree(pristine_tree / pin.MATCHA_PATH, matcha_src)
    _commit_tree(matcha_src, tmp_path / "Matcha-TTS.git",
                 [f[len(matcha_prefix):] for f in lock.files if f.startswith(matcha_prefix)])
    dest = tmp_path / "checkout"
    assert main(["vendor", str(dest), "--source", str(tmp_path / "CosyVoice.git"), "--rev", commit.hexsha,
                 "--matcha-source", str(tmp_path / "Matcha-TTS.git")]) == 0
    assert tree_digest(pristine_tree).items() <= tree_digest(dest).items()
    origin = describe_origin(dest, lock)
    assert commit.hexsha[:12] in origin and "verified by content" in origin


def test_git_mirror_missing_the_pinned_commit_says_so(pristine_tree, lock, tmp_path):
    _commit_tree(pristine_tree, tmp_path / "repo", ["cosyvoice/bin/train.py"])
    res = run_cosyext("vendor", str(tmp_path / "dest"), "--source", str(tmp_path / "repo"))
    assert res.returncode == 2
    assert lock.upstream_commit in res.stderr and "next:" in res.stderr
    assert not (tmp_path / "dest").exists()


def test_unreachable_git_url_fails_cleanly(tmp_path):
    res = run_cosyext("vendor", str(tmp_path / "dest"), "--source", "https://host.invalid/CosyVoice.git")
    assert res.returncode == 2
    assert "could not clone" in res.stderr and "--source pypi" in res.stderr and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []
