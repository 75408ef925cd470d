"""`cosyext demo` (what `scripts/demo` runs): the whole tour on CosyVoice3 at the newest commit, and
the promise never to clear a directory it did not make."""

from __future__ import annotations

import re

import pytest

from tests.helpers import run_cosyext, tree_digest


@pytest.mark.slow
def test_demo_tour_on_cosyvoice3_trains_exports_and_reruns(tmp_path, lock):
    work = tmp_path / "demo"
    res = run_cosyext("demo", "--workdir", str(work), "--epochs", "2", "--utterances", "24")
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = res.stdout
    assert f"cosyvoice3 at upstream {lock.newest.label}" in out
    rows = {m.group(1): m for m in re.finditer(r"^(llm|flow)\s+\d+\s+\d+\s+(\d+)\s+(\S+)\s+(\S+)", out, re.M)}
    assert set(rows) == {"llm", "flow"} and all(int(r.group(2)) > 0 for r in rows.values())
    assert "serve it with upstream: CosyVoice3(" in out and "--onnx_path ''" in out
    serve = work / "serve" / "demo_voice"
    assert {"llm.pt", "flow.pt", "spk2info.pt", "speaker_config.json"} <= {p.name for p in serve.iterdir()}
    assert (serve / "cosyvoice3.yaml").is_symlink() and (work / "loss.png").stat().st_size > 0
    # a rerun replaces what the demo made, and keeps the verified upstream tree it already has
    (work / "notes.txt").write_text("mine")
    again = run_cosyext("demo", "--workdir", str(work), "--epochs", "1", "--utterances", "16", "--models", "llm")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already at" in again.stdout and (work / "notes.txt").read_text() == "mine"
    assert not (work / "exp" / "flow").exists()


def test_demo_never_clears_a_directory_it_did_not_make(tmp_path):
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "keep.txt").write_text("user data")
    before = tree_digest(mine)
    res = run_cosyext("demo", "--workdir", str(mine))
    assert res.returncode == 2 and "was not made by 'cosyext demo'" in res.stderr and "next:" in res.stderr
    assert tree_digest(mine) == before
