"""Shared pieces of the LoRA/export tests (no tests here): a tiny workspace, fixed inputs, forwards,
and the CosyVoice3 fixtures (`cv3_tree`, `cv3`) the test modules import.

Everything runs the real upstream classes (from the hash-verified upstream tree), real peft and
real torch on CPU. Importable by the end-to-end tests too. CosyVoice2 pieces use the pinned tree
(44316c34); the CosyVoice3 pieces (`cv3_*`) use ace7c47, imported side by side via `upstream_imports`.
"""

from __future__ import annotations

import json
import random
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import torch

LORA_SECTION = """\
cosyext:
  llm:
    r: 4
    alpha: 8
    dropout: 0.0
    target_modules: attention
  flow:
    r: 4
    alpha: 8
    dropout: 0.0
    target_modules: attention
"""


@dataclass(frozen=True)
class TinyWorkspace:
    root: Path
    qwen: Path
    config: Path
    base: dict  # model name -> base checkpoint path


_cache: dict[Path, TinyWorkspace] = {}


def put_upstream_on_path(root: Path) -> None:
    for p in (Path(root) / "third_party" / "Matcha-TTS", Path(root)):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


def tiny_workspace(root: Path, upstream: Path) -> TinyWorkspace:
    """Tiny Qwen2 dir, a CosyVoice2-shaped config with a `cosyext:` section, base llm.pt and flow.pt."""
    if root in _cache:
        return _cache[root]
    from cosyvoice_ext.tiny.config import make_base_checkpoint, write_tiny_config
    from cosyvoice_ext.tiny.qwen import make_tiny_qwen

    put_upstream_on_path(upstream)
    qwen = make_tiny_qwen(root / "qwen")
    config = write_tiny_config(root / "ext.yaml", qwen, extra=LORA_SECTION)
    base = {m: make_base_checkpoint(config, m, root / f"{m}.pt") for m in ("llm", "flow")}
    _cache[root] = TinyWorkspace(root, qwen, config, base)
    return _cache[root]


def load_configs(ws: TinyWorkspace, model: str, seed: int = 1, **lora) -> dict:
    """The config as train.py loads it for `--model model`; `lora` overrides keys of cosyext.<model>."""
    from cosyvoice_ext.tiny.config import load_tiny_config

    configs = load_tiny_config(ws.config, model, seed=seed)
    configs["cosyext"][model].update(lora)
    return configs


def train_args(model: str, checkpoint: Path | str | None) -> types.SimpleNamespace:
    return types.SimpleNamespace(model=model, checkpoint=None if checkpoint is None else str(checkpoint),
                                 train_engine="torch_ddp")


def randomize_lora(model: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """peft starts with B = 0 (LoRA is a no-op); give every LoRA tensor values so merging matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def llm_batch() -> dict:
    """Fixed LLM batch; speech/text length ratio <= 3 keeps Qwen2LM on its deterministic unistream path."""
    g = torch.Generator().manual_seed(7)
    return {
        "text_token": torch.randint(1, 200, (2, 6), generator=g),
        "text_token_len": torch.tensor([6, 4], dtype=torch.int32),
        "speech_token": torch.randint(0, 6561, (2, 12), generator=g),
        "speech_token_len": torch.tensor([12, 9], dtype=torch.int32),
    }


def flow_batch() -> dict:
    g = torch.Generator().manual_seed(7)
    return {
        "speech_token": torch.randint(0, 6561, (2, 10), generator=g),
        "speech_token_len": torch.tensor([10, 8], dtype=torch.int32),
        "speech_feat": torch.randn(2, 20, 80, generator=g),
        "speech_feat_len": torch.tensor([20, 16], dtype=torch.int32),
        "embedding": torch.randn(2, 192, generator=g),
    }


def outputs(model: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Loss plus an inner activation, on fixed inputs; flow's random conditioning/noise is seeded."""
    model.eval()
    with torch.no_grad():
        if name == "llm":
            g = torch.Generator().manual_seed(3)
            xs = torch.randn(2, 9, 64, generator=g)
            hidden, _ = model.llm(xs, torch.tensor([9, 6]))
            return {"loss": model(llm_batch(), torch.device("cpu"))["loss"], "hidden": hidden}
        random.seed(0)
        torch.manual_seed(0)
        loss = model(flow_batch(), torch.device("cpu"))["loss"]
        b = flow_batch()
        emb = model.input_embedding(b["speech_token"])
        h, _ = model.encoder(emb, b["speech_token_len"], streaming=False)
        return {"loss": loss, "encoder": h}


def max_abs_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# --- CosyVoice3 (upstream ace7c47): CosyVoice3LM and the DiT flow -------------------------------------

CV3_REV = "ace7c47"
# Tiny CosyVoice3 models from upstream's recipe (examples/libritts/cosyvoice3/conf/cosyvoice3.yaml): the
# DiT is dim 64, depth 2, heads 2, dim_head 32; PreLookaheadLayer 32 channels; mel/spk dims stay 80 and
# the token vocabulary 6561, as upstream's inference code hard-codes them.
CV3_CONFIG = """\
# Tiny CosyVoice3-shaped config written by tests/test_lora_helpers.py (tests only).
__set_seed1: !apply:random.seed [1986]
__set_seed2: !apply:numpy.random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]
__set_seed4: !apply:torch.cuda.manual_seed_all [1986]

sample_rate: 24000
llm_input_size: 64
llm_output_size: 64
spk_embed_dim: 192
qwen_pretrain_path: {qwen}
token_frame_rate: 25
token_mel_ratio: 2
chunk_size: 25
num_decoding_left_chunks: -1

llm: !new:cosyvoice.llm.llm.CosyVoice3LM
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    speech_token_size: 6561
    length_normalized_loss: True
    lsm_weight: 0
    mix_ratio: [5, 15]
    llm: !new:cosyvoice.llm.llm.Qwen2Encoder
        pretrain_path: !ref <qwen_pretrain_path>
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: 0.8
        top_k: 25
        win_size: 10
        tau_r: 0.1

flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithDiT
    input_size: 80
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 6561
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    pre_lookahead_layer: !new:cosyvoice.transformer.upsample_encoder.PreLookaheadLayer
        in_channels: 80
        channels: 32
        pre_lookahead_len: 3
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.DiT.dit.DiT
            dim: 64
            depth: 2
            heads: 2
            dim_head: 32
            ff_mult: 2
            mel_dim: 80
            mu_dim: 80
            spk_dim: 80
            out_channels: 80
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

hift: null
hifigan: null
"""
# LoRA section without target_modules: the per-class defaults apply
CV3_LORA_SECTION = """\
cosyext:
  llm:
    r: 4
    alpha: 8
  flow:
    r: 4
    alpha: 8
"""
_UPSTREAM_TOPS = ("cosyvoice", "matcha")
_module_sets: dict[str, dict] = {}


@contextmanager
def upstream_imports(root: Path) -> Iterator[None]:
    """Import `cosyvoice`/`matcha` from `root` inside the block, whatever tree the process imported before.

    Two upstream commits cannot share one module namespace: the CosyVoice2 tests in the same process
    import the 2025 pin. The block gets its own `sys.modules` entries (kept between blocks for the same
    tree, so each tree is imported once) and the previous ones come back afterwards. Upstream reads the
    `onnx_path` environment variable at import (online features): unset inside.
    """
    import os

    key = str(Path(root).resolve())
    mine = lambda name: name.split(".")[0] in _UPSTREAM_TOPS  # noqa: E731
    saved = {n: m for n, m in sys.modules.items() if mine(n)}
    saved_path, saved_onnx = list(sys.path), os.environ.pop("onnx_path", None)
    for n in saved:
        del sys.modules[n]
    sys.modules.update(_module_sets.get(key, {}))
    put_upstream_on_path(Path(root))
    try:
        yield
    finally:
        _module_sets[key] = {n: m for n, m in sys.modules.items() if mine(n)}
        for n in _module_sets[key]:
            del sys.modules[n]
        sys.modules.update(saved)
        sys.path[:] = saved_path
        if saved_onnx is not None:
            os.environ["onnx_path"] = saved_onnx


def cv3_workspace(root: Path, upstream: Path) -> TinyWorkspace:
    """Tiny Qwen2 dir, the tiny CosyVoice3 config with a default-target `cosyext:` section, base llm.pt/flow.pt.

    Call inside `upstream_imports(upstream)`.
    """
    if root in _cache:
        return _cache[root]
    from cosyvoice_ext.tiny.config import make_base_checkpoint
    from cosyvoice_ext.tiny.qwen import make_tiny_qwen

    qwen = make_tiny_qwen(root / "qwen")
    config = root / "cv3.yaml"
    config.write_text(CV3_CONFIG.format(qwen=json.dumps(str(qwen.resolve()))) + "\n" + CV3_LORA_SECTION,
                      encoding="utf-8")
    base = {m: make_base_checkpoint(config, m, root / f"{m}.pt") for m in ("llm", "flow")}
    _cache[root] = TinyWorkspace(root, qwen, config, base)
    return _cache[root]


def cv3_llm_batch() -> dict:
    """llm_batch plus the `instruct` tokens every CosyVoice3 sample carries."""
    g = torch.Generator().manual_seed(9)
    return {**llm_batch(), "instruct_token": torch.randint(1, 200, (2, 5), generator=g),
            "instruct_token_len": torch.tensor([5, 3], dtype=torch.int32)}


def cv3_outputs(model: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Loss plus an inner activation on fixed inputs (LLM: the Qwen2 hidden states; flow: the DiT's output)."""
    model.eval()
    with torch.no_grad():
        if name == "llm":
            g = torch.Generator().manual_seed(3)
            hidden, _ = model.llm(torch.randn(2, 9, 64, generator=g), torch.tensor([9, 6]))
            return {"loss": model(cv3_llm_batch(), torch.device("cpu"))["loss"], "hidden": hidden}
        random.seed(0)
        torch.manual_seed(0)
        loss = model(flow_batch(), torch.device("cpu"))["loss"]
        g = torch.Generator().manual_seed(5)
        x, mu, cond = (torch.randn(2, 80, 20, generator=g) for _ in range(3))
        est = model.decoder.estimator(x, torch.ones(2, 1, 20), mu, torch.rand(2, generator=g),
                                      spks=torch.randn(2, 80, generator=g), cond=cond, streaming=False)
        return {"loss": loss, "estimator": est}


# Fixtures for the CosyVoice3 tests; a test module imports them by name (pytest registers them there).

@pytest.fixture(scope="module")
def cv3_tree(upstream_at) -> Path:
    """conftest's pristine tree at ace7c47 (hash-verified against vendor.lock)."""
    return Path(upstream_at(CV3_REV, patched=False))


@pytest.fixture(scope="module")
def cv3_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cv3")


@pytest.fixture
def cv3(cv3_tree, cv3_root) -> Iterator[TinyWorkspace]:
    """The tiny CosyVoice3 workspace, with ace7c47's `cosyvoice` importable for the test's duration."""
    with upstream_imports(cv3_tree):
        yield cv3_workspace(cv3_root, cv3_tree)
