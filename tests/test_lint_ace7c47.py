"""The CosyVoice3 / 2026-upstream lint rules against REAL upstream code at ace7c47: the data-aware
replay (num_frames padding, half-buffer shuffle) gives upstream's batches, and what CX306, CX608
and CX609 call fatal really stops upstream (and their passing configs really run).

Upstream runs in one subprocess (tests/lint_cases/upstream_probe.py) with the ace7c47 tree on its
path, so it never mixes with another commit's `cosyvoice` imported in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cosyvoice_ext.lint.data_analysis import analyse
from cosyvoice_ext.lint.document import Document
from cosyvoice_ext.lint.engine import Options
from cosyvoice_ext.lint.target import Upstream
from cosyvoice_ext.tiny.data import write_parquet_dataset
from cosyvoice_ext.tiny.qwen import make_tiny_qwen

from tests.test_lint_family import CV3, rewrite_shards, trim_audio  # the configs the unit tests lint

pytestmark = pytest.mark.upstream
PROBE = Path(__file__).parent / "lint_cases" / "upstream_probe.py"
INSTRUCT = "You are a helpful assistant.<|endofprompt|>"


@pytest.fixture(scope="module")
def tree(request) -> Path:
    """Pristine ace7c47 (the 2026 upstream with CosyVoice3), from conftest's mirror-backed trees;
    COSYEXT_TEST_UPSTREAM_MAIN names an already assembled tree instead (developer shortcut)."""
    root = os.environ.get("COSYEXT_TEST_UPSTREAM_MAIN")
    return Path(root) if root else request.getfixturevalue("upstream_at")("ace7c47", patched=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tree):
    """Configs and data sets, and upstream's verdict on each, from one probe run."""
    d = tmp_path_factory.mktemp("ace7c47")
    qwen = make_tiny_qwen(d / "qwen")

    def cfg(name: str, text: str) -> Path:
        (d / name).write_text(text)
        return d / name

    good = cfg("good.yaml", CV3.format(qwen=json.dumps(str(qwen)), nf=960))
    bad_nf = cfg("nf1000.yaml", CV3.format(qwen=json.dumps(str(qwen)), nf=1000))  # CX306_fail's mistake
    base = write_parquet_dataset(d / "data", 14, shards=3, seed=11, min_sec=1.0, max_sec=3.0)
    rows = iter(range(10_000))
    data = {  # audio off the 40 ms grid (padding matters), with the instruct text CosyVoice3LM needs
        "ok": rewrite_shards(base, d / "ok", lambda r: {**trim_audio(r, 300 + 37 * (next(rows) % 5)),
                                                        "instruct": INSTRUCT}, keep_schema=False),
        "no_instruct": rewrite_shards(base, d / "no_instruct", lambda r: trim_audio(r, 300)),
        "short": rewrite_shards(base, d / "short", lambda r: {**r, "speech_token": r["speech_token"][:-1],
                                                              "instruct": INSTRUCT}, keep_schema=False),
    }
    jobs = {
        "batches": {"kind": "batches", "config": str(good), "data": str(data["ok"]), "epochs": 3},
        "flow_ok": {"kind": "forward", "model": "flow", "config": str(good), "data": str(data["ok"])},
        "flow_nf1000": {"kind": "forward", "model": "flow", "config": str(bad_nf), "data": str(data["ok"])},
        "flow_short": {"kind": "forward", "model": "flow", "config": str(good), "data": str(data["short"])},
        "llm_ok": {"kind": "forward", "model": "llm", "config": str(good), "data": str(data["ok"])},
        "llm_no_instruct": {"kind": "forward", "model": "llm", "config": str(good), "data": str(data["no_instruct"])},
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "third_party" / "Matcha-TTS")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("onnx_path", None)
    proc = subprocess.run([sys.executable, str(PROBE), json.dumps(list(jobs.values()))], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = dict(zip(jobs, json.loads(proc.stdout.strip().splitlines()[-1])))
    return {"qwen": qwen, "good": good, "bad_nf": bad_nf, "data": data, "upstream": results}


def _analyse(cfg: Path, data: Path, model: str, **kw):
    return analyse(Document.from_text(cfg.read_text(), cfg), Options(data=data, model=model, onnx_path="", **kw),
                   keep_batches=True)


def test_replay_equals_ace7c47_dataset(setup):
    """num_frames padding changes the frame counts batching sees; the 2026 shuffle keeps half its buffer."""
    ours = _analyse(setup["good"], setup["data"]["ok"], "flow", epochs=3)
    theirs = setup["upstream"]["batches"]
    assert ours.error is None, ours.error
    for epoch in range(3):
        assert [sorted(b) for b in ours.batch_utts[epoch]] == theirs[epoch], f"epoch {epoch} differs"
    # and the match is not luck: the 2025 pipeline's shuffle gives other batches on the same data
    old = analyse(Document.from_text(setup["good"].read_text()), Options(data=setup["data"]["ok"], model="flow",
                  onnx_path="", epochs=3), keep_batches=True, upstream=Upstream(False, "the 2025 shuffle"))
    assert [[sorted(b) for b in e] for e in old.batch_utts] != theirs


def test_cx306_num_frames_mismatch_really_crashes_the_dit_flow(setup):
    up = setup["upstream"]
    assert up["flow_ok"]["ok"] and up["flow_ok"]["batches"] >= 2
    assert not up["flow_nf1000"]["ok"] and "Sizes of tensors must match" in up["flow_nf1000"]["error"]


def test_cx608_missing_instruct_really_stops_the_cosyvoice3_llm(setup):
    up = setup["upstream"]
    assert up["llm_ok"]["ok"], up["llm_ok"]
    assert up["llm_no_instruct"] == {"ok": False, "batches": 0, "error": "KeyError: 'instruct_token'"}
    a = _analyse(setup["good"], setup["data"]["no_instruct"], "llm")
    assert a.features.rows_without_instruct == a.features.rows == 14
    assert _analyse(setup["good"], setup["data"]["ok"], "llm").features.rows_without_instruct == 0


def test_cx609_predicts_the_crash_from_short_tokens(setup):
    up = setup["upstream"]
    assert not up["flow_short"]["ok"] and up["flow_short"]["batches"] == 0
    assert "Sizes of tensors must match" in up["flow_short"]["error"]
    a = _analyse(setup["good"], setup["data"]["short"], "flow")
    assert a.alignment.misaligned == 14 and a.alignment.crashing_batches == a.alignment.batches
    assert _analyse(setup["good"], setup["data"]["ok"], "flow").alignment.misaligned == 0
