"""The memory levers on the real upstream classes (tiny sizes), real HF Qwen2, real peft, real torch.

Each lever must keep training the same (loss, gradients, state-dict keys) and change what it is
for: logits never computed, decoder layers and flow blocks (CosyVoice2's U-Net and conformer encoder at
the 2025 pin, CosyVoice3's DiT at ace7c47) recomputed in backward, matmuls in bf16, freed CPU memory
given back.
"""

from __future__ import annotations

import copy
import logging
import random
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
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
    loss = float(info["loss_dict"]["loss"].detach())
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


# --- gradient checkpointing of the flows: CosyVoice2's U-Net + conformer encoder, CosyVoice3's DiT -----

@contextmanager
def upstream_imports(tree: Path) -> Iterator[None]:
    """Import ``cosyvoice``/``matcha`` from ``tree`` inside the block. Another commit's modules, already
    loaded by other tests, are set aside and restored afterwards (both commits name them alike)."""
    ours = ("cosyvoice", "matcha")
    setaside = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in ours}
    paths = upstream_import_paths(tree)
    sys.path[:0] = paths
    try:
        yield
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] in ours]:
            del sys.modules[k]
        sys.modules.update(setaside)
        for path in paths:
            sys.path.remove(path)


@pytest.fixture(scope="module")
def main_tree(upstream_at) -> Path:
    """Upstream main at ace7c47: the first commit with CosyVoice3's DiT flow."""
    return upstream_at("ace7c47", patched=False)


def build_dit_flow(seed: int = 3) -> torch.nn.Module:
    """A tiny CausalMaskedDiffWithDiT of the real classes (cosyvoice3.yaml's structure; DiT dim 64, depth 2,
    heads 2, dim_head 32, and the DiT's default dropout 0.1, which the recipe keeps)."""
    from omegaconf import DictConfig

    from cosyvoice.flow.DiT.dit import DiT
    from cosyvoice.flow.flow import CausalMaskedDiffWithDiT
    from cosyvoice.flow.flow_matching import CausalConditionalCFM
    from cosyvoice.transformer.upsample_encoder import PreLookaheadLayer

    torch.manual_seed(seed)
    estimator = DiT(dim=64, depth=2, heads=2, dim_head=32, ff_mult=2, mel_dim=80, mu_dim=80, spk_dim=80,
                    out_channels=80, static_chunk_size=50, num_decoding_left_chunks=-1)
    cfm = DictConfig({"sigma_min": 1e-06, "solver": "euler", "t_scheduler": "cosine", "training_cfg_rate": 0.2,
                      "inference_cfg_rate": 0.7, "reg_loss_type": "l1"})
    decoder = CausalConditionalCFM(in_channels=240, n_spks=1, spk_emb_dim=80, cfm_params=cfm, estimator=estimator)
    return CausalMaskedDiffWithDiT(
        input_size=80, output_size=80, spk_embed_dim=192, output_type="mel", vocab_size=6561, input_frame_rate=25,
        only_mask_loss=True, token_mel_ratio=2, pre_lookahead_len=3,
        pre_lookahead_layer=PreLookaheadLayer(in_channels=80, channels=32, pre_lookahead_len=3), decoder=decoder)


def with_dropout(model: torch.nn.Module, p: float = 0.1) -> torch.nn.Module:
    """Dropout on everywhere (the tiny CosyVoice2 template has 0.0), so a recomputation that drew other
    masks would change the gradients."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
    return model


@pytest.fixture(params=["cosyvoice2", "cosyvoice3"])
def flow_family(request, tiny):
    """(build(seed) -> flow model, upstream tree, a block the lever checkpoints) per family:
    CosyVoice2 at the 2025 pin (44316c34), CosyVoice3 at ace7c47."""
    if request.param == "cosyvoice2":
        return types.SimpleNamespace(
            name="cosyvoice2", tree=tiny.upstream, build=lambda seed=3: with_dropout(build(tiny, "flow", seed)),
            blocks=lambda m: [m.decoder.estimator.mid_blocks[0][1][0], m.decoder.estimator.down_blocks[0][0],
                              m.encoder.up_encoders[0]])
    return types.SimpleNamespace(
        name="cosyvoice3", tree=request.getfixturevalue("main_tree"), build=build_dit_flow,
        blocks=lambda m: [m.decoder.estimator.transformer_blocks[1]])


def flow_step(model: torch.nn.Module, batch: dict, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training forward+backward as batch_forward/batch_backward run it (model(batch, device), loss.backward)."""
    model.train()
    model.zero_grad(set_to_none=True)
    random.seed(seed)  # the flows draw streaming / prompt length from `random`, noise and t from torch
    torch.manual_seed(seed)
    loss = model(batch, torch.device("cpu"))["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_identical(a: tuple, b: tuple) -> None:
    """Same loss and same gradients, bit for bit: checkpointing recomputes the same ops on the same inputs."""
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert torch.equal(loss_a, loss_b), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    diff = {k: float((grads_a[k] - grads_b[k]).abs().max()) for k in grads_a if not torch.equal(grads_a[k], grads_b[k])}
    assert not diff, diff


def test_flow_checkpointing_same_loss_and_grads_and_recomputes(flow_family):
    with upstream_imports(flow_family.tree):
        plain, ckpt = flow_family.build(), flow_family.build()
        counters = [CallCounter(b) for b in flow_family.blocks(plain)] + \
                   [CallCounter(b) for b in flow_family.blocks(ckpt)]
        what = levers.enable_gradient_checkpointing(ckpt)
        assert what and ("DiT block" in what if flow_family.name == "cosyvoice3" else "U-Net" in what)
        for seed in (0, 1, 2):  # streaming and not, with and without a prompt, CFG drops
            assert_identical(flow_step(plain, flow_batch(), seed), flow_step(ckpt, flow_batch(), seed))
        n = len(counters) // 2
        assert [c.n for c in counters[:n]] == [3] * n  # once a step without the lever
        assert [c.n for c in counters[n:]] == [6] * n  # forward, then again in backward
        sa, sb = plain.state_dict(), ckpt.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_flow_checkpointing_needs_the_rng_state_it_preserves(main_tree, monkeypatch):
    """The control for the test above: dropout inside the DiT blocks really draws; recomputed with fresh
    random numbers (no preserved RNG state) the gradients differ."""
    import functools

    from cosyvoice_ext.memory import checkpointing

    with upstream_imports(main_tree):
        plain, ckpt = build_dit_flow(), build_dit_flow()
        monkeypatch.setattr(checkpointing, "checkpoint",
                            functools.partial(checkpointing.checkpoint, preserve_rng_state=False))
        levers.enable_gradient_checkpointing(ckpt)
        (loss_a, grads_a), (loss_b, grads_b) = flow_step(plain, flow_batch()), flow_step(ckpt, flow_batch())
    assert torch.equal(loss_a, loss_b)  # the forward is the same
    assert not all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)


def test_flow_checkpointing_with_lora_keeps_adapter_gradients(flow_family):
    """Frozen base + LoRA inside checkpointed blocks (the family's default targets)."""
    from cosyvoice_ext.lora.config import parse_model_section
    from cosyvoice_ext.lora.inject import inject
    from cosyvoice_ext.lora.targets import resolve_targets

    with upstream_imports(flow_family.tree):
        results = []
        for lever in (False, True):
            m = flow_family.build()
            settings = parse_model_section("flow", {"r": 4, "alpha": 8})
            inject(m, settings, resolve_targets(m, settings), [])
            torch.manual_seed(11)
            for n, p in m.named_parameters():
                if ".lora_B." in n:
                    torch.nn.init.normal_(p, std=0.05)
            if lever:
                assert levers.apply(m, "flow", MemorySettings(gradient_checkpointing=True)) == ["gradient_checkpointing"]
            # seed 1: no CFG drop of both utterances' conditions, which would leave the encoder without gradients
            results.append((flow_step(m, flow_batch(), seed=1), list(m.state_dict())))
    (plain, keys_a), (ckpt, keys_b) = results
    assert_identical(plain, ckpt)
    assert keys_a == keys_b
    grads = ckpt[1]
    assert all("lora_" in k for k in grads) and any(".estimator." in k for k in grads)
    zero = [k for k, g in grads.items() if ".lora_A." in k and not g.abs().sum() > 0]
    assert not zero, zero


def test_flow_checkpointing_survives_deepcopy_and_leaves_inference_alone(main_tree):
    """train.py deep-copies the prepared model (DPO); CV runs under no_grad and inference in eval mode:
    those run the plain forward, each block once."""
    with upstream_imports(main_tree):
        model = build_dit_flow()
        levers.enable_gradient_checkpointing(model)
        twin = copy.deepcopy(model)
        block, twin_block = model.decoder.estimator.transformer_blocks[0], twin.decoder.estimator.transformer_blocks[0]
        assert twin_block.forward.__self__ is twin_block
        assert twin_block.__dict__["_cosyext_forward_before_checkpoint"].__self__ is twin_block
        assert_identical(flow_step(model, flow_batch()), flow_step(twin, flow_batch()))
        with torch.no_grad():
            twin.decoder.estimator.proj_out.weight.zero_()
        assert not torch.equal(flow_step(model, flow_batch())[0], flow_step(twin, flow_batch())[0])  # its own weights

        seen = []
        inner = block.__dict__["_cosyext_forward_before_checkpoint"]
        block.__dict__["_cosyext_forward_before_checkpoint"] = lambda *a, **k: seen.append(1) or inner(*a, **k)
        with torch.no_grad():
            model.train()
            model(flow_batch(), torch.device("cpu"))
        model.eval()
        model(flow_batch(), torch.device("cpu"))["loss"].backward()
        assert len(seen) == 2  # once per forward: nothing checkpointed, nothing recomputed
        model.train()
        flow_step(model, flow_batch())
        assert len(seen) == 4  # training: forward + recomputation


def test_flow_levers_applied_and_logged(tiny, caplog):
    caplog.set_level(logging.INFO, logger="cosyvoice_ext")
    flow = build(tiny, "flow")
    applied = levers.apply(flow, "flow", MemorySettings(gradient_checkpointing=True, autocast="bf16",
                                                        skip_unused_logits=True))
    assert applied == ["gradient_checkpointing", "autocast=bf16"]
    assert "skip_unused_logits applies to the Qwen2 LLM only" in caplog.text
    assert "gradient_checkpointing of 3 U-Net resnet blocks in decoder.estimator; 3 U-Net transformer blocks " \
           "in decoder.estimator; 5 conformer layers in encoder" in caplog.text
    loss, grads = train_step(flow, flow_batch())
    assert torch.isfinite(torch.tensor(loss)) and grads


def test_gradient_checkpointing_on_a_model_it_does_not_know_warns(caplog):
    caplog.set_level(logging.INFO, logger="cosyvoice_ext")
    assert levers.apply(torch.nn.Linear(2, 2), "hifigan", MemorySettings(gradient_checkpointing=True)) == []
    assert "found no blocks it knows in hifigan (Linear)" in caplog.text


RELEASE_PROBE = """
import ctypes, ctypes.util, sys
from cosyvoice_ext.memory.allocator import release_cpu_memory  # no torch: one thread, one malloc arena
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def alloc(n):  # as torch's CPU allocator (c10::alloc_cpu: posix_memalign), pages touched
    p = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(p), 64, n) == 0
    libc.memset(p, 1, n)
    return p
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
if sys.argv[1] == "on":
    assert release_cpu_memory()
else:  # glibc as a training step leaves it: large freed temporaries raised its dynamic mmap threshold (and
    # the trim threshold with it). Pinned, so the result does not depend on this process's heap history.
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    assert libc.mallopt(-3, 64 << 20) == 1 and libc.mallopt(-1, 1 << 30) == 1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
for _ in range(3):
    libc.free(alloc(8 << 20))
before = rss()
tmp, keep = [], []
for _ in range(32):  # what a step does: 4 MiB temporaries, small survivors in between, temporaries freed
    tmp.append(alloc(4 << 20))
    keep.append(alloc(4096))
for p in tmp:
    libc.free(p)
print((rss() - before) / 2**20)
"""


def test_release_cpu_memory_gives_freed_memory_back():
    """Without the lever glibc serves 4 MiB blocks from its heap and keeps some after free; with it every
    block over 128 KiB is its own mapping, returned on free (RSS back where it was)."""
    import subprocess

    kept = {}
    for mode in ("off", "on"):
        out = subprocess.run([sys.executable, "-c", RELEASE_PROBE, mode], capture_output=True, text=True, check=True)
        kept[mode] = float(out.stdout.split()[-1])
    assert kept["off"] >= 8 and kept["on"] < 1, kept


def test_release_cpu_memory_is_a_plain_switch():
    s = parse_memory_section({"cosyext": {"memory": {"release_cpu_memory": True}}})
    assert s == MemorySettings(release_cpu_memory=True) and s.any and s.describe() == "release_cpu_memory"
    with pytest.raises(MemoryConfigError, match="true or false"):
        parse_memory_section({"cosyext": {"memory": {"release_cpu_memory": "yes"}}})


# --- through the plugin, the way the patched train_utils reaches it ------------------------------

@pytest.fixture
def memory_plugin():
    import cosyvoice_ext.builtin.memory as plugin

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


def test_memory_plugin_is_a_default_plugin():
    """Built-ins are registered by import in every manager, whatever the environment says."""
    from cosyvoice_ext.plugins import DEFAULT_PLUGINS

    assert dict(DEFAULT_PLUGINS)["memory"] == "cosyvoice_ext.builtin.memory"
    assert new_manager(autoload=False).get_plugin("memory") is not None


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
    assert "instruct_token" not in b and bench.make_batch(400, None, family="cv3")["instruct_token"].shape == (1, 8)
    assert bench.Spec.parse("llm:lora+all", 400).memory_section() == {
        "gradient_checkpointing": True, "skip_unused_logits": True, "release_cpu_memory": False, "autocast": "bf16"}
    flow = bench.Spec.parse("cv3-flow:lora+levers", 2000)
    assert (flow.family, flow.model, flow.levers, flow.name) == ("cv3", "flow", ("ckpt", "release"),
                                                                 "cv3-flow:lora+ckpt+release")
    # the issue-9 comparison: both families, both models, full / LoRA / LoRA+levers at 400 and 2000 frames
    matrix = {(s.group, s.frames, bench._canonical(vars(s) | {"levers": list(s.levers)})) for s in bench.select(None)}
    assert {(f"{fam}-{m}", f, c) for fam in ("cv2", "cv3") for m in ("llm", "flow") for f in (400, 2000)
            for c in ("full", "lora", "lora+levers")} <= matrix
    with pytest.raises(SystemExit):
        bench.Spec.parse("llm:lora+fast", 400)
    with pytest.raises(SystemExit):
        bench.Spec.parse("cv4-llm:lora", 400)
