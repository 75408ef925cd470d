"""The `cosyext:` section schema: defaults, and errors that name the bad key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cosyvoice_ext.errors import ConfigError
from cosyvoice_ext.lora.config import (
    FAMILY_PRESETS, PRESETS, LoraConfigError, LoraSettings, parse_section, preset_names, preset_regex,
)


def test_no_section_means_no_lora():
    assert parse_section({"train_conf": {}}) == {}
    assert parse_section({"cosyext": {"llm": None}}) == {}


def test_defaults_and_values():
    got = parse_section({"cosyext": {"llm": {"r": 16, "alpha": 32, "dropout": 0.05},
                                      "flow": {"target_modules": ["to_q", "to_k"], "checkpoint_format": "merged"}}})
    llm, flow = got["llm"], got["flow"]
    assert (llm.r, llm.alpha, llm.dropout, llm.checkpoint_format) == (16, 32.0, 0.05, "adapter")
    # no target_modules: the model class's default, resolved when the model exists (CosyVoice2: attention)
    assert llm.target_modules == "default" and llm.target_regex() == PRESETS["llm"]["attention"]
    assert llm.target_regex("cosyvoice3") == PRESETS["llm"]["attention_mlp"]
    assert flow.target_modules == ("to_q", "to_k") and flow.target_regex() is None
    assert flow.checkpoint_format == "merged"


def test_settings_round_trip_through_metadata():
    s = parse_section({"cosyext": {"llm": {"r": 4, "target_modules": ["q_proj"], "modules_to_save": ["llm_decoder"]}}})["llm"]
    d = s.to_dict()
    assert all(isinstance(v, (int, float, str, list, type(None))) for v in d.values())
    assert LoraSettings.from_dict(d) == s


@pytest.mark.parametrize("section, key, words", [
    ({"llm": {"r": 0}}, "cosyext.llm.r", "integer > 0"),
    ({"llm": {"r": 2.5}}, "cosyext.llm.r", "integer > 0"),
    ({"llm": {"r": True}}, "cosyext.llm.r", "integer > 0"),
    ({"llm": {"alpha": 0}}, "cosyext.llm.alpha", "> 0"),
    ({"flow": {"dropout": 1.0}}, "cosyext.flow.dropout", "< 1"),
    ({"flow": {"dropout": -0.1}}, "cosyext.flow.dropout", ">= 0"),
    ({"llm": {"rank": 8}}, "cosyext.llm.rank", "valid keys: r, alpha"),
    ({"llm": {"target_module": ["q_proj"]}}, "cosyext.llm.target_module", "did you mean 'target_modules'"),
    ({"llm": {"target_modules": []}}, "cosyext.llm.target_modules", "at least one"),
    ({"llm": {"target_modules": "q_proj(("}}, "cosyext.llm.target_modules", "neither a preset"),
    ({"llm": {"target_modules": ["q_proj", 3]}}, "cosyext.llm.target_modules[1]", "module name"),
    ({"llm": {"modules_to_save": "llm_decoder"}}, "cosyext.llm.modules_to_save", "list"),
    ({"llm": {"checkpoint_format": "full"}}, "cosyext.llm.checkpoint_format", "adapter, merged"),
    ({"lmm": {"r": 8}}, "cosyext.lmm", "did you mean 'llm'"),
    ({"llm": [8]}, "cosyext.llm", "mapping"),
])
def test_bad_values_name_the_key(section, key, words):
    with pytest.raises(LoraConfigError) as err:
        parse_section({"cosyext": section})
    assert err.value.key == key
    assert isinstance(err.value, ConfigError)
    assert str(err.value).startswith(key + ":")
    assert words in str(err.value)
    assert err.value.hint


def test_unrelated_keys_are_left_to_other_plugins():
    assert set(parse_section({"cosyext": {"llm": {"r": 2}, "telemetry": {"on": True}}})) == {"llm"}


def test_preset_names_resolve_per_family():
    """A config names a preset without knowing its class; the built model's family picks the regex."""
    assert preset_names("llm") == ["default", "attention", "attention_mlp"]
    assert preset_names("flow") == ["default", "attention", "encoder_attention", "estimator_attention", "attention_ff"]
    for name in ("attention_ff", "encoder_attention", "default"):  # parsing alone accepts any family's preset
        assert parse_section({"cosyext": {"flow": {"target_modules": name}}})["flow"].target_modules == name
    dit = "decoder.estimator.transformer_blocks.21.attn.to_out.0"
    assert re.fullmatch(preset_regex("flow", "attention", "cosyvoice3"), dit)
    assert not re.fullmatch(preset_regex("flow", "attention", "cosyvoice2"), dit)
    assert preset_regex("flow", "attention_ff", "cosyvoice2") is None
    assert preset_regex("flow", "default", None) == FAMILY_PRESETS["cosyvoice2"]["flow"]["attention"]  # unknown class
    flow = parse_section({"cosyext": {"flow": {"target_modules": "estimator_attention"}}})["flow"]
    with pytest.raises(LoraConfigError, match="preset 'estimator_attention' belongs to cosyvoice2; a cosyvoice3 flow "
                                              "has the presets default, attention, attention_ff"):
        flow.target_regex("cosyvoice3")


def test_cosyvoice3_presets_match_the_measured_module_names():
    """DESIGN.md §11a: the DiT blocks' attention and feed-forward, the CosyVoice2 Qwen2 names in the LLM."""
    llm, flow = FAMILY_PRESETS["cosyvoice3"]["llm"], FAMILY_PRESETS["cosyvoice3"]["flow"]
    assert llm["default"] == llm["attention_mlp"] and flow["default"] == flow["attention_ff"]
    assert re.fullmatch(llm["default"], "llm.model.model.layers.23.mlp.gate_proj")
    assert not re.fullmatch(llm["default"], "llm.model.lm_head") and not re.fullmatch(llm["default"], "llm_decoder")
    block = "decoder.estimator.transformer_blocks.7"
    for leaf in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"):
        assert re.fullmatch(flow["attention"], f"{block}.{leaf}") and re.fullmatch(flow["default"], f"{block}.{leaf}")
    for leaf in ("ff.ff.0.0", "ff.ff.2"):
        assert re.fullmatch(flow["default"], f"{block}.{leaf}")
        assert not re.fullmatch(flow["attention"], f"{block}.{leaf}")
    for other in (f"{block}.attn_norm.linear", f"{block}.ff.ff.1", "decoder.estimator.proj_out",
                  "decoder.estimator.norm_out.linear", "decoder.estimator.time_embed.time_mlp.0",
                  "spk_embed_affine_layer"):
        assert not re.fullmatch(flow["default"], other), other


def test_presets_match_the_measured_module_names():
    llm = PRESETS["llm"]
    assert re.fullmatch(llm["attention"], "llm.model.model.layers.11.self_attn.o_proj")
    assert not re.fullmatch(llm["attention"], "llm.model.model.layers.11.mlp.up_proj")
    assert re.fullmatch(llm["attention_mlp"], "llm.model.model.layers.0.mlp.down_proj")
    flow = PRESETS["flow"]["attention"]
    for name in ("encoder.encoders.5.self_attn.linear_out", "encoder.up_encoders.0.self_attn.linear_q",
                 "decoder.estimator.mid_blocks.11.1.3.attn1.to_out.0", "decoder.estimator.down_blocks.0.1.0.attn1.to_v"):
        assert re.fullmatch(flow, name), name
    for name in ("encoder.encoders.5.self_attn.linear_pos", "decoder.estimator.mid_blocks.0.1.0.ff.net.2",
                 "decoder.estimator.mid_blocks.0.1.0.attn1.to_out.1"):
        assert not re.fullmatch(flow, name), name


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ext-lora.yaml"


class _TagsAsData(yaml.SafeLoader):
    """Reads HyperPyYAML tags (!new:, !ref, !apply:) as plain data: the example is parsed, never run."""


_TagsAsData.add_multi_constructor("!", lambda loader, suffix, node: None)


def test_the_documented_example_section_is_valid():
    doc = yaml.load(EXAMPLE.read_text(encoding="utf-8"), Loader=_TagsAsData)
    got = parse_section(doc)
    assert set(got) == {"llm", "flow"}
    assert got["llm"].r == 16 and got["llm"].target_modules == "attention"
    assert got["flow"].checkpoint_format == "adapter"
    docs = (EXAMPLE.parents[1] / "docs" / "lora.md").read_text(encoding="utf-8")
    from cosyvoice_ext.lora.config import SCHEMA

    for key in SCHEMA:  # every key of the schema is documented
        assert f"| `{key}` |" in docs, key
    for fam, by_model in FAMILY_PRESETS.items():
        for model, presets in by_model.items():
            for preset in presets:
                assert f"| {fam} | {model} | `{preset}` |" in docs, (fam, model, preset)
