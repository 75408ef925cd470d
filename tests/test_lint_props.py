"""Property tests: whatever YAML (or garbage) lint is fed, it reports instead of raising."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosyvoice_ext import cli, plugins
from cosyvoice_ext.lint import plugin as lint_rules
from cosyvoice_ext.lint.engine import Options, lint_text
from cosyvoice_ext.lint.registry import collect

BASE = (Path(__file__).parent / "lint_cases" / "base.yaml").read_text()
_pm = plugins.new_manager(autoload=False)
_pm.register(lint_rules, name="lint_rules")
REGISTRY = collect(_pm)
OPTS = [Options(), Options(model="flow", gpu_memory=8, train_engine="deepspeed"), Options(model="llm")]

KEYS = ["train_conf", "filter", "batch", "sort", "shuffle", "data_pipeline", "cosyext", "llm", "flow", "feat_extractor",
        "resample", "compute_fbank", "token_max_length", "max_frames_in_batch", "accum_grad", "scheduler",
        "scheduler_conf", "warmup_steps", "lint", "select", "target_modules", "r", "dropout", "hop_size",
        "sampling_rate", "token_mel_ratio", "qwen_pretrain_path", "truncate", "data_pipeline_gan", "x"]
TAGS = ["", "!ref ", "!new:cosyvoice.dataset.processor.filter ", "!name:cosyvoice.dataset.processor.batch ",
        "!apply:os.system ", "!name:matcha.utils.audio.mel_spectrogram ", "!copy ", "!weird "]
scalars = st.one_of(
    st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.sampled_from(["<filter>", "<train_conf.accum_grad>", "<nope>", "<a>*<b>", "1e-5", "", "~", "[", "dynamic"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
)


def _render(value, indent: int = 0, flow: bool = False) -> str:
    """Block style at the top, flow style inside lists (so the result is mostly valid YAML)."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        if flow:
            return "{" + ", ".join(f"{k}: {t}{_render(v, flow=True)}" for k, (t, v) in value.items()) + "}"
        return "\n" + "\n".join(f"{pad}{k}: {tag}{_render(v, indent + 2)}".rstrip() for k, (tag, v) in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(f"{t}{_render(v, flow=True)}" for t, v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


tree = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(st.tuples(st.sampled_from(TAGS), kids), max_size=4),
        st.dictionaries(st.sampled_from(KEYS), st.tuples(st.sampled_from(TAGS), kids), max_size=5),
    ),
    max_leaves=25,
)
documents = st.dictionaries(st.sampled_from(KEYS), st.tuples(st.sampled_from(TAGS), tree), min_size=1, max_size=8)


def _check(text: str) -> None:
    for opts in OPTS:
        res = lint_text(text, REGISTRY, opts)
        internal = [f.message for f in res.findings if f.code == "CX000"]
        assert not internal, internal
        for f in res.findings:
            assert f.line >= 1 and f.col >= 1 and f.code and f.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text_never_raises(text):
    _check(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_random_hyperpyyaml_shaped_documents_never_raise(doc):
    _check(_render(doc).lstrip("\n"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_config_never_raises(data):
    text = BASE
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 40)))
        text = text[:i] + data.draw(st.sampled_from(["", " ", "\n", ":", "- ", "[", "{", "!ref <", "0", "-1", "&a ", "*a",
                                                    "\t", "'", "# cosyext: disable=CX1"])) + text[j:]
    _check(text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_cli_on_random_bytes_exits_cleanly(tmp_path, capsys, blob):
    plugins.reset_manager(_pm)
    try:
        p = tmp_path / "random.yaml"
        p.write_bytes(blob)
        rc = cli.main(["lint", str(p), "--format", "json"])
        out = capsys.readouterr()
        assert rc in (0, 1, 2)
        assert "Traceback" not in out.err
    finally:
        plugins.reset_manager(None)
