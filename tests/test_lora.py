"""The LoRA plugin in process: real upstream Qwen2LM / CausalMaskedDiffWithXvec (tiny), real peft.

These call the same functions the patched train_utils reaches through the relay, in train.py's
order: configure -> (train.py loads --checkpoint strict=False) -> prepare_model -> optimizer params
-> checkpoint_state at each save.
"""

from __future__ import annotations

import copy
import logging
import shutil

import pytest
import torch

from cosyvoice_ext import checkpoints, relay
from cosyvoice_ext.errors import CheckpointError, ConfigError
from cosyvoice_ext.lora import training
from cosyvoice_ext.lora.merge import merge_into_stock
from cosyvoice_ext.plugins import hooks, new_manager, reset_manager
from tests.test_lora_helpers import (  # cv3*: fixtures, registered by importing them here
    cv3, cv3_outputs, cv3_root, cv3_tree, load_configs, max_abs_diff, outputs, randomize_lora, tiny_workspace,
    train_args,
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, upstream_tree):
    return tiny_workspace(tmp_path_factory.mktemp("lora"), upstream_tree)


@pytest.fixture
def plugin_manager():
    """The real manager with the built-in plugins (registered by import in every manager)."""
    pm = new_manager(autoload=False)
    reset_manager(pm)
    yield pm
    reset_manager(None)


def trainpy_load(model: torch.nn.Module, checkpoint) -> tuple[int, int]:
    """What upstream train.py does with --checkpoint (strict=False, silent), returning (step, epoch)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=False)
    return state.get("step", 0), state.get("epoch", -1)


def prepared(ws, name, checkpoint=None, seed=1, **lora):
    configs = load_configs(ws, name, seed=seed, **lora)
    args = train_args(name, ws.base[name] if checkpoint is None else checkpoint)
    training.configure(configs, args)
    model = configs[name]
    trainpy_load(model, args.checkpoint)
    run = training.prepare(model, name, configs, args)
    return model, run, configs, args


@pytest.mark.parametrize("name, n_targets", [("llm", 8), ("flow", 32)])
def test_injection_targets_exist_and_base_is_frozen(ws, name, n_targets, caplog):
    from peft.tuners.tuners_utils import BaseTunerLayer

    caplog.set_level(logging.INFO, logger="cosyvoice_ext")
    model, run, _, _ = prepared(ws, name)
    lora_layers = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    assert lora_layers == run.targets and len(run.targets) == n_targets
    if name == "flow":  # both the conformer encoder and the DiT estimator are adapted
        assert any(t.startswith("encoder.up_encoders.") for t in run.targets)
        assert any(t.endswith("attn1.to_out.0") for t in run.targets)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * n_targets
    base = checkpoints.load(ws.base[name])
    for key, value in model.state_dict().items():  # base weights are the checkpoint's, untouched
        if "lora_" not in key:
            assert torch.equal(value, base[key.replace(".base_layer.", ".")]), key
    text = caplog.text
    assert "model keys loaded (100.0%)" in text and "trainable" in text and "total" in text


def test_hooks_through_the_relay(ws, plugin_manager):
    """The patched train_utils calls relay.*; the built-in plugin answers."""
    assert plugin_manager.get_plugin("lora") is not None
    sections = hooks(plugin_manager).register_config_sections()
    assert (sections["llm"].plugin, sections["flow"].plugin) == ("lora", "lora")
    configs = load_configs(ws, "llm")
    args = train_args("llm", ws.base["llm"])
    relay.configure(args, configs)
    model = configs["llm"]
    trainpy_load(model, args.checkpoint)
    relay.prepare_model(args, model)

    class DDP(torch.nn.Module):  # what init_optimizer_and_scheduler gets: a wrapper with .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    params = list(relay.optimizer_params(DDP(model)))
    expected = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == len(expected) > 0 and all(a is b for a, b in zip(params, expected))
    assert sum(p.numel() for p in params) < sum(p.numel() for p in model.parameters())
    state = relay.checkpoint_state(model, {"epoch": 0, "step": 3, "loss_dict": {"loss": 1.5}})
    assert checkpoints.is_adapter(state) and state["cosyext"]["cv_loss"] == {"loss": 1.5}

    plain = load_configs(ws, "llm")
    del plain["cosyext"]
    other = plain["llm"]
    relay.configure(args, plain)
    relay.prepare_model(args, other)  # no section: upstream behaviour, nothing injected
    assert relay.checkpoint_state(other, {"epoch": 0, "step": 0}) is None
    assert len(list(relay.optimizer_params(other))) == len(list(other.parameters()))
    assert all(p.requires_grad for p in other.parameters())


def test_adapter_checkpoint_is_small_and_weights_only(ws, tmp_path):
    model, run, _, _ = prepared(ws, "llm")
    state = training.checkpoint_state(model, {"epoch": 2, "step": 40, "loss_dict": {"loss": torch.tensor(2.0)}})
    path = tmp_path / "epoch_2_whole.pt"
    torch.save(state, path)
    full = tmp_path / "full.pt"
    torch.save({**model.state_dict(), "epoch": 2, "step": 40}, full)  # what upstream would have written
    size, whole = path.stat().st_size, ws.base["llm"].stat().st_size
    print(f"\ntiny llm: adapter checkpoint {size} bytes, whole checkpoint {whole} bytes ({100 * size / whole:.2f}%)")
    assert size <= 0.05 * whole

    back = torch.load(path, map_location="cpu", weights_only=True)
    assert (back["epoch"], back["step"]) == (2, 40)
    meta = back["cosyext"]
    assert meta["format"] == "adapter" and meta["model"] == "llm" and meta["lora"]["r"] == 4
    assert meta["base_checkpoint"] == {"path": str(ws.base["llm"].resolve()),
                                       "sha256": checkpoints.file_digest(ws.base["llm"])}
    assert meta["targets"] == run.targets and meta["cv_loss"] == {"loss": 2.0}
    assert set(back["lora"]) == {k for k in model.state_dict() if "lora_" in k}
    assert back["modules_to_save"] == {}


def test_resume_restores_lora_and_modules_to_save_bitwise(ws, tmp_path):
    extra = {"modules_to_save": ["llm_embedding"]}
    model, run, _, _ = prepared(ws, "llm", **extra)
    assert run.modules_to_save == ["llm_embedding"]
    assert model.llm_embedding.weight.requires_grad
    randomize_lora(model, seed=11)
    with torch.no_grad():
        model.llm_embedding.weight.add_(0.5)
    ckpt = tmp_path / "epoch_1_whole.pt"
    torch.save(training.checkpoint_state(model, {"epoch": 1, "step": 10}), ckpt)

    configs = load_configs(ws, "llm", seed=99, **extra)  # a different random init: nothing may leak through
    args = train_args("llm", ckpt)
    resumed = configs["llm"]
    assert trainpy_load(resumed, ckpt) == (10, 1)  # train.py continues at step 10 / epoch 1 from the top level
    training.configure(configs, args)
    training.prepare(resumed, "llm", configs, args)
    want, got = model.state_dict(), resumed.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key  # LoRA, modules_to_save and base: bit for bit
    assert torch.equal(outputs(model, "llm")["loss"], outputs(resumed, "llm")["loss"])


def test_resume_checks_the_base_digest_and_settings(ws, tmp_path):
    model, _, _, _ = prepared(ws, "llm")
    ckpt = tmp_path / "epoch_0_whole.pt"
    torch.save(training.checkpoint_state(model, {"epoch": 0, "step": 5}), ckpt)

    other = tmp_path / "other_llm.pt"
    state = checkpoints.load(ws.base["llm"])
    state["llm_embedding.weight"] = state["llm_embedding.weight"] + 1
    torch.save(state, other)
    configs = load_configs(ws, "llm", base_checkpoint=str(other))
    with pytest.raises(CheckpointError, match="is not the one adapter .* was trained on"):
        training.prepare(configs["llm"], "llm", configs, train_args("llm", ckpt))

    moved = tmp_path / "moved_llm.pt"  # same bytes elsewhere: accepted through base_checkpoint
    shutil.copy(ws.base["llm"], moved)
    configs = load_configs(ws, "llm", base_checkpoint=str(moved))
    assert training.prepare(configs["llm"], "llm", configs, train_args("llm", ckpt)).base_path == str(moved)

    configs = load_configs(ws, "llm", r=8)
    with pytest.raises(CheckpointError, match="trained with r=4"):
        training.prepare(configs["llm"], "llm", configs, train_args("llm", ckpt))


def test_cosyvoice2_default_is_still_attention_and_resumes_adapters_written_as_attention(ws, tmp_path):
    model, run, _, _ = prepared(ws, "llm")  # the workspace config spells `attention`
    torch.save(training.checkpoint_state(model, {"epoch": 0, "step": 5}), tmp_path / "a.pt")
    configs = load_configs(ws, "llm", seed=3)
    del configs["cosyext"]["llm"]["target_modules"]  # the Qwen2LM default
    args = train_args("llm", tmp_path / "a.pt")
    training.configure(configs, args)
    again = training.prepare(configs["llm"], "llm", configs, args)
    assert again.settings.target_modules == "default" and again.targets == run.targets and len(run.targets) == 8


def test_wrong_or_missing_base_fails_loudly(ws, tmp_path):
    configs = load_configs(ws, "llm")
    with pytest.raises(CheckpointError, match="does not match the model"):
        training.prepare(configs["llm"], "llm", configs, train_args("llm", ws.base["flow"]))

    partial = tmp_path / "partial.pt"
    state = checkpoints.load(ws.base["llm"])
    torch.save(dict(list(state.items())[:10]), partial)
    configs = load_configs(ws, "llm")
    with pytest.raises(CheckpointError, match=r"only 10/31 model keys loaded"):
        training.prepare(configs["llm"], "llm", configs, train_args("llm", partial))

    configs = load_configs(ws, "llm")
    with pytest.raises(CheckpointError, match="does not exist; LoRA needs the base model"):
        training.prepare(configs["llm"], "llm", configs, train_args("llm", tmp_path / "typo.pt"))

    configs = load_configs(ws, "llm")
    with pytest.raises(CheckpointError, match="needs a base checkpoint") as err:
        training.prepare(configs["llm"], "llm", configs, train_args("llm", None))
    assert "--checkpoint" in err.value.hint


def test_base_from_config_without_checkpoint_flag(ws):
    configs = load_configs(ws, "flow", base_checkpoint=str(ws.base["flow"]))
    model = configs["flow"]
    run = training.prepare(model, "flow", configs, train_args("flow", None))
    assert run.base_sha256 == checkpoints.file_digest(ws.base["flow"])
    base = checkpoints.load(ws.base["flow"])
    assert torch.equal(model.state_dict()["input_embedding.weight"], base["input_embedding.weight"])


def test_configure_rejects_targets_the_model_does_not_have(ws):
    configs = load_configs(ws, "llm", target_modules=["q_porj"])
    with pytest.raises(ConfigError, match=r"cosyext.llm.target_modules: 'q_porj' matches no module.*closest: q_proj"):
        training.configure(configs, train_args("llm", ws.base["llm"]))
    configs = load_configs(ws, "flow", target_modules=["conv"])
    with pytest.raises(ConfigError, match="LoRA targets must be Linear"):
        training.configure(configs, train_args("flow", ws.base["flow"]))
    configs = load_configs(ws, "llm", modules_to_save=["q_proj"])
    with pytest.raises(ConfigError, match="overlaps the LoRA target"):
        training.configure(configs, train_args("llm", ws.base["llm"]))


def test_mlp_preset_and_explicit_names(ws):
    _, run, _, _ = prepared(ws, "llm", target_modules="attention_mlp")
    assert len(run.targets) == 14 and any(t.endswith("mlp.down_proj") for t in run.targets)
    _, run, _, _ = prepared(ws, "flow", target_modules=["to_q", "linear_q"])
    assert len(run.targets) == 8


def test_merged_checkpoint_format_is_stock(ws, tmp_path):
    model, _, _, _ = prepared(ws, "flow", checkpoint_format="merged")
    randomize_lora(model, seed=5)
    state = training.checkpoint_state(model, {"epoch": 0, "step": 1})
    stock = checkpoints.load(ws.base["flow"])
    assert list(state) == [*stock.keys(), "epoch", "step"]
    reference = merge_into_stock(copy.deepcopy(model)).state_dict()
    assert max(float((state[k] - reference[k]).abs().max()) for k in reference) <= 1e-6
    path = tmp_path / "merged.pt"
    torch.save(state, path)
    fresh = load_configs(ws, "flow", seed=4)["flow"]
    fresh.load_state_dict(checkpoints.tensors(checkpoints.load(path)), strict=True)
    assert max_abs_diff(outputs(fresh, "flow"), outputs(model, "flow")) <= 1e-5


def test_prepare_twice_does_not_inject_twice(ws):
    model, run, configs, args = prepared(ws, "llm")
    again = copy.deepcopy(model)  # the DPO reference model is a deep copy of the prepared one
    n = sum(1 for k in again.state_dict() if "lora_" in k)
    training.prepare(again, "llm", configs, args)
    assert sum(1 for k in again.state_dict() if "lora_" in k) == n


@pytest.mark.slow
def test_presets_on_the_full_size_flow_of_the_example_config(upstream_tree):
    """The documented example builds CosyVoice2-0.5B's real flow (112M parameters): the presets hit it."""
    from pathlib import Path

    from hyperpyyaml import load_hyperpyyaml

    from cosyvoice_ext.lora.config import parse_section
    from cosyvoice_ext.lora.targets import resolve_targets
    from tests.test_lora_helpers import put_upstream_on_path

    put_upstream_on_path(upstream_tree)
    text = (Path(__file__).resolve().parents[1] / "examples" / "ext-lora.yaml").read_text(encoding="utf-8")
    configs = load_hyperpyyaml(text, overrides={"llm": None, "hift": None, "hifigan": None})
    targets = resolve_targets(configs["flow"], parse_section(configs)["flow"])
    assert len(targets) == (6 + 4) * 4 + (1 + 12 + 1) * 4 * 4  # encoder blocks + estimator transformer blocks
    assert "decoder.estimator.mid_blocks.11.1.3.attn1.to_out.0" in targets


# --- CosyVoice3 (upstream ace7c47): CosyVoice3LM and the DiT flow -------------------------------------

CV3_DEFAULT_TARGETS = {
    "llm": [f"llm.model.model.layers.{i}.{leaf}" for i in range(2)
            for leaf in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")],
    "flow": [f"decoder.estimator.transformer_blocks.{i}.{leaf}" for i in range(2)
             for leaf in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.ff.0.0", "ff.ff.2")],
}


@pytest.mark.parametrize("name", ["llm", "flow"])
def test_cosyvoice3_default_targets_are_chosen_by_model_class(cv3, name, caplog):
    from peft.tuners.tuners_utils import BaseTunerLayer

    caplog.set_level(logging.INFO, logger="cosyvoice_ext")
    model, run, configs, _ = prepared(cv3, name)
    assert type(model).__name__ == {"llm": "CosyVoice3LM", "flow": "CausalMaskedDiffWithDiT"}[name]
    assert configs["cosyext"][name].get("target_modules") is None  # nothing configured: the class decides
    assert run.settings.target_modules == "default"
    assert run.targets == CV3_DEFAULT_TARGETS[name]  # exactly these, in module order
    assert [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)] == run.targets
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{t}.lora_{ab}.default.weight" for t in run.targets for ab in "AB"}
    base = checkpoints.load(cv3.base[name])
    assert sum(1 for k in model.state_dict() if "lora_" not in k) == len(base)
    for key, value in model.state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, base[key.replace(".base_layer.", ".")]), key
    assert f"({type(model).__name__} (cosyvoice3))" in caplog.text and "model keys loaded (100.0%)" in caplog.text


@pytest.mark.parametrize("name, preset, n", [("llm", "attention", 8), ("flow", "attention", 8),
                                             ("flow", "attention_ff", 12)])
def test_cosyvoice3_presets(cv3, name, preset, n):
    _, run, _, _ = prepared(cv3, name, target_modules=preset)
    assert len(run.targets) == n
    if name == "flow":
        assert all(".transformer_blocks." in t for t in run.targets)


def test_cosyvoice3_targets_that_match_nothing_name_the_class_and_real_modules(cv3):
    configs = load_configs(cv3, "flow", target_modules=["linear_q", "to_q"])  # CosyVoice2's encoder names
    with pytest.raises(ConfigError) as err:
        training.configure(configs, train_args("flow", cv3.base["flow"]))
    msg = str(err.value)
    assert msg.startswith("cosyext.flow.target_modules: 'linear_q' matches no module of the flow model "
                          "CausalMaskedDiffWithDiT (cosyvoice3)")
    for real in ("decoder.estimator.transformer_blocks.0.attn.to_q", "decoder.estimator.transformer_blocks.0.ff.ff.2"):
        assert real in msg
    assert "Linear modules in all" in msg and err.value.hint

    configs = load_configs(cv3, "llm", target_modules=r"llm\.model\.layers\.\d+\.q_proj")  # a regex missing `model.`
    with pytest.raises(ConfigError) as err:
        training.configure(configs, train_args("llm", cv3.base["llm"]))
    assert "matches no module of the llm model CosyVoice3LM (cosyvoice3)" in str(err.value)
    assert "llm.model.model.layers.0.self_attn.q_proj" in str(err.value)

    configs = load_configs(cv3, "flow", target_modules="encoder_attention")  # a CosyVoice2-only preset
    with pytest.raises(ConfigError, match="preset 'encoder_attention' belongs to cosyvoice2; a cosyvoice3 flow has "
                       "the presets default, attention, attention_ff"):
        training.configure(configs, train_args("flow", cv3.base["flow"]))


@pytest.mark.parametrize("name", ["llm", "flow"])
def test_cosyvoice3_adapter_resume_is_bit_exact(cv3, name, tmp_path):
    model, run, _, _ = prepared(cv3, name)
    randomize_lora(model, seed=13)
    ckpt = tmp_path / "epoch_2_whole.pt"
    torch.save(training.checkpoint_state(model, {"epoch": 2, "step": 30}), ckpt)
    meta = checkpoints.load(ckpt)["cosyext"]
    assert meta["family"] == "cosyvoice3" and meta["model_class"].endswith(type(model).__name__)
    assert meta["targets"] == CV3_DEFAULT_TARGETS[name]

    configs = load_configs(cv3, name, seed=99)  # another random init: nothing may leak through
    resumed = configs[name]
    args = train_args(name, ckpt)
    assert trainpy_load(resumed, ckpt) == (30, 2)
    training.configure(configs, args)
    training.prepare(resumed, name, configs, args)
    want, got = model.state_dict(), resumed.state_dict()
    assert list(want) == list(got)
    for key in want:
        assert torch.equal(want[key], got[key]), key
    a, b = cv3_outputs(model, name), cv3_outputs(resumed, name)
    assert torch.equal(a["loss"], b["loss"])


def test_cosyvoice3_merged_checkpoint_loads_strictly_into_a_fresh_stock_model(cv3, tmp_path):
    for name in ("llm", "flow"):
        model, _, _, _ = prepared(cv3, name, checkpoint_format="merged")
        randomize_lora(model, seed=17)
        state = training.checkpoint_state(model, {"epoch": 0, "step": 1})
        stock_keys = list(checkpoints.load(cv3.base[name]))
        assert list(state) == [*stock_keys, "epoch", "step"]
        if name == "llm":  # CosyVoice3's LLM: no llm_embedding, an unbiased llm_decoder
            assert "llm_embedding.weight" not in state and "llm_decoder.bias" not in state
        torch.save(state, tmp_path / f"{name}.pt")
        fresh = load_configs(cv3, name, seed=4)[name]
        fresh.load_state_dict(checkpoints.tensors(checkpoints.load(tmp_path / f"{name}.pt")), strict=True)
        lora_out, merged_out = cv3_outputs(model, name), cv3_outputs(fresh, name)
        assert max_abs_diff(lora_out, merged_out) <= 1e-5, name


def test_cosyvoice2_checkpoints_and_adapters_do_not_go_into_cosyvoice3(cv3, tmp_path):
    """A CosyVoice2 llm.pt (llm_embedding, biased llm_decoder) as base, or a CosyVoice3 adapter resumed into
    CosyVoice2's Qwen2LM: both stop with the families named, not a bare shape mismatch."""
    from cosyvoice.llm.llm import Qwen2Encoder, Qwen2LM

    cv2_llm = Qwen2LM(64, 64, 6561, Qwen2Encoder(str(cv3.qwen)), sampling=None)
    torch.save(cv2_llm.state_dict(), tmp_path / "cv2_llm.pt")
    configs = load_configs(cv3, "llm")
    with pytest.raises(CheckpointError, match=r"the file looks like a cosyvoice2 llm\.pt; the model is "
                                              r"CosyVoice3LM \(cosyvoice3\)") as err:
        training.prepare(configs["llm"], "llm", configs, train_args("llm", tmp_path / "cv2_llm.pt"))
    assert "CosyVoice2 and CosyVoice3" in err.value.hint

    model, _, _, _ = prepared(cv3, "llm")
    torch.save(training.checkpoint_state(model, {"epoch": 0, "step": 1}), tmp_path / "adapter.pt")
    with pytest.raises(CheckpointError, match=r"was trained on CosyVoice3LM \(cosyvoice3\); the config builds "
                                              r"Qwen2LM \(cosyvoice2\)"):
        training.prepare(cv2_llm, "llm", configs, train_args("llm", tmp_path / "adapter.pt"))


def test_resume_compares_the_resolved_targets_not_their_spelling(cv3, tmp_path):
    """`default` resumes an adapter written as `attention_mlp` on CosyVoice3LM (the same 14 modules); an adapter on
    attention only (8 modules) does not resume under the default and the error says which modules differ."""
    model, _, _, _ = prepared(cv3, "llm", target_modules="attention_mlp")
    torch.save(training.checkpoint_state(model, {"epoch": 0, "step": 2}), tmp_path / "mlp.pt")
    configs = load_configs(cv3, "llm", seed=5)
    run = training.prepare(configs["llm"], "llm", configs, train_args("llm", tmp_path / "mlp.pt"))
    assert run.resumed_from == str(tmp_path / "mlp.pt") and run.settings.target_modules == "default"

    model, _, _, _ = prepared(cv3, "llm", target_modules="attention")
    torch.save(training.checkpoint_state(model, {"epoch": 0, "step": 2}), tmp_path / "attn.pt")
    configs = load_configs(cv3, "llm", seed=5)
    with pytest.raises(CheckpointError, match=r"trained with target_modules='attention' \(8 modules\), the config's "
                                              r"target_modules='default' gives 14 modules \(now also "
                                              r"llm\.model\.model\.layers\.0\.mlp\.down_proj\)"):
        training.prepare(configs["llm"], "llm", configs, train_args("llm", tmp_path / "attn.pt"))
