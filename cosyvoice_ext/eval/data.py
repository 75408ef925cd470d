"""The held-out utterances eval speaks: a CV data.list's parquet rows of the target speaker.

Each row gives the text to synthesise and the speaker's real recording of it (`audio_data`). One of
them becomes the zero-shot prompt (its audio and text are the voice both systems imitate) and is
not scored; the real recordings of the others are the references speaker similarity compares with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .audio import Clip
from .normalize import LANGUAGES, detect_language

HINT = "pass the CV data.list 'cosyext prepare' wrote (DEST/cv/data.list)"
#: a default prompt lasts this long when the data has such an utterance (upstream's prompts are a few seconds)
PROMPT_SECONDS = (3.0, 10.0)


@dataclass
class Utterance:
    utt: str
    spk: str
    text: str
    audio: bytes
    lang: str = "en"
    _clip: Clip | None = None

    @property
    def clip(self) -> Clip:
        if self._clip is None:
            try:
                self._clip = Clip.from_bytes(self.audio, name=self.utt)
            except Exception as exc:
                raise UsageError(f"utterance {self.utt}: audio_data does not decode ({exc})", hint=HINT) from exc
        return self._clip


def read_list(data_list: Path) -> list[Utterance]:
    """Every row (utt, spk, text, audio_data) of every shard the list names, in list order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        lines = Path(data_list).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --data {data_list}: {getattr(exc, 'strerror', None) or exc}", hint=HINT) from exc
    shards = [Path(s.strip()) for s in lines if s.strip()]
    if not shards:
        raise UsageError(f"--data {data_list} lists no parquet files", hint=HINT)
    out: list[Utterance] = []
    for shard in shards:
        where = f"{shard} (listed in {data_list})"
        try:
            schema = pq.read_schema(shard)
            missing = [c for c in ("utt", "text", "audio_data") if c not in schema.names]
            if missing:
                raise UsageError(f"{where} has no {', '.join(missing)} column", hint=HINT)
            cols = ["utt", "text", "audio_data"] + (["spk"] if "spk" in schema.names else [])
            table = pq.read_table(shard, columns=cols)
        except UsageError:
            raise
        except FileNotFoundError as exc:
            raise UsageError(f"{where} does not exist", hint=HINT) from exc
        except (OSError, pa.ArrowException) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"{where} is not a parquet shard: {first}", hint=HINT) from exc
        rows = table.to_pydict()
        spks = rows.get("spk") or [""] * table.num_rows
        for utt, text, audio, spk in zip(rows["utt"], rows["text"], rows["audio_data"], spks):
            if not isinstance(text, str) or not isinstance(audio, bytes) or not audio:
                raise UsageError(f"{where}: row {utt!r} lacks its text or audio_data", hint=HINT)
            out.append(Utterance(str(utt), str(spk or ""), text, audio, detect_language(text)))
    return out


@dataclass
class EvalSet:
    speaker: str
    prompt: Utterance | None
    items: list[Utterance]


def choose(utts: list[Utterance], *, speaker: str | None = None, prompt_utt: str | None = None,
           max_utts: int | None = None, lang: str | None = None, need_prompt: bool = True) -> EvalSet:
    """The target speaker's utterances, the prompt among them, and the ones to score (list order)."""
    by_spk: dict[str, list[Utterance]] = {}
    for u in utts:
        by_spk.setdefault(u.spk, []).append(u)
    if speaker is None:
        if len(by_spk) > 1:
            raise UsageError(f"the data holds {len(by_spk)} speakers ({', '.join(sorted(by_spk))[:200]})",
                             hint="choose the fine-tuned voice with --speaker NAME")
        speaker = next(iter(by_spk))
    if speaker not in by_spk:
        raise UsageError(f"speaker {speaker!r} is not in the data", hint=f"one of: {', '.join(sorted(by_spk))[:200]}")
    mine = by_spk[speaker]
    if lang is not None:
        if lang not in LANGUAGES:
            raise UsageError(f"--lang {lang}: one of {', '.join(LANGUAGES)}", hint="--lang en or --lang zh")
        for u in mine:
            u.lang = lang
    prompt = None
    if prompt_utt is not None:
        found = [u for u in mine if u.utt == prompt_utt]
        if not found:
            raise UsageError(f"--prompt-utt {prompt_utt} is not an utterance of speaker {speaker!r}",
                             hint=f"e.g. {', '.join(u.utt for u in mine[:3])}")
        prompt = found[0]
    elif need_prompt:
        prompt = default_prompt(mine)
    items = [u for u in mine if u is not prompt]
    if max_utts is not None:
        items = items[:max_utts]
    if not items:
        raise UsageError(f"speaker {speaker!r} has no utterance left to evaluate besides the prompt", hint=HINT)
    return EvalSet(speaker, prompt, items)


def default_prompt(utts: list[Utterance]) -> Utterance:
    """The first utterance lasting 3-10 s, else the longest (a zero-shot prompt of a few seconds)."""
    lo, hi = PROMPT_SECONDS
    for u in utts:
        if lo <= u.clip.seconds <= hi:
            return u
    return max(utts, key=lambda u: u.clip.seconds)
