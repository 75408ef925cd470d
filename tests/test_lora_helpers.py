"""Shared pieces of the LoRA/export tests (no tests here): a tiny workspace, fixed inputs, forwards.

Everything runs the real upstream classes (from the hash-verified upstream tree), real peft and
real torch on CPU. Importable by the end-to-end tests too.
"""

from __future__ import annotations

import random
import sys
import types
from dataclasses import dataclass
from pathlib import Path

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
