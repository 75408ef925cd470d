"""Who speaks: a zero-shot prompt (a recording and its transcript) or a speaker registered in the
model dir's spk2info.pt (prompt-free). Checked here, before upstream is imported, so a bad prompt
or a misspelt name is one clear message instead of an assertion deep in upstream's front end.

What upstream's front end accepts (measured at both supported commits):

- the prompt is read with torchaudio at 16 kHz (tokens, speaker embedding) and 24 kHz (mel):
  below 16 kHz it asserts, over 30 s the speech tokenizer asserts;
- `inference_sft` reads `spk2info[name]['embedding']` ([1, 192], what `cosyext export --serve`
  registers); entries made by upstream's `add_zero_shot_spk` hold a whole prompt instead (no
  'embedding'), and go through `inference_zero_shot(..., zero_shot_spk_id=name)`;
- CosyVoice3's LLM asserts that `<|endofprompt|>` is in its input: the family's instruct
  ("You are a helpful assistant.<|endofprompt|>") goes before the prompt text (zero-shot) or the
  text (registered speaker) unless the text already carries one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import family as families
from ..errors import UsageError

SPK2INFO = "spk2info.pt"
END_OF_PROMPT = "<|endofprompt|>"
MIN_SAMPLE_RATE = 16000
MAX_PROMPT_SECONDS = 30.0
#: a prompt shorter than this yields (almost) no speech tokens: 4 tokens at 25/s
MIN_PROMPT_SECONDS = 0.16
#: spk2info entries upstream's add_zero_shot_spk writes (a stored prompt)
_ZERO_SHOT_KEYS = ("prompt_text", "llm_prompt_speech_token", "flow_prompt_speech_token", "prompt_speech_feat")


@dataclass(frozen=True)
class ZeroShot:
    """Clone the voice of `wav`, whose transcript is `text`."""

    wav: Path
    text: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "wav", Path(self.wav))


@dataclass(frozen=True)
class Speaker:
    """A speaker registered in the model dir's spk2info.pt (e.g. by `cosyext export --serve --speaker-name`)."""

    name: str


Voice = ZeroShot | Speaker


@dataclass(frozen=True)
class PromptInfo:
    seconds: float
    sample_rate: int


def check_prompt(voice: ZeroShot) -> PromptInfo:
    """UsageError unless the prompt is audio upstream's front end takes, with a transcript."""
    import soundfile

    path = voice.wav
    hint = "pass a speech recording (wav/flac, >= 16 kHz, under 30 s) with --prompt-wav and its transcript"
    if not path.is_file():
        raise UsageError(f"prompt wav {path} {'is a directory' if path.is_dir() else 'does not exist'}", hint=hint)
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise UsageError(f"prompt wav {path} is not audio libsndfile can read ({str(exc).strip() or exc!r})",
                         hint=hint) from exc
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if info.samplerate < MIN_SAMPLE_RATE:
        raise UsageError(f"prompt wav {path} is {info.samplerate} Hz; upstream needs at least {MIN_SAMPLE_RATE} Hz",
                         hint="record or export the prompt at 16 kHz or more (24 kHz is the model's rate)")
    if seconds > MAX_PROMPT_SECONDS:
        raise UsageError(f"prompt wav {path} lasts {seconds:.1f} s; upstream's speech tokenizer takes at most "
                         f"{MAX_PROMPT_SECONDS:.0f} s", hint="cut the prompt to a sentence or two (3-10 s is typical)")
    if seconds < MIN_PROMPT_SECONDS:
        raise UsageError(f"prompt wav {path} lasts {seconds:.3f} s: too short to hold any speech", hint=hint)
    if not voice.text.strip():
        raise UsageError("the prompt text is empty: zero-shot cloning needs the transcript of the prompt wav",
                         hint="pass --prompt-text 'what the prompt recording says'")
    return PromptInfo(seconds, int(info.samplerate))


def read_speakers(model_dir: Path) -> dict:
    """spk2info.pt of a model dir ({} when there is none), loaded with weights_only=True."""
    from .. import checkpoints

    path = Path(model_dir) / SPK2INFO
    if not path.is_file():
        return {}
    info = checkpoints.load(path)
    if not all(isinstance(v, dict) for v in info.values()):
        raise UsageError(f"{path} is not a speaker table ({{name: {{'embedding': tensor}}}})",
                         hint="move it aside, or register speakers with cosyext export --serve --speaker-name")
    return info


def speaker_mode(model_dir: Path, voice: Speaker) -> str:
    """'sft' (an embedding entry) or 'zero_shot' (a stored prompt); UsageError for a name that is not there."""
    speakers = read_speakers(model_dir)
    entry = speakers.get(voice.name)
    if entry is None:
        known = ", ".join(sorted(speakers)[:20]) or "none"
        raise UsageError(f"speaker {voice.name!r} is not registered in {Path(model_dir) / SPK2INFO} (registered: "
                         f"{known})", hint="pass one of those with --speaker, or register one with cosyext export "
                                           "--serve ... --speaker-data LIST --speaker-name NAME")
    if "embedding" in entry:
        return "sft"
    if all(k in entry for k in _ZERO_SHOT_KEYS):
        return "zero_shot"
    raise UsageError(f"speaker {voice.name!r} in {Path(model_dir) / SPK2INFO} has neither an 'embedding' nor a stored "
                     f"prompt (keys: {', '.join(sorted(entry))})",
                     hint="re-register it with cosyext export --serve ... --speaker-name NAME")


def default_speaker(model_dir: Path) -> str | None:
    """The speaker a model dir speaks with when none is named: speaker_config.json's "default_speaker"
    when it names a registered one, else the only entry of spk2info.pt; None when neither says."""
    import json

    speakers = read_speakers(model_dir)
    try:
        doc = json.loads((Path(model_dir) / "speaker_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        doc = None
    named = doc.get("default_speaker") if isinstance(doc, dict) else None
    if isinstance(named, str) and named in speakers:
        return named
    return next(iter(speakers)) if len(speakers) == 1 else None


def with_instruct(text: str, fam: families.Family) -> str:
    """The text CosyVoice3's LLM needs (the family's instruct in front), unchanged for CosyVoice2."""
    if not fam.default_instruct or END_OF_PROMPT in text:
        return text
    return fam.default_instruct + text


def describe(voice: Voice) -> str:
    if isinstance(voice, Speaker):
        return f"registered speaker {voice.name!r}"
    return f"zero-shot prompt {os.fspath(voice.wav)}"
