"""The `cosyext prepare` pipeline: find -> check + features (cached per utterance) -> split -> shards.

Features are computed before the split so the split only ever sees usable utterances, and the
speaker embedding (mean of a speaker's utterance embeddings, train and cv together) is final
before any shard holding that speaker is written. Same sources and options give the same bytes,
whether or not the run was interrupted and resumed on the way.

The model family (`family_choice`) picks the speech tokenizer and adds CosyVoice3's `instruct`
column; every row's tokens and stored audio satisfy upstream's token/mel alignment (`align`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .. import family as fam_mod
from ..errors import CosyextError, UsageError
from . import align
from . import audio as audio_mod
from . import dest as dest_mod
from . import raw as raw_mod
from . import report as report_mod
from .family_choice import Choice, choose
from .features import FeatureError, NoFeatures, example_pretrained, open_extractor
from .shards import remove_stale, shard_paths, write_lists, write_shard
from .sources import Problem, Utterance, discover
from .state import STATE_DIR, PrepareState, file_key, write_atomic

REPORT_NAME = dest_mod.REPORT_NAME
SUMMARY_NAME = dest_mod.SUMMARY_NAME
SETS = dest_mod.SETS


class NoUsableData(CosyextError):
    """Every input was skipped: there is nothing to train on."""

    exit_code = 1


_RAW = raw_mod.RawOptions()


@dataclasses.dataclass
class PrepareOptions:
    src: Path
    dest: Path
    pretrained: Path | None = None
    no_features: bool = False
    cv_ratio: float = 0.05
    shard_size: int = 1000
    min_sec: float = 0.5
    max_sec: float = 30.0
    seed: int = 0
    resume: bool = False
    #: start over in a DEST holding an earlier run or data prepare did not make (see `dest`)
    force: bool = False
    speaker: str | None = None
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    #: "cosyvoice2" / "cosyvoice3"; None: detected from `pretrained`, else CosyVoice2
    family: str | None = None
    #: CosyVoice3's instruct text; None: the family's default
    instruct: str | None = None
    # --- raw recordings (see `raw`): on with `asr`, or when SRC is one audio file ---------------
    #: Whisper model name or checkpoint path
    asr: str | None = None
    language: str | None = None
    # the cutting, loudness and filter defaults are raw.RawOptions' (one place)
    min_segment_sec: float = _RAW.slice.min_sec
    max_segment_sec: float = _RAW.slice.max_sec
    split_pause: float = _RAW.slice.split_pause
    target_lufs: float = _RAW.target_lufs
    min_speech_ratio: float = _RAW.min_speech_ratio
    min_asr_logprob: float = _RAW.min_asr_logprob
    max_no_speech: float = _RAW.max_no_speech
    max_compression_ratio: float = _RAW.max_compression_ratio
    max_clipped: float = _RAW.max_clipped
    #: the data report (report.html/.md); None: written for raw recordings only
    report: bool | None = None
    #: GPU size (GiB) the report's training recommendation is for
    gpu_memory: float = 16.0


@dataclasses.dataclass
class PrepareResult:
    train_list: Path
    cv_list: Path
    report: Path
    utts: dict[str, int]
    shards: dict[str, int]
    seconds: dict[str, float]
    skipped: list[Problem]
    features_computed: int = 0
    features_reused: int = 0
    shards_written: int = 0
    shards_reused: int = 0
    features: str = "onnx"
    family: str = "cosyvoice2"
    #: how the family was chosen: "--family", "detected from DIR/FILE", "default"
    family_source: str = "default"
    instruct: str | None = None
    #: the tokenizer file the speech tokens come from ("" with --no-features)
    speech_tokenizer: str = ""
    #: utterances whose stored audio was cut to whole tokens / whose surplus tokens were dropped
    audio_cut: int = 0
    tokens_dropped: int = 0
    #: raw recordings: segments cut (kept or not), kept, ASR results computed / reused, TSV edits used
    segments: int = 0
    segments_kept: int = 0
    asr_computed: int = 0
    asr_reused: int = 0
    edited: int = 0
    #: DEST/report.html when a report was written
    report_html: Path | None = None


def _check_options(o: PrepareOptions) -> None:
    if not 0.0 <= o.cv_ratio < 1.0:
        raise UsageError(f"--cv-ratio must be in [0, 1), got {o.cv_ratio}",
                         hint="cosyext prepare SRC DEST --cv-ratio 0.05")
    if o.shard_size < 1:
        raise UsageError(f"--shard-size must be >= 1, got {o.shard_size}",
                         hint="cosyext prepare SRC DEST --shard-size 1000")
    if o.min_sec < 0 or o.max_sec <= o.min_sec:
        raise UsageError(f"need 0 <= --min-sec < --max-sec, got {o.min_sec} and {o.max_sec}",
                         hint="cosyext prepare SRC DEST --min-sec 0.5 --max-sec 30")
    if o.min_segment_sec < 0 or o.max_segment_sec <= o.min_segment_sec:
        raise UsageError(f"need 0 <= --min-segment-sec < --max-segment-sec, got {o.min_segment_sec} and "
                         f"{o.max_segment_sec}", hint="cosyext prepare SRC DEST --asr small --min-segment-sec 2 "
                                                      "--max-segment-sec 15")
    if o.gpu_memory <= 0:
        raise UsageError(f"--gpu-memory must be > 0 GiB, got {o.gpu_memory}", hint="cosyext prepare SRC DEST "
                         "--gpu-memory 16")


def is_raw(o: PrepareOptions, dest: Path) -> bool:
    """Cut and transcribe recordings: `--asr` given, SRC one audio file, or DEST from such a run."""
    return o.asr is not None or Path(o.src).expanduser().is_file() or \
        (dest / STATE_DIR / raw_mod.SLICES).is_file()


def raw_options(o: PrepareOptions) -> raw_mod.RawOptions:
    from .slicing import SliceOptions

    return raw_mod.RawOptions(asr=o.asr, language=o.language,
                              slice=SliceOptions(min_sec=o.min_segment_sec, max_sec=o.max_segment_sec,
                                                 split_pause=o.split_pause),
                              target_lufs=o.target_lufs, min_speech_ratio=o.min_speech_ratio,
                              min_asr_logprob=o.min_asr_logprob, max_no_speech=o.max_no_speech,
                              max_compression_ratio=o.max_compression_ratio,
                              max_clipped=o.max_clipped)


def _say(msg: str) -> None:
    """To stderr without tearing a progress bar."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def split(utts: list[str], cv_ratio: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic by seed; both sets sorted by id; cv gets at least one utterance when it can."""
    order = sorted(utts)
    shuffled = order[:]
    random.Random(seed).shuffle(shuffled)
    n_cv = round(len(order) * cv_ratio)
    if cv_ratio > 0 and len(order) >= 2:
        n_cv = min(max(1, n_cv), len(order) - 1)
    cv = set(shuffled[:n_cv])
    return [u for u in order if u not in cv], [u for u in order if u in cv]


def speaker_embeddings(records: dict[str, dict[str, Any]], spk_of: dict[str, str]) -> dict[str, list[float]]:
    by_spk: dict[str, list[list[float]]] = defaultdict(list)
    for utt in sorted(records):
        by_spk[spk_of[utt]].append(records[utt]["utt_embedding"])
    return {spk: [float(x) for x in np.mean(np.asarray(v, dtype=np.float64), axis=0).astype(np.float32)]
            for spk, v in by_spk.items()}


def _spec(name: str, rows: list[dict[str, Any]], keys: list[list[int]]) -> str:
    """Digest of what a shard is planned to hold (audio by file size+mtime, the rest by value)."""
    body = [[{k: v for k, v in r.items() if k != "audio_data"}, key] for r, key in zip(rows, keys)]
    return hashlib.sha256(json.dumps([name, body], sort_keys=True).encode("utf-8")).hexdigest()


def prepare(o: PrepareOptions) -> PrepareResult:
    from tqdm import tqdm

    _check_options(o)
    choice = choose(o.family, o.pretrained, o.instruct)
    extractor = open_extractor(o.pretrained, o.no_features, choice.family)
    dest = Path(o.dest).expanduser().resolve()
    dest_mod.check(o.src, dest, resume=o.resume, force=o.force)
    recordings = None
    if is_raw(o, dest):
        recordings, utts, problems = raw_mod.find(Path(o.src), dest, o.speaker)
        dest_mod.refuse_outputs_as_inputs({**{u.wav: f"utterance {u.utt}" for u in utts},
                                           **{p: f"recording {rid}" for p, rid, _ in recordings}}, dest)
    else:
        utts, problems = discover(Path(o.src), speaker=o.speaker)
        dest_mod.refuse_outputs_as_inputs({u.wav: f"utterance {u.utt}" for u in utts}, dest)
    for p in problems:
        _say(f"skipped {escape(p.path or p.utt)}: {p.reason}")
    try:
        return _prepare(o, dest, choice, extractor, utts, problems, tqdm, recordings)
    except OSError as exc:  # reading audio is handled per utterance; this is DEST (or SRC) failing as a whole
        where = exc.filename if exc.filename is not None else dest
        raise UsageError(f"cannot write {where}: {exc.strerror or exc}",
                         hint=f"cosyext prepare {o.src} {o.dest} --resume  (once the cause is fixed; finished "
                              "work is kept)") from exc


def _prepare(o: PrepareOptions, dest: Path, choice: Choice, extractor, utts: list[Utterance],
             problems: list[Problem], tqdm, recordings=None) -> PrepareResult:
    if o.force:
        dest_mod.forget_earlier_run(dest)
    state = PrepareState(dest)
    state.check_run({"family": choice.family.name, "instruct": choice.instruct,
                     "speech_tokenizer": extractor.speech_tokenizer, "models": extractor.identity},
                    resume_hint=lambda earlier: _resume_hint(o, choice, earlier))
    state.load()
    state.open()
    segments: list[raw_mod.Segment] = []
    counts = (0, 0, 0)
    try:
        if recordings is not None:
            segments, raw_problems, counts = raw_mod.run(recordings, dest, state.dir, raw_options(o), _say, tqdm,
                                                         _no_bar(o), use_tsv=not o.force)
            problems.extend(raw_problems)
            for s in segments:
                if s.status == "kept":
                    utts.append(Utterance(s.utt, s.path, s.text, s.spk))
                else:
                    problems.append(Problem(s.utt, str(s.path), s.status))
                    _say(f"dropped {s.utt} ({s.start:.2f}-{s.end:.2f} s of {s.recording}): {s.status}")
            utts.sort(key=lambda u: u.utt)
        records, keys, stats = _features(utts, state, extractor, o, problems, tqdm)
        want_report = o.report if o.report is not None else recordings is not None
        try:
            result = _write(dest, utts, records, keys, state, o, choice, extractor.speech_tokenizer, problems, tqdm)
        except NoUsableData:
            if want_report:
                _report(dest, o, choice, extractor, utts, records, problems, segments)
            raise
    finally:
        state.close()
    result.features_computed, result.features_reused = stats
    result.features = "none" if isinstance(extractor, NoFeatures) else "onnx"
    result.segments, result.segments_kept = len(segments), sum(s.status == "kept" for s in segments)
    result.asr_computed, result.asr_reused, result.edited = counts
    if want_report:
        numbers = _report(dest, o, choice, extractor, utts, records, problems, segments)
        result.report_html = dest / report_mod.HTML_NAME
        summary_path = dest / SUMMARY_NAME
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        summary["report"] = numbers
        if recordings is not None:
            summary["segments"] = {"cut": result.segments, "kept": result.segments_kept,
                                   "transcripts_edited": result.edited}
        write_atomic(summary_path, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return result


def _report(dest: Path, o: PrepareOptions, choice: Choice, extractor, utts: list[Utterance],
            records: dict[str, dict[str, Any]], problems: list[Problem], segments) -> dict[str, Any]:
    """report.html/.md over every utterance and segment, kept or dropped (see `report`)."""
    items: dict[str, report_mod.Item] = {}
    for s in segments:
        items[s.utt] = report_mod.Item(s.utt, s.spk, s.seconds, s.text, s.status, str(s.path))
    by_id = {u.utt: u for u in utts}
    for p in problems:
        known = items.get(p.utt)
        items[p.utt] = report_mod.Item(p.utt, known.spk if known else "", known.seconds if known else None,
                                       known.text if known else "", p.reason, p.path)
    for u, rec in records.items():
        items[u] = report_mod.Item(u, by_id[u].spk, round(float(rec["seconds"]), 3), by_id[u].text, "kept",
                                   str(by_id[u].wav))
    kept = {u: str(by_id[u].wav) for u in records}
    if isinstance(extractor, NoFeatures):
        emb, source = report_mod.resemblyzer_embeddings(kept), "resemblyzer (GE2E, weights from its wheel)"
    else:
        emb = {u: np.asarray(records[u]["utt_embedding"], dtype=np.float64) for u in kept}
        source = "campplus (the utt_embedding column, from --pretrained)"
    minutes = sum(float(records[u]["seconds"]) for u in records) / 60
    rec = report_mod.recommend(minutes, o.gpu_memory, choice.family.name)
    return report_mod.write(dest, [items[k] for k in sorted(items)], emb, source, rec)


def _resume_hint(o: PrepareOptions, choice: Choice, earlier: dict[str, Any]) -> str:
    """The command that continues the run DEST holds (its family and instruct)."""
    import shlex

    family = fam_mod.FAMILIES.get(str(earlier.get("family")), fam_mod.COSYVOICE2)
    parts = ["cosyext", "prepare", str(o.src), str(o.dest), "--family", family.name]
    if earlier.get("instruct") is not None:
        parts += ["--instruct", earlier["instruct"]]
    if o.pretrained is not None:
        parts += ["--pretrained", str(o.pretrained) if family is choice.family else example_pretrained(family)]
    return shlex.join(parts + ["--resume"])


def models_identity(extractor) -> str:
    """What a cached feature record must match: the ONNX files, and (with tokens) the alignment rule."""
    if isinstance(extractor, NoFeatures):
        return extractor.identity
    return f"{extractor.identity};align={align.SAMPLES_PER_TOKEN}@{align.SAMPLE_RATE}"


def _features(utts: list[Utterance], state: PrepareState, extractor, o: PrepareOptions, problems: list[Problem],
              tqdm) -> tuple[dict[str, dict[str, Any]], dict[str, list[int]], tuple[int, int]]:
    records: dict[str, dict[str, Any]] = {}
    keys: dict[str, list[int]] = {}
    computed = reused = 0
    models = models_identity(extractor)
    bar = tqdm(utts, desc="features", unit="utt", disable=_no_bar(o), file=sys.stderr)
    for u in bar:
        try:
            key = file_key(u.wav)
        except FileNotFoundError:
            _problem(problems, u, "audio file not found")
            continue
        except OSError as exc:
            _problem(problems, u, f"audio file cannot be read: {exc.strerror or exc}")
            continue
        rec = state.cached_features(u.utt, key, models)
        if rec is not None:
            if not o.min_sec <= rec.get("source_seconds", rec["seconds"]) <= o.max_sec:
                rec = None  # options changed since: re-check so the reason is reported properly
            else:
                reused += 1
        if rec is None:
            decoded, why = audio_mod.check(u.wav, min_sec=o.min_sec, max_sec=o.max_sec)
            if why:
                _problem(problems, u, why)
                continue
            try:
                emb, tokens = extractor.extract(decoded)
                stored = _store(decoded, tokens)
            except FeatureError as exc:
                _problem(problems, u, str(exc))
                continue
            frames, tokens = stored.pop("frames"), stored.pop("tokens")
            rec = state.add_features(u.utt, key, models, round(frames / decoded.sample_rate, 6), emb, tokens,
                                     source_seconds=round(decoded.seconds, 6), **stored)
            computed += 1
        records[u.utt] = rec
        keys[u.utt] = key
    return records, keys, (computed, reused)


def _store(decoded: audio_mod.Decoded, tokens: list[int]) -> dict[str, Any]:
    """How to store one utterance so its tokens line up with its audio in upstream's flow (see `align`).

    `wav_frames`: None to store the file's own bytes, else store a WAV of that many frames.
    """
    total = len(decoded.samples)
    if not tokens:  # --no-features: nothing to line up (upstream drops rows without tokens)
        return {"frames": total, "tokens": tokens, "wav_frames": None, "cut": [0, 0]}
    try:
        plan = align.plan(total, decoded.sample_rate, tokens)
    except align.Misaligned as exc:
        raise FeatureError(str(exc)) from exc
    wav_frames = plan.frames if plan.cut or not decoded.exact_length else None
    return {"frames": plan.frames, "tokens": plan.tokens, "wav_frames": wav_frames,
            "cut": [total - plan.frames, plan.total_tokens - len(plan.tokens)]}


def _problem(problems: list[Problem], u: Utterance, reason: str) -> None:
    problems.append(Problem(u.utt, str(u.wav), reason))
    _say(f"skipped {escape(str(u.wav))}: {reason}")


def _no_bar(o: PrepareOptions) -> bool | None:
    return None if o.progress is None else not o.progress


def _write(dest: Path, utts: list[Utterance], records: dict[str, dict[str, Any]], keys: dict[str, list[int]],
           state: PrepareState, o: PrepareOptions, choice: Choice, tokenizer: str, problems: list[Problem],
           tqdm) -> PrepareResult:
    report = dest / REPORT_NAME
    by_id = {u.utt: u for u in utts}
    if not records:
        _write_report(report, problems)
        raise NoUsableData(f"no usable utterances in {o.src} ({len(problems)} skipped, reasons in {report})",
                           hint=f"fix the files listed in {report}, then: cosyext prepare {o.src} {o.dest} --resume")
    spk_emb = speaker_embeddings(records, {u: by_id[u].spk for u in records})
    sets = dict(zip(SETS, split(list(records), o.cv_ratio, o.seed)))
    if not sets["cv"]:
        _say("warning: the cv set is empty (too few utterances or --cv-ratio 0); upstream's CV pass needs data")
    if o.no_features:
        _say("warning: --no-features: utt_embedding/spk_embedding are zeros and speech_token is empty; "
             "this data cannot train a model")
    shards = {name: [ids[i:i + o.shard_size] for i in range(0, len(ids), o.shard_size)] for name, ids in sets.items()}
    written = reused = 0
    bar = tqdm(total=len(records), desc="shards", unit="utt", disable=_no_bar(o), file=sys.stderr)
    for name, chunks in shards.items():
        parquet_dir = dest / name / "parquet"
        for index, chunk in enumerate(chunks):
            rows = [_row(by_id[u], records[u], spk_emb[by_id[u].spk], choice.instruct) for u in chunk]
            spec = _spec(name, rows, [keys[u] + [records[u].get("wav_frames")] for u in chunk])
            label = f"{name}/{index}"
            paths = shard_paths(parquet_dir, index)
            if state.shard_done(label, spec, paths[0]) and all(p.is_file() for p in paths[1:]):
                reused += 1
            else:
                for r, u in zip(rows, chunk):
                    r["audio_data"] = _audio_data(by_id[u].wav, records[u].get("wav_frames"))
                write_shard(rows, parquet_dir, index)
                state.mark_shard(label, spec, paths[0])
                written += 1
            bar.update(len(chunk))
        remove_stale(parquet_dir, len(chunks))
        for label in state.shard_names():
            set_name, _, idx = label.partition("/")
            if set_name == name and int(idx) >= len(chunks):
                state.forget_shard(label)
        write_lists(dest / name, len(chunks))
    bar.close()
    _write_report(report, problems)
    seconds = {name: round(sum(records[u]["seconds"] for u in ids), 3) for name, ids in sets.items()}
    result = PrepareResult(train_list=dest / "train" / "data.list", cv_list=dest / "cv" / "data.list", report=report,
                           utts={n: len(ids) for n, ids in sets.items()}, shards={n: len(c) for n, c in shards.items()},
                           seconds=seconds, skipped=sorted(problems, key=lambda p: (p.path, p.utt)),
                           shards_written=written, shards_reused=reused, family=choice.family.name,
                           family_source=choice.source, instruct=choice.instruct, speech_tokenizer=tokenizer,
                           audio_cut=sum(1 for r in records.values() if r.get("cut", [0, 0])[0]),
                           tokens_dropped=sum(1 for r in records.values() if r.get("cut", [0, 0])[1]))
    summary = {"utts": result.utts, "shards": result.shards, "seconds": seconds, "skipped": len(problems),
               "speakers": sorted(spk_emb), "seed": o.seed, "cv_ratio": o.cv_ratio, "shard_size": o.shard_size,
               "features": "none" if not tokenizer else "onnx",
               "family": choice.family.name, "family_source": choice.source, "instruct": choice.instruct,
               "speech_tokenizer": tokenizer or None,
               "alignment": {"sample_rate": align.SAMPLE_RATE, "samples_per_token": align.SAMPLES_PER_TOKEN,
                             "audio_cut": result.audio_cut, "tokens_dropped": result.tokens_dropped}}
    write_atomic(dest / SUMMARY_NAME, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return result


def _row(u: Utterance, rec: dict[str, Any], spk_embedding: list[float], instruct: str | None) -> dict[str, Any]:
    row = {"utt": u.utt, "wav": str(u.wav), "audio_data": b"", "text": u.text, "spk": u.spk,
           "utt_embedding": rec["utt_embedding"], "spk_embedding": spk_embedding,
           "speech_token": rec["speech_token"]}
    if instruct is not None:
        row["instruct"] = instruct
    return row


def _audio_data(wav: Path, wav_frames: int | None) -> bytes:
    """The file's own bytes, or a WAV of its first `wav_frames` frames (cut to whole tokens)."""
    return audio_mod.read_bytes(wav) if wav_frames is None else audio_mod.wav_prefix(wav, wav_frames)


_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(field: str) -> str:
    """One TSV field on one line: backslash, tab, newline and carriage return as \\\\, \\t, \\n, \\r, and the
    bytes of a file name that is not UTF-8 as \\xNN (how Python keeps them: surrogate escapes)."""
    return "".join(_ESCAPES.get(ch) or (f"\\x{ord(ch) - 0xDC00:02x}" if "\udc80" <= ch <= "\udcff" else ch)
                   for ch in field)


def _write_report(path: Path, problems: list[Problem]) -> None:
    lines = ["utt\tpath\treason\n"]
    for p in sorted(problems, key=lambda p: (p.path, p.utt)):
        lines.append("\t".join(escape(f) for f in (p.utt, p.path, p.reason)) + "\n")
    write_atomic(path, "".join(lines).encode("utf-8"))


__all__ = ["PrepareOptions", "PrepareResult", "escape", "prepare", "split", "speaker_embeddings", "STATE_DIR"]
