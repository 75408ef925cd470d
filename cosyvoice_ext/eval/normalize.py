"""Text normalisation and error rates exactly as Seed-TTS-eval scores them (its `run_wer.py`).

Why replicate rather than improve: published WER/CER numbers (upstream's README, papers) come from
that script, so ours are comparable only if we strip the same characters. It removes every
character of ``zhon.hanzi.punctuation + string.punctuation`` except the apostrophe, lower-cases
English, and scores Chinese per character (a space between every character, so jiwer's WER is a
CER). zhon's set is copied here (no dependency); like zhon it lacks 《 〈 〉, which therefore stay.
The per-utterance rates are averaged over utterances (its `average_wer.py`), not pooled.
"""

from __future__ import annotations

import re
import string

#: zhon.hanzi.punctuation (non-stops + stops), the Chinese half of Seed-TTS-eval's set
ZHON_PUNCTUATION = (
    "\uFF02\uFF03\uFF04\uFF05\uFF06\uFF07\uFF08\uFF09\uFF0A\uFF0B\uFF0C\uFF0D"
    "\uFF0F\uFF1A\uFF1B\uFF1C\uFF1D\uFF1E\uFF20\uFF3B\uFF3C\uFF3D\uFF3E\uFF3F"
    "\uFF40\uFF5B\uFF5C\uFF5D\uFF5E\uFF5F\uFF60"
    "\uFF62\uFF63\uFF64"
    "\u3000\u3001\u3003"
    "\u300B\u300C\u300D\u300E\u300F\u3010\u3011"
    "\u3014\u3015\u3016\u3017\u3018\u3019\u301A\u301B\u301C\u301D\u301E\u301F"
    "\u3030"
    "\u303E\u303F"
    "\u2013\u2014"
    "\u2018\u2019\u201B\u201C\u201D\u201E\u201F"
    "\u2026\u2027"
    "\uFE4F"
    "\uFF01\uFF1F\uFF61\u3002"
)
#: what Seed-TTS-eval strips: zhon's set plus ASCII punctuation, minus the apostrophe
STRIPPED = "".join(c for c in ZHON_PUNCTUATION + string.punctuation if c != "'")
_STRIP_TABLE = str.maketrans("", "", STRIPPED)
# zhon.hanzi.characters: CJK unified ideographs (+ extension A, compatibility) and the supplementary planes
_CJK = re.compile("[\u3007\u4E00-\u9FFF\u3400-\u4DBF\uF900-\uFAFF\U00020000-\U0002A6DF"
                  "\U0002A700-\U0002B73F\U0002B740-\U0002B81F\U0002F800-\U0002FA1F]")

LANGUAGES = ("en", "zh")


def detect_language(text: str) -> str:
    """'zh' when the text holds any Chinese character, else 'en' (what decides WER vs CER)."""
    return "zh" if _CJK.search(text) else "en"


def normalize(text: str, lang: str) -> str:
    """Seed-TTS-eval's `process_one` on one side: strip punctuation, then lower-case (en) or split
    into characters (zh). Whitespace runs are collapsed (jiwer would collapse them too)."""
    if lang not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {lang!r}")
    text = text.translate(_STRIP_TABLE)
    if lang == "zh":
        text = " ".join(text)
    else:
        text = text.lower()
    return " ".join(text.split())


def error_rate(reference: str, hypothesis: str, lang: str) -> float:
    """WER (en) or CER (zh) of one utterance after :func:`normalize`; 1.0 means as many errors as
    reference words. ValueError when the reference is empty after normalisation (nothing to score)."""
    import jiwer

    ref, hyp = normalize(reference, lang), normalize(hypothesis, lang)
    if not ref:
        raise ValueError("the reference text is empty after removing punctuation")
    if not hyp:  # jiwer refuses an empty hypothesis; every reference word is a deletion
        return 1.0
    return float(jiwer.wer(ref, hyp))


def simplify_chinese(text: str) -> tuple[str, bool]:
    """Traditional -> simplified as Seed-TTS-eval does for Paraformer output (zhconv), when zhconv is
    installed: (text, whether it was converted). Whisper often answers Chinese in traditional script."""
    try:
        import zhconv  # type: ignore[import-not-found]
    except ImportError:
        return text, False
    return zhconv.convert(text, "zh-cn"), True
