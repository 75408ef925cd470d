"""lint agrees with upstream's real train.py (issue 10, item 5): the differential corpus in
tests/lint_corpus/ holds mutated tiny configs (CosyVoice2 at 44316c34, CosyVoice2 and CosyVoice3 at
ace7c47) and what train.py did with each (tests/lint_corpus/make_corpus.py records it).

* every entry is linted with what the user would tell lint about the same train.py command line
  (--data, --model, --qwen-pretrain-path, --upstream, --onnx-path): an error exactly where the
  trainer failed, trained on nothing, changed nothing or climbed the loss;
* the corpus files are what the generator makes from today's tiny configs (reproducible);
* a sample goes through the real train.py and the `cosyext lint` CLI again (slow).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.lint_corpus import differential as d
from tests.lint_corpus.make_corpus import digest, entries, load_outcomes

RECORDED = load_outcomes()
#: re-run through the trainer in the slow test: per setup one config that trains and some that must not
SAMPLE = [("cosyvoice2@44316c34", "base-flow"), ("cosyvoice2@44316c34", "grad_clip-neg"),
          ("cosyvoice2@44316c34", "accum_grad-big"), ("cosyvoice2@ace7c47", "del-qwen_pretrain_path"),
          ("cosyvoice3@ace7c47", "base-llm"), ("cosyvoice3@ace7c47", "scheduler-noam")]


@pytest.fixture(scope="module")
def trees(upstream_at) -> dict[str, Path]:
    return {rev: upstream_at(rev) for rev, _ in d.SETUPS.values()}


@pytest.fixture(scope="module")
def datas(tmp_path_factory) -> dict[str, d.Data]:
    """The tiny data the corpus was recorded on (same seed, same rows)."""
    root = tmp_path_factory.mktemp("corpus-data")
    return {fam: d.make_data(root / fam, fam) for fam in {fam for _, fam in d.SETUPS.values()}}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COSYEXT_CACHE_DIR", str(tmp_path / "cache"))


def test_corpus_covers_both_commits_both_families_and_every_outcome_kind():
    by_setup = Counter(e["setup"] for e in RECORDED)
    assert set(by_setup) == set(d.SETUPS) and min(by_setup.values()) >= 15, by_setup
    kinds = Counter(e["outcome"] for e in RECORDED)
    assert {"trains", "fails", "no_step", "no_update", "ascends"} <= set(kinds), kinds
    for e in RECORDED:
        assert (d.HERE / e["setup"] / f"{e['id']}.yaml").is_file(), e
        if e["outcome"] == "fails":
            assert e["error"], f"{e['setup']}/{e['id']}: a failure without its error line"


def test_corpus_files_are_what_the_generator_makes(trees, tmp_path):
    """Regenerated from today's tiny configs and mutations, every recorded entry's config is byte for
    byte the committed one and has the digest its trainer outcome was recorded for."""
    made = {(e["setup"], e["id"]): e for e in entries(trees, tmp_path, write=False)}
    recorded = {(e["setup"], e["id"]): e for e in RECORDED}
    assert set(made) == set(recorded), "run python -m tests.lint_corpus.make_corpus"
    for key, e in made.items():
        committed = (d.HERE / key[0] / f"{key[1]}.yaml").read_text(encoding="utf-8")
        assert committed == e["text"], f"{key}: stale corpus file"
        assert recorded[key]["digest"] == digest(key[0], e["model"], committed) == e["digest"], key


def test_lint_agrees_with_the_recorded_trainer_outcome_on_the_whole_corpus(trees, datas, tmp_path):
    from cosyvoice_ext.lint.engine import lint_document, read_config
    from cosyvoice_ext.lint.registry import collect

    registry = collect()
    disagree, repeats = [], []
    for e in RECORDED:
        rev, family = d.SETUPS[e["setup"]]
        text = (d.HERE / e["setup"] / f"{e['id']}.yaml").read_text(encoding="utf-8")
        cfg = d.materialize(text, datas[family], tmp_path / e["setup"] / f"{e['id']}.yaml")
        res = lint_document(read_config(cfg), registry, d.lint_options(datas[family], trees[rev], e["model"]))
        verdict = d.lint_verdict(res.findings)
        assert res.internal_errors == 0, [f.message for f in res.findings if f.code == "CX000"]
        if not d.agrees(e["outcome"], verdict["lint"]):
            disagree.append(f"{e['setup']}/{e['id']}: trainer {e['outcome']} ({e['error']}), lint {verdict}")
        repeats += [f"{e['setup']}/{e['id']}:{f.line} {f.code}: {f.fix}" for f in res.findings
                    if d.fix_repeats_value(text, f)]
    assert not disagree, "\n".join(disagree)
    assert not repeats, "fixes that suggest the value already set:\n" + "\n".join(repeats)


@pytest.mark.slow
@pytest.mark.parametrize("setup, mutation", SAMPLE, ids=[f"{s}/{m}" for s, m in SAMPLE])
def test_sample_still_agrees_with_the_real_trainer_and_the_cli(setup, mutation, trees, datas, tmp_path):
    """The recorded outcome still holds (upstream's train.py under torchrun, now) and `cosyext lint` on
    the command line says the same: exit 1 exactly when the trainer does not train."""
    e = next(x for x in RECORDED if (x["setup"], x["id"]) == (setup, mutation))
    rev, family = d.SETUPS[setup]
    text = (d.HERE / setup / f"{mutation}.yaml").read_text(encoding="utf-8")
    cfg = d.materialize(text, datas[family], tmp_path / "conf.yaml")
    got = d.run_trainer(cfg, datas[family], trees[rev], e["model"], tmp_path / "run")
    assert got["outcome"] == e["outcome"], (got, e)
    res = subprocess.run([sys.executable, "-m", "cosyvoice_ext.cli", *d.lint_cli_args(cfg, datas[family], trees[rev],
                                                                                        e["model"])],
                         capture_output=True, text=True)
    assert res.returncode in (0, 1), res.stderr[-2000:]
    verdict = d.lint_verdict(json.loads(res.stdout)["findings"])
    assert (res.returncode == 1) == (verdict["lint"] == "error")
    assert d.agrees(got["outcome"], verdict["lint"]), (got, verdict)
