"""Every built-in static rule has a failing config (flagged exactly on the lines marked
`# expect: CODE`) and a passing config (not flagged by that rule)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cosyvoice_ext.lint import plugin as lint_rules
from cosyvoice_ext.lint.engine import Options, lint_document, read_config
from cosyvoice_ext.lint.registry import RuleRegistry
from cosyvoice_ext.plugins import new_manager
from cosyvoice_ext.lint.registry import collect

CASES = Path(__file__).parent / "lint_cases"
STATIC = [r.code for r in lint_rules.all_rules() if not r.needs_data]


@pytest.fixture(scope="module")
def registry() -> RuleRegistry:
    pm = new_manager(autoload=False)
    pm.register(lint_rules, name="lint_rules")
    return collect(pm)


def _options(path: Path) -> Options:
    m = re.search(r"^# lint-args: (.*)$", path.read_text(), re.M)
    opts = Options()
    args = shlex.split(m.group(1)) if m else []
    for flag, value in zip(args[::2], args[1::2]):
        if flag == "--model":
            opts.model = value
        elif flag == "--gpu-memory":
            opts.gpu_memory = float(value)
        elif flag == "--train-engine":
            opts.train_engine = value
        else:
            raise AssertionError(f"unknown lint-args flag {flag}")
    return opts


def _expected_lines(path: Path, code: str) -> set[int]:
    return {i for i, line in enumerate(path.read_text().splitlines(), 1) if f"# expect: {code}" in line}


def test_at_least_15_static_rules_with_distinct_codes():
    assert len(STATIC) >= 15
    assert len(set(STATIC)) == len(STATIC)


@pytest.mark.parametrize("code", STATIC)
def test_rule_flags_failing_config_at_marked_line(code, registry):
    path = CASES / f"{code}_fail.yaml"
    assert path.is_file(), f"missing failing test config for {code}"
    expected = _expected_lines(path, code)
    assert expected, f"{path.name} marks no line with '# expect: {code}'"
    res = lint_document(read_config(path), registry, _options(path))
    got = {f.line for f in res.findings if f.code == code}
    assert got == expected, [f"{f.line}:{f.col} {f.code} {f.message}" for f in res.findings]
    for f in res.findings:
        if f.code == code:
            assert f.col >= 1 and f.message and f.fix, f


@pytest.mark.parametrize("code", STATIC)
def test_rule_passes_clean_config(code, registry):
    path = CASES / f"{code}_pass.yaml"
    assert path.is_file(), f"missing passing test config for {code}"
    res = lint_document(read_config(path), registry, _options(path))
    assert [f for f in res.findings if f.code in (code, "CX000")] == []


def test_full_lora_config_is_clean(registry):
    res = lint_document(read_config(CASES / "base.yaml"), registry,
                        Options(model="llm", gpu_memory=24, train_engine="deepspeed"))
    assert res.findings == []


def test_every_rule_is_documented_by_its_docstring(registry):
    for rule in registry.sorted():
        assert rule.check.__doc__ and len(rule.doc) > 40, f"{rule.code}: its check function has no docstring"
        assert rule.why == "", f"{rule.code}: documentation belongs in the check's docstring, not why="
        assert rule.example and rule.fix, rule.code


def test_docs_rule_section_is_generated_from_the_registry(registry):
    """docs/lint.md's rule table and reference are `python -m cosyvoice_ext.lint.docs` output, verbatim."""
    from cosyvoice_ext.lint.docs import BEGIN, END, section

    doc = (Path(__file__).parents[1] / "docs" / "lint.md").read_text()
    current = doc[doc.index(BEGIN):doc.index(END) + len(END)]
    assert current == section(registry), ("docs/lint.md is stale: run python -m cosyvoice_ext.lint.docs "
                                          "--write docs/lint.md")
    for rule in registry.sorted():  # the generated text really carries each rule's docstring
        assert rule.doc.splitlines()[0] in current, rule.code


# --- fix texts ---------------------------------------------------------------------------------

FIX_CASES = {  # a config each, where a fix that names a fixed value would repeat what is set
    "resample already a ref": ("flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithXvec\n    token_mel_ratio: 2\n"
                               "sample_rate: 24000\nresample: !name:cosyvoice.dataset.processor.resample\n"
                               "    resample_rate: !ref <sample_rate>\nfeat_extractor: !name:matcha.utils.audio.mel_spectrogram\n"
                               "    sampling_rate: 16000\n    hop_size: 480\ncompute_fbank: !name:cosyvoice.dataset.processor."
                               "compute_fbank\n    feat_extractor: !ref <feat_extractor>\ndata_pipeline: [!ref <resample>, "
                               "!ref <compute_fbank>]\n", "CX302", "feat_extractor sampling_rate"),
    "max equals min": ("filter: !name:cosyvoice.dataset.processor.filter\n    max_length: 100\n    min_length: 100\n"
                       "data_pipeline: [!ref <filter>]\n", "CX102", "max_length: 40960"),
    "ratio bounds cross at a default": ("filter: !name:cosyvoice.dataset.processor.filter\n    min_output_input_ratio: 1\n"
                                        "    max_output_input_ratio: 1\ndata_pipeline: [!ref <filter>]\n", "CX102",
                                        "min_output_input_ratio: 0.0005"),
    "quoted batch size": ("batch: !name:cosyvoice.dataset.processor.batch\n    batch_type: 'dynamic'\n"
                          "    max_frames_in_batch: '2500'\ndata_pipeline: [!ref <batch>]\n", "CX105", "remove the quotes"),
    "quoted accum_grad": ("train_conf:\n    accum_grad: '2'\n", "CX201", "remove the quotes"),
    "quoted max_epoch": ("train_conf:\n    max_epoch: '10'\n", "CX205", "remove the quotes"),
    "float max_epoch": ("train_conf:\n    max_epoch: 2.0\n", "CX205", "the integer 2"),
}


@pytest.mark.parametrize("name", list(FIX_CASES))
def test_a_fix_never_suggests_the_value_already_set(name, registry):
    from tests.lint_corpus.differential import fix_repeats_value

    text, code, says = FIX_CASES[name]
    from cosyvoice_ext.lint.engine import lint_text

    found = [f for f in lint_text(text, registry, Options()).findings if f.code == code]
    assert found, f"{code} not reported for {name}"
    assert says in found[0].fix, found[0].fix
    assert not fix_repeats_value(text, found[0]), found[0].fix


def test_no_failing_case_gets_a_fix_that_repeats_its_value(registry):
    from tests.lint_corpus.differential import fix_repeats_value

    bad = []
    for path in sorted(CASES.glob("*_fail.yaml")):
        res = lint_document(read_config(path), registry, _options(path))
        bad += [f"{path.name}:{f.line} {f.code}: {f.fix}" for f in res.findings if fix_repeats_value(path.read_text(), f)]
    assert not bad, "\n".join(bad)


def test_the_repeat_check_itself_catches_a_repeat():
    from cosyvoice_ext.lint.engine import Finding
    from tests.lint_corpus.differential import fix_repeats_value

    text = "train_conf:\n    log_interval: 1\n"
    assert fix_repeats_value(text, Finding("x", 2, 5, "CX603", "warning", "m", "log_interval: 1"))
    assert fix_repeats_value(text, Finding("x", 2, 5, "CX603", "warning", "m", "log_interval: 1.0 or so"))
    assert not fix_repeats_value(text, Finding("x", 2, 5, "CX603", "warning", "m", "log_interval: 10"))

