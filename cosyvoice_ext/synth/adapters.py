"""A training run's adapters applied in memory, without merging: peft LoRA injected into the model
upstream's class loaded from the pretrained dir, and the adapter's LoRA (and modules_to_save)
tensors copied in bit for bit. The same inject/load code training resumes with (`lora.inject`), so
what speaks is exactly the model training evaluated; `cosyext export` merges the same tensors.

Which checkpoint of a run: what export takes (`lora.export.runs.select`): best.yaml (early
stopping) when there is one, else the latest epoch. A full checkpoint (a run with
`checkpoint_format: merged`, or a stock llm.pt) is loaded as it is, strictly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import checkpoints
from ..errors import CheckpointError, UsageError
from ..lora import adapter as adapter_io
from ..lora.export.runs import DEEPSPEED_STATES, select

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Loaded:
    """One checkpoint chosen for a model, read and checked against its model name."""

    model: str
    path: Path
    #: the parsed adapter, or None for a full state dict
    adapter: adapter_io.AdapterCheckpoint | None
    state: dict[str, Any]

    def describe(self) -> str:
        if self.adapter is None:
            return f"{self.model}: full checkpoint {self.path}"
        a = self.adapter
        return (f"{self.model}: LoRA r={a.settings.r} adapter {self.path} (epoch {a.epoch}, step {a.step}), "
                "applied in memory")


def choose(path: Path, model: str, progress: Progress) -> Path:
    """The checkpoint file RUN_OR_CKPT names for `model`."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--{model} {path} does not exist",
                         hint="pass the training --model_dir, or one epoch_N_whole.pt in it")
    if path.is_dir():
        if (path / DEEPSPEED_STATES).is_file():
            return path / DEEPSPEED_STATES
        return select(path, None, 1, False, progress)[0].path
    return path


def load(path: Path, model: str, progress: Progress = lambda _: None) -> Loaded:
    """Read the checkpoint RUN_OR_CKPT names; errors before any model is built."""
    chosen = choose(path, model, progress)
    checkpoints.verify(chosen)
    state = checkpoints.load(chosen)
    if isinstance(state.get("module"), dict) and "ds_version" in state:
        raise UsageError(f"{chosen} is a DeepSpeed checkpoint: it holds the whole LoRA-injected model but not the "
                         "LoRA settings", hint=f"merge it first: cosyext export --model {model} --checkpoint "
                         f"{chosen.parent} --config YOUR.yaml ... --serve PRETRAINED -o serve/voice")
    if not checkpoints.is_adapter(state):
        return Loaded(model, chosen, None, checkpoints.tensors(state))
    ad = adapter_io.read(state, str(chosen))
    adapter_io.check_model_name(ad, model, str(chosen))
    bad = checkpoints.nonfinite({**ad.lora, **ad.modules_to_save})
    if bad is not None:
        raise CheckpointError(f"adapter {chosen}: tensor {bad[0]} holds NaN or Inf values",
                              hint="use an earlier epoch's checkpoint (a diverged run needs a lower learning rate)")
    return Loaded(model, chosen, ad, state)


def check_base(loaded: Loaded, base: Path) -> None:
    """An adapter records the sha256 of the checkpoint it was trained on: it must be the pretrained dir's."""
    ad = loaded.adapter
    if ad is None or not ad.base_sha256:
        return
    digest = checkpoints.file_digest(base)
    if digest != ad.base_sha256:
        raise CheckpointError(
            f"adapter {loaded.path} was trained on base sha256 {ad.base_sha256[:12]} (recorded path {ad.base_path}), "
            f"but {base} has sha256 {digest[:12]}",
            hint=f"pass the pretrained dir the run trained from (--pretrained), whose {loaded.model}.pt it recorded")


def apply(module, loaded: Loaded) -> None:
    """Put the checkpoint into `module` (upstream's llm or flow, base weights already loaded), in place."""
    if loaded.adapter is None:
        own = module.state_dict()
        missing = [k for k in own if k not in loaded.state]
        unexpected = [k for k in loaded.state if k not in own]
        if missing or unexpected:
            raise CheckpointError(f"{loaded.path} is neither a cosyext adapter nor a full {loaded.model} checkpoint "
                                  f"of this model ({len(missing)} missing, {len(unexpected)} unexpected keys)",
                                  hint=f"pass an adapter checkpoint or the training run dir as --{loaded.model}")
        module.load_state_dict(loaded.state, strict=True)
        return
    from ..lora.inject import inject, load_exact, lora_state, module_tensors
    from ..lora.targets import resolve_modules_to_save, resolve_targets

    ad = loaded.adapter
    adapter_io.check_same_model(ad, module, str(loaded.path))
    targets = resolve_targets(module, ad.settings)
    to_save = resolve_modules_to_save(module, ad.settings, targets)
    inject(module, ad.settings, targets, to_save)
    load_exact(module, ad.modules_to_save, f"adapter {loaded.path} (modules_to_save)",
               expected=set(module_tensors(module, to_save)))
    load_exact(module, ad.lora, f"adapter {loaded.path}", expected=set(lora_state(module)))
    module.eval()  # the modules peft added start in training mode (LoRA dropout on)
    for p in module.parameters():
        p.requires_grad_(False)
