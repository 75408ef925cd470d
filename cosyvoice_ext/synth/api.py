"""`Synthesizer`: text to audio with upstream's own `CosyVoice2` / `CosyVoice3`, from a verified tree.

    from cosyvoice_ext.synth import Synthesizer, ModelSource, ZeroShot, Speaker
    syn = Synthesizer(upstream=Path("~/CosyVoice"), source=ModelSource.serve_dir("serve/my_voice"))
    audio = syn.tts("Hello there.", Speaker("my_voice"), seed=0)          # float32 mono at syn.sample_rate
    audio = syn.tts("Hello there.", ZeroShot(Path("prompt.wav"), "what the prompt says"), seed=0, stream=True)

Everything that can be checked without upstream is checked before it is imported (model dir,
adapters, voices), so mistakes cost no import and never reach modelscope's downloader. Text
normalisation is upstream's front end switch: `text_frontend=False` (the default) gives the text
to the tokenizer as it is and needs nothing from the network; True runs upstream's wetext
normalisation (wetext 0.1.8 ships its files; upstream's pinned 0.0.4 would download them).
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Iterator
from typing import Callable

import numpy as np

from .. import family as families
from ..errors import UsageError
from . import adapters as adapter_mod
from . import loader, source as source_mod, voices
from .engine import Engine
from .source import ModelSource
from .voices import Speaker, Voice, ZeroShot

Progress = Callable[[str], None]


class Synthesizer:
    """Upstream's inference class for one model dir (and adapters), with reproducible, checked requests."""

    def __init__(self, upstream: str | os.PathLike, source: ModelSource, *, text_frontend: bool = False,
                 lock_path: str | os.PathLike | None = None, verbose: bool = False,
                 progress: Progress = lambda _: None) -> None:
        from ..upstream import lockfile

        self.source = source
        self.text_frontend = bool(text_frontend)
        self.family: families.Family = source_mod.check(source)
        self.model_dir = Path(source.model_dir).resolve()
        loaded = [adapter_mod.load(path, name, progress) for name, path in sorted(source.adapters.items())]
        tree = loader.verify(upstream, lockfile.load(Path(lock_path)) if lock_path else None)
        if not tree.supports(self.family):
            raise UsageError(f"{self.model_dir} is a {self.family.inference_class} model, which upstream "
                             f"{tree.commit.label} does not have (it has {', '.join(tree.commit.families)})",
                             hint="vendor a commit that has it: cosyext vendor NEWDIR (the newest supported commit)")
        for item in loaded:
            adapter_mod.check_base(item, self.model_dir / f"{item.model}.pt")
        progress(f"upstream: {tree.origin}")
        imported = loader.import_tree(tree, verbose=verbose)
        self.tree = tree
        cls = imported.inference_class(self.family)
        with loader.quiet(verbose), loader.keep_root_logger():
            self._cv = cls(str(self.model_dir))  # load_jit/load_trt/load_vllm stay off: they write into the dir
        for item in loaded:
            adapter_mod.apply(getattr(self._cv.model, item.model), item)
            progress(item.describe())
        self._engine = Engine(self._cv)
        self.sample_rate: int = int(self._cv.sample_rate)

    @property
    def speakers(self) -> list[str]:
        """Names registered in the model dir's spk2info.pt."""
        return sorted(self._cv.frontend.spk2info)

    def check_voice(self, voice: Voice) -> None:
        """UsageError for a voice this model cannot use (bad prompt wav, unknown speaker)."""
        if isinstance(voice, ZeroShot):
            voices.check_prompt(voice)
        elif isinstance(voice, Speaker):
            voices.speaker_mode(self.model_dir, voice)
        else:
            raise TypeError(f"voice must be ZeroShot or Speaker, got {type(voice).__name__}")

    def tts(self, text: str, voice: Voice, *, seed: int, stream: bool = False) -> np.ndarray:
        """`text` spoken by `voice`: float32 mono samples at `sample_rate`. The same seed gives the same audio
        (offline and streaming); `stream=True` runs upstream's chunked path and returns all chunks joined."""
        return np.concatenate(list(self.chunks(text, voice, seed=seed, stream=stream))).astype(np.float32, copy=False)

    def chunks(self, text: str, voice: Voice, *, seed: int, stream: bool = False) -> Iterator[np.ndarray]:
        """As :meth:`tts`, chunk by chunk as upstream yields them (what a streaming server sends; the first
        chunk's latency is what a listener waits). Checks run before the first chunk is asked for."""
        if not isinstance(text, str) or not text.strip():
            raise UsageError("the text to synthesise is empty", hint="pass --text 'something to say'")
        self.check_voice(voice)
        fam, kw = self.family, {"text_frontend": self.text_frontend}
        if isinstance(voice, Speaker):
            if voices.speaker_mode(self.model_dir, voice) == "sft":
                return self._engine.chunks("inference_sft", voices.with_instruct(text, fam), voice.name, seed=seed,
                                           stream=stream, **kw)
            return self._engine.chunks("inference_zero_shot", text, "", "", seed=seed, stream=stream,
                                       zero_shot_spk_id=voice.name, **kw)
        prompt = self._prompt(voice.wav)
        return self._engine.chunks("inference_zero_shot", text, voices.with_instruct(voice.text, fam), prompt,
                                   seed=seed, stream=stream, **kw)

    def _prompt(self, wav: Path):
        """A path (2026 API) or upstream's own 16 kHz load of it (2025 API: prompt_speech_16k)."""
        if not self._engine.prompt_as_tensor:
            return str(wav)
        from cosyvoice.utils.file_utils import load_wav

        return load_wav(str(wav), 16000)
