"""Intelligibility: transcribe with Whisper (openai-whisper), score WER (English) or CER (Chinese)
against the text the model was asked to say, normalised as Seed-TTS-eval does (`normalize`).

The ASR model is given by name (`large-v3`, the field's choice for English: openai-whisper
downloads it once into ~/.cache/whisper) or by the path of a checkpoint file in openai-whisper's
format (`{"dims": ..., "model_state_dict": ...}`, what `whisper.load_model` reads). Decoding is
greedy (temperature 0), without timestamps or conditioning on earlier windows, in the language of
the text, so two systems are transcribed the same way.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import EnvironmentProblem, UsageError
from .audio import SCORER_RATE
from .metric import Context, MetricUnavailable, Sample, Score
from .normalize import error_rate, normalize, simplify_chinese

ASR_HINT = "--asr large-v3 (openai-whisper downloads it once) or --asr PATH/model.pt (a local checkpoint)"


def load_whisper(spec: str) -> Any:
    """An openai-whisper model on CPU from a name or a checkpoint path; a bad spec is exit 2 before any synthesis."""
    try:
        import whisper
    except ImportError as exc:
        raise EnvironmentProblem(f"--asr needs openai-whisper, which does not import ({exc})",
                                 hint="pip install openai-whisper") from exc
    path = os.path.expanduser(spec)
    if spec not in whisper.available_models():
        if os.path.isdir(path):
            raise UsageError(f"--asr {spec} is a directory; give an openai-whisper checkpoint file or a model name "
                             f"({', '.join(whisper.available_models())})", hint=ASR_HINT)
        if not os.path.isfile(path):
            raise UsageError(f"--asr {spec} is neither a file nor a Whisper model name "
                             f"({', '.join(whisper.available_models())})", hint=ASR_HINT)
        spec = path
    try:
        model = whisper.load_model(spec, device="cpu")
    except (OSError, ConnectionError) as exc:  # the download of a named model (urllib errors are OSErrors)
        raise EnvironmentProblem(f"cannot get Whisper model {spec!r}: {exc}",
                                 hint="download it once with network access, or pass a local checkpoint: " + ASR_HINT) from exc
    except Exception as exc:  # torch.load / state-dict mismatch on a file that is not a whisper checkpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--asr {spec} is not an openai-whisper checkpoint: {first}", hint=ASR_HINT) from exc
    return model.float().eval()


def transcribe(model: Any, wav16k, lang: str) -> str:
    import torch

    with torch.inference_mode():
        out = model.transcribe(wav16k, language=lang, task="transcribe", temperature=0.0, without_timestamps=True,
                               condition_on_previous_text=False, fp16=False, verbose=None)
    return str(out.get("text", "")).strip()


class ErrorRate:
    """WER over English utterances (``lang='en'``) or CER over Chinese ones (``lang='zh'``)."""

    higher_is_better = False

    def __init__(self, name: str, lang: str) -> None:
        self.name, self.lang = name, lang
        self.label = name.upper()
        self.zh_simplified: bool | None = None

    def setup(self, context: Context) -> None:
        langs = [lang for _, lang in context.texts]
        if context.texts and self.lang not in langs:
            other = "Chinese" if self.lang == "en" else "English"
            raise MetricUnavailable(f"no {'English' if self.lang == 'en' else 'Chinese'} texts among the "
                                    f"{len(langs)} utterances ({other} texts are scored by "
                                    f"{'cer' if self.lang == 'en' else 'wer'})")
        if not context.asr:
            raise MetricUnavailable(f"no ASR model: pass {ASR_HINT}")
        key = f"whisper:{context.asr}"
        if key not in context.cache:
            context.cache[key] = load_whisper(context.asr)
        self.model = context.cache[key]

    def score(self, sample: Sample) -> Score:
        if sample.lang != self.lang:
            raise MetricUnavailable(f"{'Chinese' if sample.lang == 'zh' else 'English'} text "
                                    f"(scored by {'cer' if sample.lang == 'zh' else 'wer'})")
        hyp = transcribe(self.model, sample.clip.at(SCORER_RATE), self.lang)
        detail: dict[str, Any] = {"transcript": hyp}
        if self.lang == "zh":
            hyp, self.zh_simplified = simplify_chinese(hyp)
        try:
            value = error_rate(sample.text, hyp, self.lang)
        except ValueError as exc:
            raise MetricUnavailable(str(exc)) from exc
        detail["reference_normalised"] = normalize(sample.text, self.lang)
        detail["transcript_normalised"] = normalize(hyp, self.lang)
        return Score(value, detail)
