"""The memory levers on the real upstream classes (tiny sizes), real HF Qwen2, real peft, real torch.

Each lever must keep training the same (loss, gradients, state-dict keys) and change what it is
for: logits never computed, decoder layers recomputed in backward, matmuls in bf16.
"""

from __future__ import annotations

import copy
import logging
import random
import sys
import types
from pathlib import Path

import pytest
import torch

from cosyvoice_ext import relay
from cosyvoice_ext.errors import ConfigError
from cosyvoice_ext.memory import levers
from cosyvoice_ext.memory.config import MemoryConfigError, MemorySettings, parse_memory_section
from cosyvoice_ext.plugins import new_manager, reset_manager
from cosyvoice_ext.tiny.workspace import upstream_import_paths


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory, upstream_tree):
    """A tiny Qwen2 dir, a CosyVoice2-shaped config and a base llm.pt; upstream importable."""
    from cosyvoice_ext.tiny import make_base_checkpoint, make_tiny_qwen, write_tiny_config

    for p in reversed(upstream_import_paths(upstream_tree)):
        if p not in sys.path:
            sys.path.insert(0, p)
    root = tmp_path_factory.mktemp("memory")
    qwen = make_tiny_qwen(root / "qwen")
    config = write_tiny_config(root / "tiny.yaml", qwen)
    base = make_base_checkpoint(config, "llm", root / "llm.pt", seed=3)
    return types.SimpleNamespace(root=root, qwen=qwen, config=config, base=base, upstream=upstream_tree)


def build(tiny, name: str = "llm", seed: int = 3) -> torch.nn.Module:
    """The model train.py builds for --model name; same seed, same weights."""
    from cosyvoice_ext.tiny import load_tiny_config

    return load_tiny_config(tiny.config, name, seed=seed)[name]


def llm_batch(n_utts: int = 2, seed: int = 0) -> dict:
    """What upstream's padding() yields for the LLM: ~3 text tokens and 25 speech tokens per second."""
    g = torch.Generator().manual_seed(seed)
    text_len = torch.tensor([9, 6][:n_utts], dtype=torch.int32)
    speech_len = torch.tensor([75, 50][:n_utts], dtype=torch.int32)
    return {
        "text_token": torch.randint(0, 300, (n_utts, int(text_len.max())), generator=g),
        "text_token_len": text_len,
        "speech_token": torch.randint(0, 6561, (n_utts, int(speech_len.max())), generator=g),
        "speech_token_len": speech_len,
    }


def flow_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tok = torch.tensor([40, 30], dtype=torch.int32)
    return {
        "speech_token": torch.randint(0, 6561, (2, 40), generator=g),
        "speech_token_len": tok,
        "speech_feat": torch.randn(2, 80, 80, generator=g),
        "speech_feat_len": tok * 2,
        "embedding": torch.randn(2, 192, generator=g),
    }


def train_step(model: torch.nn.Module, batch: dict, seed: int = 0) -> tuple[float, dict[str, torch.Tensor]]:
    """One forward+backward through the patched upstream step functions; loss and gradients."""
    from cosyvoice.utils import train_utils

    model.train()
    model.zero_grad(set_to_none=True)
    random.seed(seed)  # upstream picks bistream/unistream (and flow streaming) from `random`
    torch.manual_seed(seed)
    info = {"dtype": "fp32", "train_engine": "torch_ddp", "accum_grad": 1}
    info = train_utils.batch_forward(model, batch, None, info)
    loss = float(info["loss_dict"]["loss"])
    train_utils.batch_backward(model, None, info)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss, grads


def assert_same_grads(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=1e-5), (k, (a[k] - b[k]).abs().max())


class CallCounter:
    """Counts calls of one module's forward (forward hooks do not fire in checkpoint recomputation)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.n = 0
        inner = module.forward

        def counted(*args, **kwargs):
            self.n += 1
            return inner(*args, **kwargs)

        module.forward = counted


# --- the cosyext.memory section --------------------------------------------------------------------

def test_section_defaults_and_values():
    assert parse_memory_section({}) == MemorySettings()
    assert not parse_memory_section({"cosyext": {"llm": {"r": 4}}}).any
    s = parse_memory_section({"cosyext": {"memory": {"gradient_checkpointing": True, "autocast": "BF16",
                                                     "skip_unused_logits": True}}})
    assert s == MemorySettings(gradient_checkpointing=True, autocast="bf16", skip_unused_logits=True) and s.any
    # an unquoted `off` read by a YAML 1.1 reader arrives as False
    assert parse_memory_section({"cosyext": {"memory": {"autocast": False}}}).autocast == "off"


@pytest.mark.parametrize("section, key, words", [
    ({"gradient_checkpoint": True}, "cosyext.memory.gradient_checkpoint", "did you mean 'gradient_checkpointing'"),
    ({"batch_size": 3}, "cosyext.memory.batch_size", "valid keys: gradient_checkpointing"),
    ({"gradient_checkpointing": "yes"}, "cosyext.memory.gradient_checkpointing", "true or false"),
    ({"skip_unused_logits": 1}, "cosyext.memory.skip_unused_logits", "true or false"),
    ({"autocast": "fp8"}, "cosyext.memory.autocast", "bf16, fp16"),
    ({"autocast": True}, "cosyext.memory.autocast", "one of off"),
    (["gradient_checkpointing"], "cosyext.memory", "must be a mapping"),
])
def test_section_errors_name_the_bad_key(section, key, words):
    with pytest.raises(MemoryConfigError) as err:
        parse_memory_section({"cosyext": {"memory": section}})
    assert isinstance(err.value, ConfigError) and err.value.key == key
    assert str(err.value).startswith(key) and words in str(err.value) and err.value.hint


def test_lora_section_parser_leaves_memory_key_alone():
    from cosyvoice_ext.lora.config import parse_section

    out = parse_section({"cosyext": {"memory": {"autocast": "bf16"}, "llm": {"r": 4}}})
    assert set(out) == {"llm"}


@pytest.mark.parametrize("mode, cuda, engine, use_amp, words", [
    ("fp16", False, "torch_ddp", True, "needs a CUDA GPU"),
    ("fp16", True, "torch_ddp", False, "loss scaling"),
    ("bf16", False, "deepspeed", False, "DeepSpeed"),
    ("bf16", False, "torch_ddp", True, "--use_amp"),
])
def test_runtime_refuses_what_the_run_cannot_honour(mode, cuda, engine, use_amp, words):
    args = types.SimpleNamespace(train_engine=engine, use_amp=use_amp)
    with pytest.raises(MemoryConfigError, match=words):
        levers.check_runtime(MemorySettings(autocast=mode), args, cuda=cuda)


def test_runtime_accepts_cpu_bf16_and_cuda_fp16_with_amp():
    levers.check_runtime(MemorySettings(autocast="bf16"), types.SimpleNamespace(train_engine="torch_ddp"), cuda=False)
    levers.check_runtime(MemorySettings(autocast="fp16"),
                         types.SimpleNamespace(train_engine="torch_ddp", use_amp=True), cuda=True)


# --- each lever: same training, and the effect it is for -------------------------------------------

def test_skip_unused_logits_same_loss_and_keys_without_vocabulary_logits(tiny):
    stock, skipped = build(tiny), build(tiny)
    assert levers.skip_unused_logits(skipped)
    heads = CallCounter(stock.llm.model.lm_head), CallCounter(skipped.llm.model.lm_head)
    batch = llm_batch()
    loss_a, grads_a = train_step(stock, batch)
    loss_b, grads_b = train_step(skipped, batch)
    assert heads[0].n == 1 and heads[1].n == 0  # the stock path computes vocabulary logits; ours never does
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert_same_grads(grads_a, grads_b)
    sa, sb = stock.state_dict(), skipped.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_gradient_checkpointing_same_loss_and_grads_and_recomputes(tiny):
    plain, ckpt = build(tiny), build(tiny)
    assert levers.enable_gradient_checkpointing(ckpt)
    layers = CallCounter(plain.llm.model.model.layers[0]), CallCounter(ckpt.llm.model.model.layers[0])
    batch = llm_batch()
    loss_a, grads_a = train_step(plain, batch)
    loss_b, grads_b = train_step(ckpt, batch)
    assert layers[0].n == 1 and layers[1].n == 2  # forward, then again in backward
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert_same_grads(grads_a, grads_b)
    assert list(plain.state_dict()) == list(ckpt.state_dict())


def test_gradient_checkpointing_with_lora_keeps_adapter_gradients(tiny):
    """Frozen base + checkpointing: with reentrant checkpointing the LoRA gradients would vanish."""
    from cosyvoice_ext.lora.config import parse_model_section
    from cosyvoice_ext.lora.inject import inject
    from cosyvoice_ext.lora.targets import resolve_targets

    models = []
    for lever in (False, True):
        m = build(tiny)
        settings = parse_model_section("llm", {"r": 4, "alpha": 8, "target_modules": "attention_mlp"})
        inject(m, settings, resolve_targets(m, settings), [])
        torch.manual_seed(11)
        for n, p in m.named_parameters():
            if ".lora_B." in n:
                torch.nn.init.normal_(p, std=0.05)
        if lever:
            levers.apply(m, "llm", MemorySettings(gradient_checkpointing=True, skip_unused_logits=True))
        models.append(m)
    batch = llm_batch()
    loss_a, grads_a = train_step(models[0], batch)
    loss_b, grads_b = train_step(models[1], batch)
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert_same_grads(grads_a, grads_b)
    assert any(".lora_A." in k for k in grads_b) and all("lora_" in k for k in grads_b)
    assert all(g.abs().sum() > 0 for k, g in grads_b.items() if ".lora_A." in k)


def test_autocast_bf16_runs_matmuls_in_bf16_and_keeps_fp32_weights(tiny):
    plain, amp = build(tiny), build(tiny)
    assert levers.enable_autocast(amp, "bf16")
    seen = []
    amp.llm.model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    batch = llm_batch()
    loss_a, grads_a = train_step(plain, batch)
    loss_b, grads_b = train_step(amp, batch)
    assert seen == [torch.bfloat16]
    assert loss_b == pytest.approx(loss_a, rel=0.02)  # bf16 rounding, not another computation
    assert all(p.dtype == torch.float32 for p in amp.parameters())
    assert all(g.dtype == torch.float32 for g in grads_b.values()) and grads_a.keys() == grads_b.keys()
    assert list(plain.state_dict()) == list(amp.state_dict())


def test_levers_survive_deepcopy_bound_to_the_copy(tiny):
    """train.py deep-copies the prepared model for DPO's reference model: the copy must run itself."""
    model = build(tiny)
    levers.apply(model, "llm", MemorySettings(autocast="bf16", skip_unused_logits=True))
    twin = copy.deepcopy(model)
    assert twin.forward.__self__ is twin and twin.llm.forward.__self__ is twin.llm
    with torch.no_grad():
        for p in twin.llm_decoder.parameters():
            p.zero_()
    heads = CallCounter(model.llm.model.lm_head), CallCounter(twin.llm.model.lm_head)
    loss_a, _ = train_step(model, llm_batch())
    loss_b, _ = train_step(twin, llm_batch())
    assert loss_a != pytest.approx(loss_b)  # the copy used its own (zeroed) decoder
    assert heads[0].n == heads[1].n == 0


def test_flow_gets_autocast_only(tiny, caplog):
    caplog.set_level(logging.INFO, logger="cosyvoice_ext")
    flow = build(tiny, "flow")
    applied = levers.apply(flow, "flow", MemorySettings(gradient_checkpointing=True, autocast="bf16",
                                                        skip_unused_logits=True))
    assert applied == ["autocast=bf16"]
    assert "apply to the Qwen2 LLM only" in caplog.text
    loss, grads = train_step(flow, flow_batch())
    assert torch.isfinite(torch.tensor(loss)) and grads


# --- through the plugin, the way the patched train_utils reaches it ------------------------------

@pytest.fixture
def memory_plugin():
    import cosyvoice_ext.hooks.memory as plugin

    pm = new_manager(autoload=False)
    pm.register(plugin, name="memory")
    reset_manager(pm)
    yield pm
    reset_manager(None)


def test_plugin_validates_section_at_configure_time(memory_plugin):
    args = types.SimpleNamespace(model="llm", train_engine="torch_ddp")
    with pytest.raises(ConfigError, match="cosyext.memory.skip_logits: unknown key; did you mean 'skip_unused_logits'"):
        relay.configure(args, {"cosyext": {"memory": {"skip_logits": True}}})
    with pytest.raises(ConfigError, match="DeepSpeed"):
        relay.configure(types.SimpleNamespace(model="llm", train_engine="deepspeed"),
                        {"cosyext": {"memory": {"autocast": "bf16"}}})


def test_plugin_applies_levers_at_prepare_time(memory_plugin, tiny):
    from cosyvoice_ext.tiny import load_tiny_config

    configs = load_tiny_config(tiny.config, "llm", seed=3)
    configs["cosyext"] = {"memory": {"gradient_checkpointing": True, "skip_unused_logits": True}}
    args = types.SimpleNamespace(model="llm", train_engine="torch_ddp", checkpoint=str(tiny.base))
    relay.configure(args, configs)
    model = relay.prepare_model(args, configs["llm"])
    head, layer = CallCounter(model.llm.model.lm_head), CallCounter(model.llm.model.model.layers[1])
    stock_loss, _ = train_step(build(tiny), llm_batch())
    loss, _ = train_step(model, llm_batch())
    assert head.n == 0 and layer.n == 2 and loss == pytest.approx(stock_loss, abs=1e-6)


def test_plugin_without_section_changes_nothing(memory_plugin, tiny):
    from cosyvoice_ext.tiny import load_tiny_config

    configs = load_tiny_config(tiny.config, "llm", seed=3)
    args = types.SimpleNamespace(model="llm", train_engine="torch_ddp")
    relay.configure(args, configs)
    model = relay.prepare_model(args, configs["llm"])
    assert "forward" not in vars(model) and "forward" not in vars(model.llm)
    assert not model.llm.model.is_gradient_checkpointing


def test_memory_plugin_is_a_registered_entry_point():
    """Built-ins load like third-party plugins: pyproject must name it in the cosyvoice_ext group."""
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="cosyvoice_ext")}
    assert names.get("memory") == "cosyvoice_ext.hooks.memory", \
        "add `memory = \"cosyvoice_ext.hooks.memory\"` to [project.entry-points.cosyvoice_ext] and reinstall"


def test_benchmark_script_builds_upstream_shaped_batches():
    """The benchmark's synthetic batches follow upstream's frame arithmetic (50 Hz mel, 25 Hz tokens)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train_memory.py"
    spec = importlib.util.spec_from_file_location("bench_train_memory", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules[spec.name]
    b = bench.make_batch(2000, None)
    assert b["speech_feat"].shape == (2, 1000, 80) and b["speech_token"].shape == (2, 500)
    assert int(b["speech_feat_len"].sum()) == 2000 and int(b["text_token_len"][0]) == 70
    assert bench.Spec.parse("llm:lora+all", 400).memory_section() == {
        "gradient_checkpointing": True, "skip_unused_logits": True, "autocast": "bf16"}
    with pytest.raises(SystemExit):
        bench.Spec.parse("llm:lora+fast", 400)
