"""The two systems `cosyext eval` compares, each spoken by `cosyext synth`'s :class:`Synthesizer`
(upstream's own `CosyVoice2` / `CosyVoice3` from a verified tree):

- **base**: the pretrained dir (``--base``), zero-shot from the prompt utterance;
- **fine-tuned**: training run dir(s) or adapter checkpoints applied in memory to ``--base`` (which
  model a run trained is read from its checkpoint: an adapter records ``llm``/``flow``, a full
  checkpoint is told by its keys), or an exported serve dir; zero-shot from the same prompt, or
  with ``--voice registered`` the serve dir's registered speaker (prompt-free).

Everything that can be checked cheaply is checked by :func:`make_synthesizers`, before eval sets
its metrics up: the model dirs, which checkpoint of each run and which model it is, that adapters
were trained on ``--base``'s weights, the speaker, the upstream tree. The models themselves load
when eval starts synthesising, one system at a time (a 0.5B model pair is a few GB on CPU): base
loads, says every text, is released; then the fine-tuned system does the same.

Each system is its own instance of upstream's class: its own modules, front end and sampler. The
adapters go into the fine-tuned instance's modules only; tests/test_demo.py checks that a base
instance speaks bit for bit the same before and after a fine-tuned one is built beside it, and
that eval's wavs are what each system says alone with the seed eval.json records.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import CosyextError, EnvironmentProblem, UsageError
from .audio import Clip
from .data import Utterance

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
HINT = "cosyext eval RUN|MODEL_DIR --base PRETRAINED --data CV_LIST (RUN: the --model_dir of an llm or flow run)"


@dataclass(frozen=True)
class Prompt:
    """The zero-shot voice: a recording (a file upstream's front end reads) and its transcript."""

    wav: Path
    text: str
    utt: str = ""


@dataclass
class System:
    """One system's model, loaded on first use (:meth:`load`) and released with :meth:`close`."""

    name: str
    upstream: Path
    source: Any  # cosyvoice_ext.synth.ModelSource
    #: a registered speaker (prompt-free); None: the zero-shot prompt eval passes
    speaker: str | None = None
    progress: Progress = lambda _: None
    info: dict = field(default_factory=dict)
    _syn: Any = None

    def load(self) -> None:
        if self._syn is not None:
            return
        from ..synth import SynthesisError, Synthesizer

        t0 = time.perf_counter()
        self.progress(f"loading {self.name}: {self.source.describe()}")
        try:
            self._syn = Synthesizer(self.upstream, self.source, progress=self.progress)
        except CosyextError:
            raise
        except Exception as exc:  # upstream's constructor on a dir it cannot build (e.g. a yaml of another commit)
            log.debug("loading %s failed", self.name, exc_info=exc)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise SynthesisError(f"upstream's inference class could not load {self.source.describe()}: "
                                 f"{type(exc).__name__}: {first}",
                                 hint=f"check that {self.source.model_dir} was made for the upstream commit at "
                                 f"{self.upstream} (its yaml names classes that tree has); cosyext -v eval ... "
                                 "shows the traceback") from exc
        self.progress(f"{self.name} loaded in {time.perf_counter() - t0:.1f} s ({self._syn.family.inference_class}, "
                      f"{self._syn.sample_rate} Hz)")

    def close(self) -> None:
        """Drop the model (the next system loads into the memory it held)."""
        self._syn = None
        gc.collect()

    def __call__(self, u: Utterance, seed: int, prompt: Prompt | None) -> Clip:
        from ..synth import Speaker, ZeroShot

        self.load()
        if self.speaker is not None:
            voice = Speaker(self.speaker)
        elif prompt is not None:
            voice = ZeroShot(prompt.wav, prompt.text)
        else:
            raise UsageError(f"{self.name}: zero-shot synthesis needs a prompt utterance", hint=HINT)
        return Clip(self._syn.tts(u.text, voice, seed=seed), self._syn.sample_rate, name=u.utt)


def make_synthesizers(args: argparse.Namespace, progress: Progress) -> tuple[dict[str, System], dict[str, dict]]:
    """The base and fine-tuned :class:`System` for `cosyext eval RUN|MODEL_DIR ...`, and their description
    for eval.json; every mistake found here is a UsageError before any model loads."""
    try:
        from ..synth import ModelSource
        from ..synth import source as source_mod
    except ImportError as exc:
        raise EnvironmentProblem("synthesis needs cosyvoice_ext.synth, which this install lacks",
                                 hint="score existing wavs with --synth-dir DIR") from exc

    base = Path(args.base)
    fam = source_mod.check_model_dir(base, "--base")
    targets = [Path(t) for t in args.target]
    for t in targets:
        if not t.exists():
            raise UsageError(f"{t} does not exist", hint=HINT)
    serve = [t for t in targets if _is_model_dir(t)]
    if serve:
        if len(targets) > 1:
            raise UsageError(f"{serve[0]} is a model dir (a serve dir holds the whole fine-tuned model): give it alone, "
                             "not with other runs", hint=HINT)
        tuned_source = ModelSource.serve_dir(serve[0])
        tuned_fam = source_mod.check_model_dir(serve[0], "RUN|MODEL_DIR")
        if tuned_fam is not fam:
            raise UsageError(f"{serve[0]} is a {tuned_fam.inference_class} model but --base {base} is "
                             f"{fam.inference_class}", hint="pass the pretrained dir the model was fine-tuned from")
    else:
        from ..synth import adapters as adapter_mod

        chosen = _classify(targets, progress)
        for loaded in chosen.values():  # trained on --base's weights (a sha256 the adapter records)
            adapter_mod.check_base(loaded, base / f"{loaded.model}.pt")
        tuned_source = ModelSource.pretrained(base, **{m: c.path for m, c in chosen.items()})
    speaker = _registered_speaker(args, tuned_source)
    upstream = _upstream(args, fam)
    systems = {
        "base": System("base", upstream, ModelSource.pretrained(base), None, progress),
        "tuned": System("fine-tuned", upstream, tuned_source, speaker, progress),
    }
    describe = {key: _describe(s) for key, s in systems.items()}
    for key, s in systems.items():
        s.info = describe[key]
    return systems, describe


def _is_model_dir(path: Path) -> bool:
    from .. import family as families

    return path.is_dir() and families.of_pretrained(path) is not None


def _classify(targets: list[Path], progress: Progress) -> dict[str, Any]:
    """{'llm'|'flow': the checkpoint chosen for it}, each target's model read from its checkpoint."""
    from ..synth import adapters as adapter_mod

    chosen: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    for target in targets:
        path = adapter_mod.choose(target, "llm", progress)
        model = _model_of(path)
        if model in chosen:
            raise UsageError(f"{origin[model]} and {target} are both {model} runs: which one is the fine-tuned {model}?",
                             hint="pass one llm run and/or one flow run")
        chosen[model] = adapter_mod.load(path, model, progress)
        origin[model] = target
        progress(f"fine-tuned {chosen[model].describe()}" + (f" (from run {target})" if target.is_dir() else ""))
    return chosen


def _model_of(path: Path) -> str:
    """'llm' or 'flow': what an adapter records, else what a full state dict's keys say."""
    from .. import checkpoints

    state = checkpoints.load(path, mmap=True)
    if isinstance(state.get("module"), dict) and "ds_version" in state:
        state = state["module"]
    if checkpoints.is_adapter(state):
        meta = state[checkpoints.META_KEY]
        model = meta.get("model") or (meta.get("lora") or {}).get("model")
        if model in ("llm", "flow"):
            return model
    keys = [k for k in state if isinstance(k, str)]
    if any(k.startswith("llm_decoder.") or k.startswith("speech_embedding.") for k in keys):
        return "llm"
    if any(k.startswith("decoder.estimator.") for k in keys):
        return "flow"
    raise UsageError(f"{path} is neither an llm nor a flow checkpoint (no adapter metadata, no llm_decoder or "
                     "decoder.estimator weights)", hint=HINT)


def _registered_speaker(args: argparse.Namespace, source: Any) -> str | None:
    """--voice registered: the serve dir's speaker (--speaker-name, its default, or its only one)."""
    from ..synth import Speaker, voices

    name = getattr(args, "speaker_name", None)
    if getattr(args, "voice", "prompt") != "registered":
        if name:
            raise UsageError("--speaker-name chooses the registered speaker: it goes with --voice registered",
                             hint="add --voice registered, or drop --speaker-name")
        return None
    if source.kind != "serve":
        raise UsageError("--voice registered needs an exported serve dir (its spk2info.pt holds the speaker); a "
                         "training run has none", hint="cosyext export --serve ... -o serve/voice, then cosyext eval "
                         "serve/voice --voice registered ...")
    speakers = voices.read_speakers(source.model_dir)
    if name is None:
        name = _default_speaker(source.model_dir, speakers)
    voices.speaker_mode(source.model_dir, Speaker(name))  # UsageError naming the registered ones
    return name


def _default_speaker(model_dir: Path, speakers: dict) -> str:
    config = Path(model_dir) / "speaker_config.json"
    if config.is_file():
        try:
            default = json.loads(config.read_text(encoding="utf-8")).get("default_speaker")
        except (OSError, ValueError, AttributeError):
            default = None
        if isinstance(default, str) and default in speakers:
            return default
    if len(speakers) == 1:
        return next(iter(speakers))
    known = ", ".join(sorted(speakers)[:20]) or "none"
    raise UsageError(f"{model_dir} registers {len(speakers)} speakers ({known}) and names no default",
                     hint="choose one with --speaker-name NAME")


def _upstream(args: argparse.Namespace, fam: Any) -> Path:
    """The tree synthesis imports, verified now (a minute of metric setup should not end in 'wrong tree')."""
    from ..commands._common import upstream_root
    from ..synth import loader

    root = upstream_root(args)
    tree = loader.verify(root)
    if not tree.supports(fam):
        raise UsageError(f"upstream {tree.commit.label} at {root} has no {fam.inference_class} (it has "
                         f"{', '.join(tree.commit.families)})",
                         hint="vendor a commit that has it: cosyext vendor NEWDIR (the newest supported commit)")
    return root


def _describe(system: System) -> dict:
    s = system.source
    out: dict = {"model_dir": str(Path(s.model_dir).resolve()), "kind": s.kind,
                 "adapters": {m: str(Path(p).resolve()) for m, p in sorted(s.adapters.items())},
                 "voice": {"registered": system.speaker} if system.speaker else "zero-shot prompt",
                 "upstream": str(system.upstream)}
    return out
