"""`cosyext eval` end to end: choose the utterances, set the metrics up, get each system's audio
(synthesise it, or read it from ``--synth-dir``), score, summarise, write table, JSON and plot.

Metrics are set up before any synthesis, so a bad ``--asr`` or a missing scorer is known in seconds,
not after an hour of synthesis. Both systems speak the same texts with the same seed per utterance
(``seed + index``), so the difference between them is the model's, not the sampler's.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UsageError
from ..safe_paths import check_writable
from . import report
from .audio import Clip, write_wav
from .bootstrap import DEFAULT_LEVEL, DEFAULT_RESAMPLES
from .data import EvalSet, Utterance, choose, read_list
from .metric import Context, Sample, collect, select
from .score import SYSTEMS, SYSTEM_LABELS, Progress, setup, score_all, summarise
from .synthesis import Prompt

FORMAT_VERSION = 1
RESULT_FILES = ("eval.json", "eval.txt", "eval.png")
WAVS = "wavs"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

#: (utterance, seed, zero-shot prompt) -> audio; one per system. It may also have ``load()`` (called
#: before its first utterance), ``close()`` (after its last) and an ``info`` dict (kept in eval.json).
Synthesise = Callable[[Utterance, int, "Prompt | None"], Clip]
PROMPT_DIR = "prompt"


def wav_name(utt: str) -> str:
    """The file an utterance's audio is stored under (ids may hold '/' or spaces)."""
    return _UNSAFE.sub("_", utt) + ".wav"


@dataclass
class Options:
    data: Path
    out: Path
    pretrained: Path | None = None
    synth_dir: Path | None = None
    speaker: str | None = None
    prompt_utt: str | None = None
    max_utts: int | None = None
    lang: str | None = None
    seed: int = 0
    asr: str | None = None
    metrics: list[str] | None = None
    resamples: int = DEFAULT_RESAMPLES
    level: float = DEFAULT_LEVEL
    threads: int = 1
    #: what each system is, for the report (model dirs, adapters, voice)
    describe: dict[str, dict] = field(default_factory=dict)


def check_out_dir(out: Path) -> None:
    """OUT must be new, empty, or an earlier eval's output (whose files are then replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file, not a directory", hint="pass a new directory, e.g. -o eval-out")
    if out.is_dir() and any(out.iterdir()) and not (out / "eval.json").is_file():
        raise UsageError(f"-o {out} holds files that no earlier 'cosyext eval' wrote; refusing to write into it",
                         hint="pass a new or empty directory")
    check_writable(out, "-o", "pass a directory you can write to")


def load_synth_dir(root: Path, evalset: EvalSet) -> dict[str, dict[str, Clip]]:
    """``ROOT/base/UTT.wav`` and ``ROOT/tuned/UTT.wav`` (the layout eval writes under OUT/wavs)."""
    root = Path(root)
    missing = [s for s in SYSTEMS if not (root / s).is_dir()]
    if missing:
        raise UsageError(f"--synth-dir {root} has no {' or '.join(f'{s}/' for s in missing)} directory",
                         hint="pass the wavs/ directory an earlier 'cosyext eval -o OUT' wrote (OUT/wavs)")
    clips: dict[str, dict[str, Clip]] = {s: {} for s in SYSTEMS}
    for system in SYSTEMS:
        for u in evalset.items:
            path = root / system / wav_name(u.utt)
            if path.is_file():
                try:
                    clips[system][u.utt] = Clip.load(path)
                except Exception as exc:
                    raise UsageError(f"{path} does not decode as audio ({exc})") from exc
    if not any(clips[s] for s in SYSTEMS):
        raise UsageError(f"--synth-dir {root} holds no wav for any utterance of speaker {evalset.speaker!r} in the data",
                         hint="the wavs are named after the utterance ids of --data (UTT.wav)")
    return clips


def evaluate(opts: Options, synthesizers: dict[str, Synthesise] | None = None,
             progress: Progress = lambda s: None, pm=None) -> dict:
    """Everything `cosyext eval` does after argument parsing; returns the JSON result (also written)."""
    if (synthesizers is None) == (opts.synth_dir is None):
        raise UsageError("evaluate needs either synthesizers or --synth-dir")
    check_out_dir(opts.out)
    selected = select(collect(pm), opts.metrics)
    evalset = choose(read_list(opts.data), speaker=opts.speaker, prompt_utt=opts.prompt_utt,
                     max_utts=None if opts.synth_dir else opts.max_utts, lang=opts.lang,
                     need_prompt=opts.synth_dir is None)
    clips: dict[str, dict[str, Clip]] = {}
    if opts.synth_dir is not None:
        clips = load_synth_dir(opts.synth_dir, evalset)
        evalset.items = [u for u in evalset.items if any(u.utt in clips[s] for s in SYSTEMS)]
        if opts.max_utts is not None:
            evalset.items = evalset.items[:opts.max_utts]
    items = evalset.items
    progress(f"speaker {evalset.speaker!r}: {len(items)} utterances to evaluate"
             + (f", zero-shot prompt {evalset.prompt.utt}" if evalset.prompt else ""))
    context = Context(references=[u.clip for u in items], texts=[(u.text, u.lang) for u in items],
                      pretrained=opts.pretrained, asr=opts.asr, threads=opts.threads)
    runs = setup(selected, context, progress)

    seeds = {u.utt: opts.seed + i for i, u in enumerate(items)}
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    synthesis: dict[str, dict] = {}
    prompt = None
    if synthesizers is not None:
        prompt = _write_prompt(out / WAVS / PROMPT_DIR, evalset.prompt)
        for system in SYSTEMS:
            clips[system], synthesis[system] = _synthesise(synthesizers[system], system, items, seeds, prompt,
                                                           out / WAVS / system, progress)

    samples = [Sample(u.utt, u.text, u.lang, system, clips[system][u.utt])
               for system in SYSTEMS for u in items if u.utt in clips[system]]
    score_all(runs, samples, progress)
    utts = [u.utt for u in items]
    result = {
        "cosyext_eval": FORMAT_VERSION,
        "data": str(opts.data),
        "speaker": evalset.speaker,
        "prompt": {"utt": evalset.prompt.utt, "text": evalset.prompt.text,
                   "wav": str(prompt.wav) if prompt else None} if evalset.prompt else None,
        "systems": {s: {**opts.describe.get(s, {}), **synthesis.get(s, {})} for s in SYSTEMS},
        "systems_order": list(SYSTEMS),
        "synth_dir": str(opts.synth_dir) if opts.synth_dir else None,
        "asr": opts.asr,
        "bootstrap": {"resamples": opts.resamples, "level": opts.level, "seed": opts.seed,
                      "method": "percentile; difference paired over utterances"},
        "metrics": summarise(runs, utts, resamples=opts.resamples, level=opts.level, seed=opts.seed),
        "utterances": [_utterance(u, seeds[u.utt] if synthesizers else None, clips, runs,
                                  out / WAVS if synthesizers else Path(opts.synth_dir)) for u in items],
    }
    text = report.table(result)
    report.write_json(out / "eval.json", result)
    report.write_text(out / "eval.txt", text)
    report.plot(out / "eval.png", result)
    return result


def _write_prompt(folder: Path, prompt: Utterance | None) -> Prompt | None:
    """The prompt's recording as a file (upstream's front end reads the voice from a path)."""
    if prompt is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / wav_name(prompt.utt)
    write_wav(path, prompt.clip)
    return Prompt(path, prompt.text, prompt.utt)


def _synthesise(synth: Synthesise, system: str, items: list[Utterance], seeds: dict[str, int], prompt: Prompt | None,
                folder: Path, progress: Progress) -> tuple[dict[str, Clip], dict]:
    """One system says every text (its model loaded once, released afterwards); wavs go to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    label = SYSTEM_LABELS[system]
    load, close = getattr(synth, "load", None), getattr(synth, "close", None)
    clips: dict[str, Clip] = {}
    t0 = time.perf_counter()
    try:
        if load is not None:
            load()
        t1 = time.perf_counter()
        for i, u in enumerate(items, 1):
            t = time.perf_counter()
            clip = synth(u, seeds[u.utt], prompt)
            write_wav(folder / wav_name(u.utt), clip)
            clips[u.utt] = clip
            took = time.perf_counter() - t
            progress(f"synthesised {label} {i}/{len(items)}: {u.utt} ({clip.seconds:.1f} s of audio in {took:.1f} s)")
    finally:
        if close is not None:
            close()
    audio = sum(c.seconds for c in clips.values())
    spent = time.perf_counter() - t1
    info = {"load_seconds": round(t1 - t0, 3), "synth_seconds": round(spent, 3), "audio_seconds": round(audio, 3),
            "rtf": round(spent / audio, 4) if audio else None,
            "sample_rate": next(iter(clips.values())).sample_rate if clips else None}
    return clips, {**dict(getattr(synth, "info", None) or {}), **info}


def _utterance(u: Utterance, seed: int | None, clips: dict[str, dict[str, Clip]], runs, wavs: Path) -> dict:
    row: dict = {"utt": u.utt, "text": u.text, "lang": u.lang, "seed": seed}
    for system in SYSTEMS:
        clip = clips.get(system, {}).get(u.utt)
        entry: dict = {"wav": str(wavs / system / wav_name(u.utt)) if clip else None, "seed": seed if clip else None,
                       "seconds": round(clip.seconds, 3) if clip else None, "scores": {}, "details": {}, "skipped": {}}
        if clip is None:
            entry["missing"] = True
        for run in runs:
            score = run.scores.get(system, {}).get(u.utt)
            if score is not None:
                entry["scores"][run.name] = score.value
                if score.detail:
                    entry["details"][run.name] = score.detail
            elif u.utt in run.skipped.get(system, {}):
                entry["skipped"][run.name] = run.skipped[system][u.utt]
        row[system] = entry
    return row
