"""LoRA adapter checkpoints (and merged model dirs) for a tiny inference dir, for tests and benchmarks of
`cosyext serve`: the checkpoint is what training writes (`lora.adapter.build`: settings, base sha256,
model class, peft-named tensors), with seeded non-zero LoRA weights so every voice sounds different.

Building the models needs upstream's classes importable in this process (the tree `synth.loader`
imported, or `tiny.workspace.upstream_on_path`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..family import Family

MODELS = ("llm", "flow")


def _build(model_dir: Path, fam: Family) -> dict:
    """The yaml's llm and flow with the dir's weights (the yaml's __set_seed lines leave the RNG as it was)."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    state = torch.random.get_rng_state()
    try:
        with open(model_dir / fam.config_name, encoding="utf-8") as f:
            configs = load_hyperpyyaml(f, overrides={"qwen_pretrain_path": str(model_dir / "CosyVoice-BlankEN")})
    finally:
        torch.random.set_rng_state(state)
    for name in MODELS:
        configs[name].load_state_dict(torch.load(model_dir / f"{name}.pt", map_location="cpu", weights_only=True))
    return configs


def make_adapters(model_dir: Path, dest: Path, *, seed: int, r: int = 4, std: float = 0.05,
                  models: tuple[str, ...] = MODELS) -> dict[str, Path]:
    """`dest/<model>.pt` adapter checkpoints for `model_dir` (attention targets, LoRA weights ~ N(0, std))."""
    import torch

    from .. import checkpoints
    from ..family import of_pretrained
    from ..lora import adapter
    from ..lora.config import LoraSettings
    from ..lora.inject import inject, lora_state
    from ..lora.targets import model_class, resolve_targets

    model_dir = Path(model_dir)
    fam = of_pretrained(model_dir)
    configs = _build(model_dir, fam)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    gen = torch.Generator().manual_seed(int(seed))
    for name in models:
        module = configs[name]
        settings = LoraSettings(model=name, r=r, alpha=2.0 * r, target_modules="attention")
        targets = resolve_targets(module, settings)
        inject(module, settings, targets, [])
        with torch.no_grad():
            for key, p in module.named_parameters():
                if "lora_" in key:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
        base = model_dir / f"{name}.pt"
        state = adapter.build(settings=settings, lora=lora_state(module), modules_to_save={}, targets=targets,
                              base_path=str(base), base_sha256=checkpoints.file_digest(base),
                              info_dict={"epoch": 0, "step": 1}, model_class=model_class(module), family=fam.name)
        out[name] = checkpoints.save_atomic(state, dest / f"{name}.pt")
    return out


def make_merged_dir(model_dir: Path, dest: Path, adapters: dict[str, Path]) -> Path:
    """A serve dir: `model_dir`'s files linked, llm.pt/flow.pt with `adapters` merged in (as export does)."""
    from .. import checkpoints
    from ..family import of_pretrained
    from ..lora.merge import merged_state_dict
    from ..synth import adapters as synth_adapters

    model_dir, dest = Path(model_dir), Path(dest)
    fam = of_pretrained(model_dir)
    configs = _build(model_dir, fam)
    dest.mkdir(parents=True, exist_ok=True)
    for name, path in adapters.items():
        module = configs[name]
        synth_adapters.apply(module, synth_adapters.load(path, name))
        checkpoints.save_atomic(merged_state_dict(module), dest / f"{name}.pt")
    for src in sorted(model_dir.iterdir()):
        if not (dest / src.name).exists():
            if src.is_dir():
                shutil.copytree(src, dest / src.name)
            else:
                os.symlink(src.resolve(), dest / src.name)
    return dest
