"""Find utterances in the two layouts users have: a folder of `x.wav` + `x.txt` (or `x.lab`) pairs,
or a Kaldi data directory (`wav.scp`, `text`, `utt2spk` or `spk2utt`).

Nothing here decodes audio: problems found by looking at names and transcripts (no transcript,
empty transcript, duplicate ids) are returned as `Problem`s next to the good utterances, so the
caller reports every one of them and carries on.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ..errors import UsageError

TRANSCRIPT_SUFFIXES = (".txt", ".lab")
KALDI_MARKER = "wav.scp"
_UNSAFE = re.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One recording with its transcript and speaker; `wav` is an absolute path."""

    utt: str
    wav: Path
    text: str
    spk: str


@dataclasses.dataclass(frozen=True)
class Problem:
    """A file that will not be in the output, and why (shown to the user and written to the report)."""

    utt: str
    path: str
    reason: str


def is_kaldi_dir(src: Path) -> bool:
    return (src / KALDI_MARKER).is_file()


def discover(src: Path, *, speaker: str | None = None) -> tuple[list[Utterance], list[Problem]]:
    """Utterances (sorted by id) and problems found in `src`, whichever layout it has."""
    src = Path(src).expanduser().resolve()
    if not src.is_dir():
        raise UsageError(f"source {src} is not a directory",
                         hint="cosyext prepare DIR_WITH_WAV_AND_TXT DEST  (or a Kaldi dir with wav.scp, text, utt2spk)")
    if is_kaldi_dir(src):
        utts, problems = _kaldi(src, speaker)
    else:
        utts, problems = _folder(src, speaker)
    return sorted(utts, key=lambda u: u.utt), problems


def _safe_id(name: str) -> str:
    """Kaldi-style ids have no whitespace (upstream splits its list files on it)."""
    return _UNSAFE.sub("_", name.strip())


def normalise_text(raw: str) -> str:
    """One line, single spaces: upstream's `text` file format joins words with one space."""
    return " ".join(raw.split())


def _read_transcript(path: Path) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason)."""
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        return None, f"transcript {path.name} is not UTF-8 text"
    except OSError as exc:
        return None, f"transcript {path.name} cannot be read: {exc.strerror or exc}"
    text = normalise_text(raw)
    if not text:
        return None, f"empty transcript ({path.name})"
    return text, None


def _folder(src: Path, speaker: str | None) -> tuple[list[Utterance], list[Problem]]:
    wavs = sorted(p for p in src.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    transcripts = sorted(p for p in src.rglob("*") if p.suffix.lower() in TRANSCRIPT_SUFFIXES and p.is_file())
    if not wavs:
        raise UsageError(f"no .wav files under {src}",
                         hint="put NAME.wav next to NAME.txt (or NAME.lab), or pass a Kaldi dir with wav.scp")
    utts: list[Utterance] = []
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    stems = {p.with_suffix("") for p in wavs}
    for wav in wavs:
        rel = wav.relative_to(src).with_suffix("")
        utt = _safe_id("_".join(rel.parts))
        spk = speaker or _safe_id("_".join(rel.parts[:-1]) or src.name)
        if utt in seen:
            problems.append(Problem(utt, str(wav), f"duplicate utterance id (also {seen[utt]})"))
            continue
        seen[utt] = wav
        candidates = [wav.with_suffix(s) for s in TRANSCRIPT_SUFFIXES] + \
                     [wav.with_suffix(s.upper()) for s in TRANSCRIPT_SUFFIXES]
        tpath = next((c for c in candidates if c.is_file()), None)
        if tpath is None:
            problems.append(Problem(utt, str(wav), "missing transcript (no .txt or .lab with the same name)"))
            continue
        text, why = _read_transcript(tpath)
        if why:
            problems.append(Problem(utt, str(wav), why))
            continue
        utts.append(Utterance(utt, wav, text, spk))
    for t in transcripts:
        if t.with_suffix("") not in stems:
            rel = t.relative_to(src).with_suffix("")
            problems.append(Problem(_safe_id("_".join(rel.parts)), str(t), "transcript without a .wav file"))
    return utts, problems


def _read_table(path: Path) -> list[tuple[str, str]]:
    """(key, rest-of-line) pairs of a Kaldi list file; blank lines skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        parts = line.strip().split(maxsplit=1)
        if parts:
            rows.append((parts[0], parts[1] if len(parts) > 1 else ""))
    return rows


def _kaldi(src: Path, speaker: str | None) -> tuple[list[Utterance], list[Problem]]:
    if not (src / "text").is_file():
        raise UsageError(f"Kaldi dir {src} has wav.scp but no 'text' file", hint=f"add {src / 'text'} (UTT transcript)")
    utt2spk: dict[str, str] = {}
    if (src / "utt2spk").is_file():
        utt2spk = {u: s.strip() for u, s in _read_table(src / "utt2spk")}
    elif (src / "spk2utt").is_file():
        utt2spk = {u: spk for spk, rest in _read_table(src / "spk2utt") for u in rest.split()}
    elif not speaker:
        raise UsageError(f"Kaldi dir {src} has neither utt2spk nor spk2utt",
                         hint=f"add {src / 'utt2spk'}, or pass --speaker NAME for a single-speaker set")
    texts = dict(_read_table(src / "text"))
    utts: list[Utterance] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for utt, location in _read_table(src / KALDI_MARKER):
        location = location.strip()
        if utt in seen:
            problems.append(Problem(utt, location, "duplicate utterance id in wav.scp"))
            continue
        seen.add(utt)
        if not location:
            problems.append(Problem(utt, "", "no path in wav.scp"))
            continue
        if location.endswith("|"):
            problems.append(Problem(utt, location, "pipe commands in wav.scp are not supported: give a file path"))
            continue
        wav = _resolve(location, src)
        text = normalise_text(texts.get(utt, ""))
        spk = speaker or utt2spk.get(utt)
        if utt not in texts:
            problems.append(Problem(utt, str(wav), "missing transcript (utterance not in 'text')"))
        elif not text:
            problems.append(Problem(utt, str(wav), "empty transcript"))
        elif not spk:
            problems.append(Problem(utt, str(wav), "no speaker (utterance not in utt2spk/spk2utt)"))
        else:
            utts.append(Utterance(_safe_id(utt), wav, text, _safe_id(spk)))
    for utt in sorted(set(texts) - seen):
        problems.append(Problem(utt, "", "transcript without audio (utterance not in wav.scp)"))
    return utts, problems


def _resolve(location: str, src: Path) -> Path:
    """Kaldi paths are relative to the recipe root (the working directory); fall back to the data dir."""
    p = Path(location).expanduser()
    if p.is_absolute():
        return p
    here = Path.cwd() / p
    return here.resolve() if here.exists() else (src / p).resolve()
