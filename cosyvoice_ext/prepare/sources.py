"""Find utterances in the two layouts users have: a folder of `x.wav` + `x.txt` (or `x.lab`) pairs,
or a Kaldi data directory (`wav.scp`, `text`, `utt2spk` or `spk2utt`).

Nothing here decodes audio: problems found by looking at names, links and transcripts (no
transcript, empty transcript, duplicate ids, a symlink that dangles or loops, a file name that is
not UTF-8) are returned as `Problem`s next to the good utterances, so the caller reports every one
of them and carries on. Symlinked folders are followed, each real folder once: a link to a folder
already scanned (a loop, or the same speaker twice) is reported instead of read again.

A Kaldi list file that is not UTF-8 stops the run (UsageError): every line of it is in question.
"""

from __future__ import annotations

import dataclasses
import os
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


@dataclasses.dataclass
class _Found:
    """What a walk of a folder of pairs found."""

    wavs: list[Path] = dataclasses.field(default_factory=list)
    transcripts: list[Path] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)
    #: links (and unreadable entries) that are not usable, by path: the reason
    broken: dict[Path, str] = dataclasses.field(default_factory=dict)


def _walk(src: Path) -> _Found:
    """Every .wav and transcript below `src`, in name order, following symlinked folders once each."""
    found = _Found()
    scanned: dict[tuple[int, int], Path] = {}

    def visit(folder: Path, ancestors: tuple[tuple[int, int], ...]) -> None:
        st = folder.stat()
        key = (st.st_dev, st.st_ino)
        scanned[key] = folder
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            found.problems.append(Problem("", str(folder), f"folder cannot be read: {exc.strerror or exc}"))
            return
        for name in names:
            path = folder / name
            why = _link_problem(path) or _name_problem(name)
            if why:
                found.broken[path] = why
                continue
            if path.is_dir():
                sub = path.stat()
                sub_key = (sub.st_dev, sub.st_ino)
                if sub_key in scanned:  # only a symlink reaches a folder twice
                    loop = " (a loop)" if sub_key in ancestors or sub_key == key else ""
                    found.broken[path] = (f"symlinked folder: {path.resolve()} is already scanned as "
                                          f"{scanned[sub_key]}{loop}; not followed")
                    continue
                visit(path, (*ancestors, key))
            elif path.suffix.lower() == ".wav" and path.is_file():
                found.wavs.append(path)
            elif path.suffix.lower() in TRANSCRIPT_SUFFIXES and path.is_file():
                found.transcripts.append(path)

    visit(src, ())
    return found


def _link_problem(path: Path) -> str | None:
    """Why a symlink cannot be used (dangling, looping), else None."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except FileNotFoundError:
        return f"dangling symlink: points to {_target(path)}, which does not exist"
    except OSError as exc:
        return f"symlink loop: {path} -> {_target(path)} ({exc.strerror or exc})"
    return None


def _target(path: Path) -> Path:
    target = Path(os.readlink(path))
    return target if target.is_absolute() else path.parent / target


def _name_problem(name: str) -> str | None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not UTF-8 (upstream's data lists are)"
    return None


def _folder(src: Path, speaker: str | None) -> tuple[list[Utterance], list[Problem]]:
    found = _walk(src)
    wavs, transcripts = found.wavs, found.transcripts
    if not wavs and not any(p.suffix.lower() == ".wav" for p in found.broken):
        raise UsageError(f"no .wav files under {src}",
                         hint="put NAME.wav next to NAME.txt (or NAME.lab), or pass a Kaldi dir with wav.scp")
    utts: list[Utterance] = []
    problems: list[Problem] = list(found.problems)
    for path, why in sorted(found.broken.items()):
        if path.suffix.lower() not in TRANSCRIPT_SUFFIXES or path.with_suffix(".wav") not in wavs:
            problems.append(Problem(_utt_id(src, path), str(path), why))  # a usable wav reports its transcript
    seen: dict[str, Path] = {}
    stems = {p.with_suffix("") for p in wavs}
    for wav in wavs:
        rel = wav.relative_to(src).with_suffix("")
        utt = _utt_id(src, wav)
        spk = speaker or _safe_id("_".join(rel.parts[:-1]) or src.name)
        if utt in seen:
            problems.append(Problem(utt, str(wav), f"duplicate utterance id (also {seen[utt]})"))
            continue
        seen[utt] = wav
        candidates = [wav.with_suffix(s) for s in TRANSCRIPT_SUFFIXES] + \
                     [wav.with_suffix(s.upper()) for s in TRANSCRIPT_SUFFIXES]
        broken = next((c for c in candidates if c in found.broken), None)
        tpath = next((c for c in candidates if c.is_file()), None)
        if tpath is None and broken is not None:
            why = found.broken[broken]
            problems.append(Problem(utt, str(wav), f"transcript {broken.name} is a {why}"
                                    if why.startswith(("dangling", "symlink")) else f"transcript {broken.name}: {why}"))
            continue
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
            problems.append(Problem(_utt_id(src, t), str(t), "transcript without a .wav file"))
    return utts, problems


def _utt_id(src: Path, path: Path) -> str:
    """The utterance id of a file: its path below `src` without the suffix, '/' as '_'."""
    return _safe_id("_".join(path.relative_to(src).with_suffix("").parts))


def _read_table(path: Path) -> list[tuple[str, str]]:
    """(key, rest-of-line) pairs of a Kaldi list file; blank lines skipped. UsageError when it is not UTF-8."""
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"{path} is not UTF-8 text (line {line}, byte {exc.start}: {exc.reason})",
                         hint=f"iconv -f LATIN1 -t UTF-8 {path} > {path}.utf8 && mv {path}.utf8 {path}   "
                              "(with the file's real encoding for LATIN1)") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}", hint="pass a Kaldi data dir with wav.scp, "
                         "text and utt2spk (or spk2utt)") from exc
    rows = []
    for line in text.splitlines():
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
