"""Model instances of a `cosyext serve` process, and voices living in them.

One upstream inference instance (`CosyVoice2` / `CosyVoice3`, through :class:`synth.engine.Engine`:
own sampler RNG, per-request stream state, LLM-thread errors raised) per model dir. Every "lora"
voice on the same pretrained dir lives in that one instance: its LLM and flow adapters are named
peft adapters (`inject_adapter_in_model(..., adapter_name=ID)` on the same modules, the adapter's
tensors copied in bit for bit, as `synth.adapters.apply` does for one), and a request makes its
voice's adapter the only active one on every LoRA layer (`set_adapter`), so the forward is the
single-adapter forward `cosyext synth` runs. `modules_to_save` tensors (full copies of stock
modules) cannot be named adapters: they are copied in when their voice is activated and the base
tensors copied back for the others. The speaker embedding goes into the instance's
`frontend.spk2info` in memory, under a key of ours, for upstream's `inference_sft`; nothing is
written into any model dir.

Everything here runs on the one synthesis thread (:mod:`.worker`): no two requests touch an
instance at once, and adapters are added and removed between requests.
"""

from __future__ import annotations

import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import checkpoints
from .. import family as families
from ..errors import CheckpointError, UsageError
from ..synth import adapters as adapter_mod
from ..synth import loader, voices as synth_voices
from ..synth.engine import Engine
from ..synth.source import check_model_dir
from . import config as cfg

Progress = Callable[[str], None]
Emit = Callable[[np.ndarray], None]
_LORA_KEY = re.compile(r"(\.lora_[A-Za-z_]+)\.default(?=\.|$)")
_ids = iter(range(1, 1 << 62))
_id_lock = threading.Lock()


def _next_id(prefix: str) -> str:
    with _id_lock:
        return f"{prefix}{next(_ids)}"


@dataclass(eq=False)
class Voice:
    """A voice ready to speak: its instance, adapter names, speaker key."""

    spec: cfg.VoiceSpec
    instance: "Instance"
    #: peft adapter name per model ("llm", "flow") in the instance; absent: the base weights
    adapter_ids: dict[str, str] = field(default_factory=dict)
    #: modules_to_save tensors per model (stock keys)
    saved_modules: dict[str, dict] = field(default_factory=dict)
    #: key in the instance's frontend.spk2info
    spk_key: str = ""
    #: "sft" (an embedding) or "zero_shot" (a prompt upstream's add_zero_shot_spk stored)
    mode: str = "sft"
    described: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name


class Instance:
    """One upstream inference object for one model dir, with the named adapters of its voices."""

    def __init__(self, tree: loader.Tree, model_dir: Path, family: families.Family, *, verbose: bool = False) -> None:
        imported = loader.import_tree(tree, verbose=verbose)
        cls = imported.inference_class(family)
        self.model_dir, self.family = model_dir, family
        with loader.quiet(verbose), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.cv = cls(str(model_dir))  # load_jit/load_trt/load_vllm stay off: they write into the dir
        self.engine = Engine(self.cv)
        self.sample_rate = int(self.cv.sample_rate)
        self.registered = set(self.cv.frontend.spk2info)  # the dir's own speakers (spk2info.pt)
        self._digests: dict[str, str] = {}
        self._base_modules: dict[str, dict] = {"llm": {}, "flow": {}}
        self._active: object = ()
        self.voices: set[Voice] = set()

    def module(self, model: str):
        return getattr(self.cv.model, model)

    # --- adapters -------------------------------------------------------------------------------------

    def check_base(self, loaded: adapter_mod.Loaded) -> None:
        """The adapter's recorded base sha256 must be this dir's `<model>.pt` (digest computed once per file)."""
        ad = loaded.adapter
        if ad is None or not ad.base_sha256:
            return
        base = self.model_dir / f"{loaded.model}.pt"
        digest = self._digests.get(loaded.model) or checkpoints.file_digest(base)
        self._digests[loaded.model] = digest
        if digest != ad.base_sha256:
            raise CheckpointError(f"adapter {loaded.path} was trained on base sha256 {ad.base_sha256[:12]} (recorded "
                                  f"path {ad.base_path}), but {base} has sha256 {digest[:12]}",
                                  hint="set the voice's pretrained_dir to the dir the run trained from")

    def add_adapter(self, loaded: adapter_mod.Loaded) -> str:
        """Inject `loaded` as a new named adapter; its name."""
        from peft import inject_adapter_in_model

        from ..lora import adapter as adapter_io
        from ..lora.inject import load_exact, peft_config

        ad = loaded.adapter
        if ad is None:
            raise UsageError(f"{loaded.path} is a full {loaded.model} checkpoint, not a LoRA adapter: it cannot share "
                             "a base with other voices", hint="serve it as a \"type\": \"merged\" voice: cosyext "
                             "export --serve PRETRAINED ... -o serve/NAME writes the dir")
        module = self.module(loaded.model)
        adapter_io.check_same_model(ad, module, str(loaded.path))
        self.check_base(loaded)
        targets = sorted({k.split(".lora_", 1)[0] for k in ad.lora})
        if not targets:
            raise CheckpointError(f"adapter {loaded.path} holds no LoRA tensors")
        names = dict(module.named_modules())
        from peft.tuners.tuners_utils import BaseTunerLayer
        from torch import nn

        for t in targets:
            m = names.get(t)
            if not (isinstance(m, nn.Linear) or (isinstance(m, BaseTunerLayer)
                                                  and isinstance(m.get_base_layer(), nn.Linear))):
                raise CheckpointError(f"adapter {loaded.path}: {t} is not a Linear layer of this {loaded.model}",
                                      hint="use the pretrained dir the adapter was trained on")
        name = _next_id(f"{loaded.model}_")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Already found a peft_config attribute": many adapters is the point
            inject_adapter_in_model(peft_config(ad.settings, targets), module, adapter_name=name)
        try:
            renamed = {_LORA_KEY.sub(rf"\1.{name}", k): v for k, v in ad.lora.items()}
            expected = {k for k in module.state_dict() if ".lora_" in k and f".{name}." in k}
            load_exact(module, renamed, f"adapter {loaded.path}", expected=expected)
        except BaseException:
            self.remove_adapter(loaded.model, name)
            raise
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self._active = ()
        return name

    def remove_adapter(self, model: str, name: str) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        module = self.module(model)
        for layer in module.modules():
            if isinstance(layer, BaseTunerLayer) and name in getattr(layer, "lora_A", {}):
                layer.delete_adapter(name)
        getattr(module, "peft_config", {}).pop(name, None)
        self._active = ()

    def remember_base_modules(self, model: str, tensors: dict) -> None:
        own = self.module(model).state_dict()
        for key in tensors:
            if key not in own:
                raise CheckpointError(f"modules_to_save tensor {key} has no place in the {model} model")
            self._base_modules[model].setdefault(key, own[key].detach().clone())

    # --- speakers --------------------------------------------------------------------------------------

    def add_speaker(self, embedding) -> str:
        key = _next_id("cosyext-serve-spk-")
        self.cv.frontend.spk2info[key] = {"embedding": embedding}
        return key

    def remove_speaker(self, key: str) -> None:
        if key not in self.registered:
            self.cv.frontend.spk2info.pop(key, None)

    # --- requests --------------------------------------------------------------------------------------

    def activate(self, voice: Voice) -> None:
        """Only `voice`'s adapters (and modules_to_save) act; the base for models it does not adapt."""
        import torch
        from peft.tuners.tuners_utils import BaseTunerLayer

        state = (id(voice), tuple(sorted(voice.adapter_ids.items())))
        if self._active == state:
            return
        for model in ("llm", "flow"):
            module, wanted = self.module(model), voice.adapter_ids.get(model)
            for layer in module.modules():
                if isinstance(layer, BaseTunerLayer):
                    layer.set_adapter([wanted] if wanted and wanted in layer.lora_A else [])
            base = self._base_modules[model]
            if base:
                own, mine = module.state_dict(), voice.saved_modules.get(model, {})
                with torch.no_grad():
                    for key, value in base.items():
                        own[key].copy_(mine.get(key, value))
            for p in module.parameters():  # set_adapter marks the active adapter trainable
                p.requires_grad_(False)
        self._active = state

    def synthesize(self, voice: Voice, text: str, *, seed: int, stream: bool, speed: float,
                   emit: Emit | None) -> np.ndarray:
        """What `Synthesizer.tts(text, Speaker(...), seed=, stream=)` returns for this voice; `emit` gets each chunk."""
        self.activate(voice)
        extra: dict[str, Any] = {"text_frontend": False}
        if speed != 1.0:
            extra["speed"] = float(speed)
        if voice.mode == "sft":
            call = ("inference_sft", synth_voices.with_instruct(text, self.family), voice.spk_key)
        else:
            call = ("inference_zero_shot", text, "", "")
            extra["zero_shot_spk_id"] = voice.spk_key
        parts = []
        for chunk in self.engine.chunks(*call, seed=seed, stream=stream, **extra):
            if emit is not None:
                emit(chunk)
            parts.append(chunk)
        return np.concatenate(parts).astype(np.float32, copy=False)


def read_embedding(path: Path, name: str, size: int) -> Any:
    """A [1, size] float32 speaker embedding from a .npy file or a torch file (weights_only): a tensor, an
    spk2info entry {'embedding': ...}, or an spk2info table holding `name` (or one entry)."""
    import pickle

    import torch

    try:
        if path.suffix == ".npy":
            obj: Any = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        wanted = checkpoints.refused_global(exc)
        raise CheckpointError(f"refusing to load spk_embedding_path {path}: it carries a pickle payload beyond plain "
                              f"tensors{f' (the global {wanted})' if wanted else ''}; loading it would run code "
                              "from the file", hint="save the embedding as a plain tensor: torch.save(tensor, path)"
                              ) from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"spk_embedding_path {path} is not a readable embedding (.pt or .npy): {first}") from exc
    if isinstance(obj, dict) and "embedding" not in obj:
        obj = obj.get(name) if name in obj else (next(iter(obj.values())) if len(obj) == 1 else obj)
    if isinstance(obj, dict):
        obj = obj.get("embedding", obj)
    if isinstance(obj, (list, tuple)):
        obj = torch.tensor(obj)
    if not isinstance(obj, torch.Tensor):
        raise CheckpointError(f"spk_embedding_path {path} holds {type(obj).__name__}, not a {size}-value embedding "
                              "(a tensor, an spk2info entry {'embedding': tensor}, or an spk2info table)")
    if obj.numel() != size:
        raise CheckpointError(f"spk_embedding_path {path} holds {obj.numel()} values; the model's speaker "
                              f"embeddings have {size}")
    emb = obj.detach().to(torch.float32).reshape(1, size).clone()
    if not torch.isfinite(emb).all():
        raise CheckpointError(f"spk_embedding_path {path} holds NaN or Inf values")
    return emb


class Models:
    """The instances of this process by model dir, and how a voice spec becomes a :class:`Voice`."""

    def __init__(self, tree: loader.Tree, *, root: Path | None = None, verbose: bool = False,
                 progress: Progress = lambda _: None) -> None:
        self.tree, self.root, self.verbose, self.progress = tree, root, verbose, progress
        self.instances: dict[Path, Instance] = {}

    def instance(self, model_dir: Path, declared: str | None) -> Instance:
        fam = check_model_dir(model_dir, "model dir")
        if declared and declared != fam.name:
            raise UsageError(f"the entry says family {declared}, but {model_dir} is a {fam.name} model dir")
        if not self.tree.supports(fam):
            raise UsageError(f"{model_dir} is a {fam.inference_class} model, which upstream {self.tree.commit.label} "
                             f"does not have", hint="serve with an upstream tree that has it (cosyext vendor NEWDIR)")
        inst = self.instances.get(model_dir)
        if inst is None:
            if self.root is not None:
                cfg.confine_tree(model_dir, self.root, f"model dir {model_dir}")
            self.progress(f"loading {fam.inference_class} from {model_dir}")
            inst = Instance(self.tree, model_dir, fam, verbose=self.verbose)
            self.instances[model_dir] = inst
        return inst

    def load(self, spec: cfg.VoiceSpec) -> Voice:
        """The voice of `spec`, its adapters injected; CosyextError (nothing left behind) when it cannot be."""
        if self.root is not None:
            for p in spec.paths():
                if p.is_dir():
                    cfg.confine_tree(p, self.root, f"{p}")
                else:
                    cfg.confine(p, self.root, f"{p}")
        loaded = [adapter_mod.load(path, model, self.progress) for model, path in sorted(spec.adapters().items())]
        inst = self.instance(spec.model_dir, spec.family)
        voice = Voice(spec, inst)
        try:
            for item in loaded:
                voice.adapter_ids[item.model] = inst.add_adapter(item)
                if item.adapter is not None and item.adapter.modules_to_save:
                    inst.remember_base_modules(item.model, item.adapter.modules_to_save)
                    voice.saved_modules[item.model] = dict(item.adapter.modules_to_save)
                voice.described.append(item.describe())
            if spec.embedding is not None:
                affine = getattr(inst.cv.model.flow, "spk_embed_affine_layer", None)
                size = int(getattr(affine, "in_features", 192))
                voice.spk_key = inst.add_speaker(read_embedding(spec.embedding, spec.name, size))
            else:
                spk = spec.spk_id or spec.name
                voice.mode = synth_voices.speaker_mode(spec.model_dir, synth_voices.Speaker(spk))
                voice.spk_key = spk
        except BaseException:
            self.unload(voice)
            raise
        inst.voices.add(voice)
        return voice

    def unload(self, voice: Voice) -> None:
        inst = voice.instance
        for model, name in voice.adapter_ids.items():
            inst.remove_adapter(model, name)
        if voice.spk_key and voice.mode == "sft":
            inst.remove_speaker(voice.spk_key)
        inst.voices.discard(voice)

    def drop_unused(self, keep: set[Path]) -> list[Path]:
        """Instances no voice uses any more are released."""
        gone = [d for d, inst in self.instances.items() if not inst.voices and d not in keep]
        for d in gone:
            del self.instances[d]
        return gone


__all__ = ["Instance", "Models", "Voice", "read_embedding"]
