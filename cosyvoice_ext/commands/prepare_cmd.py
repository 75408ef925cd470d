"""`cosyext prepare`: recordings + transcripts -> upstream parquet shards and data.list (train and cv)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..family import COSYVOICE3, FAMILIES

FAMILY_NAMES = tuple(FAMILIES)
DEFAULT_INSTRUCT = COSYVOICE3.default_instruct

EXAMPLES = """\
examples:
  cosyext prepare recordings/ data/ --pretrained pretrained_models/CosyVoice2-0.5B
  cosyext prepare recordings/ data/ --pretrained pretrained_models/Fun-CosyVoice3-0.5B   # CosyVoice3 (detected)
  cosyext prepare recordings/ data/ --pretrained DIR3 --instruct "Speak slowly.<|endofprompt|>"
  cosyext prepare kaldi/train data/ --pretrained pretrained_models/CosyVoice2-0.5B --cv-ratio 0.1 --seed 3
  cosyext prepare recordings/ data/ --pretrained pretrained_models/CosyVoice2-0.5B --resume   # after Ctrl-C
  cosyext prepare recordings/ inspect/ --no-features     # zeros instead of features: lint/inspection only
  cosyext prepare podcast.mp3 data/ --asr small --language en --pretrained pretrained_models/CosyVoice2-0.5B
  cosyext prepare long_recordings/ data/ --asr /models/whisper-small.pt --gpu-memory 24 --pretrained DIR
  cosyext prepare long_recordings/ data/ --asr small --pretrained DIR --resume   # after editing transcripts.tsv

SRC is a folder of NAME.wav + NAME.txt (or NAME.lab) pairs, searched recursively (the speaker is the
sub-folder name, or SRC's name for files at the top; --speaker overrides), or a Kaldi data dir with
wav.scp, text and utt2spk (or spk2utt). DEST gets train/ and cv/, each with parquet/ shards,
data.list, utt2data.list and spk2data.list, plus prepare_report.tsv (every skipped file and why).
A DEST that already holds shards or a data.list prepare did not make is refused; --force replaces
only the files prepare writes. Symlinked folders in SRC are followed once each; links that dangle
or loop are reported.
The model family (CosyVoice2 or CosyVoice3) is read from the pretrained directory (cosyvoice3.yaml
there means CosyVoice3) unless --family says; CosyVoice3 data gets speech tokens from
speech_tokenizer_v3.onnx and an `instruct` text on every sample. Speech tokens and stored audio are
lined up the way upstream's flow needs them (tokens == ceil(samples at 24 kHz / 960)).
Long recordings (wav, flac, mp3, m4a: anything ffmpeg decodes; SRC a folder or one file) are cut into
utterances with --asr MODEL: silero-vad finds the pauses, each cut is at the middle of a pause, utterances
are 2-15 s (--min-segment-sec/--max-segment-sec), loudness goes to --target-lufs, Whisper transcribes.
A recording with a .txt/.lab next to it keeps its transcript. DEST gets segments/ (the cut audio),
transcripts.tsv (edit it and re-run with --resume: your text wins) and report.html / report.md.
Train with: --train_data DEST/train/data.list --cv_data DEST/cv/data.list
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="recordings + transcripts -> upstream parquet shards with speaker embeddings and speech tokens",
        description="Build upstream CosyVoice2/CosyVoice3 training data (parquet shards, data.list; train and cv) "
        "from raw audio and transcripts, with campplus speaker embeddings and speech tokens from the pretrained "
        "model's ONNX files. Resumable; unusable files are reported and skipped.\n\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", type=Path, help="folder of wav + txt/lab pairs, or a Kaldi data dir")
    p.add_argument("dest", metavar="DEST", type=Path, help="output directory")
    p.add_argument("--pretrained", metavar="DIR", type=Path,
                   help="pretrained model dir: campplus.onnx and speech_tokenizer_v2.onnx (CosyVoice2) "
                        "or speech_tokenizer_v3.onnx (CosyVoice3)")
    p.add_argument("--family", choices=sorted(FAMILY_NAMES),
                   help="model family the data is for (default: detected from --pretrained, else cosyvoice2)")
    p.add_argument("--instruct", metavar="TEXT",
                   help="CosyVoice3 only: the instruct text on every sample, must contain <|endofprompt|> "
                        f"(default {DEFAULT_INSTRUCT!r})")
    p.add_argument("--no-features", action="store_true",
                   help="without --pretrained: write zero embeddings and no tokens (not trainable)")
    p.add_argument("--cv-ratio", type=float, default=0.05, metavar="R",
                   help="share of utterances for cv (default 0.05)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N",
                   help="utterances per parquet shard (default 1000)")
    p.add_argument("--min-sec", type=float, default=0.5, metavar="S", help="skip shorter recordings (default 0.5)")
    p.add_argument("--max-sec", type=float, default=30.0, metavar="S",
                   help="skip longer recordings (default 30: the speech tokenizer's limit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/cv split (default 0)")
    p.add_argument("--speaker", metavar="NAME", help="one speaker name for every utterance")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in DEST, reusing finished work")
    p.add_argument("--force", action="store_true",
                   help="start over in a DEST that holds an earlier run or data prepare did not make: replaces "
                        "only the files prepare writes (shards, lists, report, summary, its state), keeps the rest")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("long recordings without transcripts (cut, normalised, transcribed)")
    g.add_argument("--asr", metavar="MODEL", help="Whisper model name (small, large-v3) or openai-whisper checkpoint "
                   "path; turns on cutting of recordings that have no .txt/.lab (on anyway when SRC is one file)")
    g.add_argument("--language", metavar="LANG", help="language of the recordings (en, zh...); default: detected")
    g.add_argument("--min-segment-sec", type=float, default=2.0, metavar="S",
                   help="shortest utterance to cut, seconds of speech (default 2)")
    g.add_argument("--max-segment-sec", type=float, default=15.0, metavar="S",
                   help="longest utterance to cut, seconds of speech (default 15)")
    g.add_argument("--split-pause", type=float, default=0.5, metavar="S",
                   help="a pause this long always ends an utterance when both sides fit (default 0.5)")
    g.add_argument("--target-lufs", type=float, default=-20.0, metavar="LUFS",
                   help="loudness every utterance is brought to (default -20; peaks kept at -1 dBFS)")
    g.add_argument("--min-speech-ratio", type=float, default=0.5, metavar="R",
                   help="drop utterances where the VAD hears speech in less of the audio (default 0.5)")
    g.add_argument("--min-asr-logprob", type=float, default=-1.0, metavar="L",
                   help="drop ASR transcripts whose Whisper avg_logprob is lower (default -1.0)")
    g.add_argument("--max-no-speech", type=float, default=0.6, metavar="P",
                   help="drop ASR transcripts whose Whisper no_speech_prob is higher (default 0.6)")
    g.add_argument("--max-compression-ratio", type=float, default=2.4, metavar="R",
                   help="drop ASR transcripts that compress better than this (Whisper looping; default 2.4)")
    g.add_argument("--max-clipped", type=float, default=0.001, metavar="F",
                   help="drop utterances with a larger share of clipped samples (default 0.001)")
    g.add_argument("--report", action=argparse.BooleanOptionalAction, default=None,
                   help="write report.html/report.md (default: on for long recordings)")
    g.add_argument("--gpu-memory", type=float, default=16.0, metavar="GIB",
                   help="GPU size the report's training recommendation is for (default 16)")
    p.set_defaults(func=run)


RAW_ARGS = ("asr", "language", "min_segment_sec", "max_segment_sec", "split_pause", "target_lufs",
            "min_speech_ratio", "min_asr_logprob", "max_no_speech", "max_compression_ratio", "max_clipped", "report",
            "gpu_memory")


def run(args: argparse.Namespace) -> int:
    from ..prepare import PrepareOptions, prepare

    opts = PrepareOptions(src=args.src, dest=args.dest, pretrained=args.pretrained, no_features=args.no_features,
                          cv_ratio=args.cv_ratio, shard_size=args.shard_size, min_sec=args.min_sec,
                          max_sec=args.max_sec, seed=args.seed, resume=args.resume, force=args.force,
                          speaker=args.speaker,
                          progress=False if args.no_progress else None, family=args.family, instruct=args.instruct,
                          **{k: getattr(args, k) for k in RAW_ARGS})
    try:
        res = prepare(opts)
    except KeyboardInterrupt:
        print(f"cosyext prepare: interrupted; finished work is kept. Continue with:\n  {resume_command(args)}",
              file=sys.stderr)
        return 130
    for name, path in (("train", res.train_list), ("cv", res.cv_list)):
        print(f"{name + ':':6} {res.utts[name]} utterances ({_duration(res.seconds[name])}) in "
              f"{res.shards[name]} shard(s) -> {path}")
    print(f"family: {res.family} ({res.family_source}); speech tokens: {res.speech_tokenizer or 'none (--no-features)'}"
          + (f"; instruct: {res.instruct!r}" if res.instruct is not None else ""))
    print(f"features: {res.features_computed} computed, {res.features_reused} reused; shards: "
          f"{res.shards_written} written, {res.shards_reused} reused")
    if res.audio_cut or res.tokens_dropped:
        print(f"aligned to whole tokens: audio cut in {res.audio_cut}, surplus tokens dropped in "
              f"{res.tokens_dropped} utterance(s) (under 0.1 s each)")
    if res.segments:
        print(f"segments: {res.segments} cut, {res.segments_kept} kept; ASR: {res.asr_computed} transcribed, "
              f"{res.asr_reused} reused, {res.edited} from your edits in transcripts.tsv")
    if res.skipped:
        print(f"skipped {len(res.skipped)} file(s); reasons in {res.report}")
    if res.report_html is not None:
        print(f"report: {res.report_html}")
    return 0


def resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run: same sources and options, plus --resume."""
    import shlex

    parts = ["cosyext", "prepare", str(args.src), str(args.dest)]
    if args.pretrained:
        parts += ["--pretrained", str(args.pretrained)]
    if args.no_features:
        parts.append("--no-features")
    if args.family:
        parts += ["--family", args.family]
    if args.instruct is not None:
        parts += ["--instruct", args.instruct]
    parts += ["--cv-ratio", f"{args.cv_ratio:g}", "--shard-size", str(args.shard_size), "--min-sec",
              f"{args.min_sec:g}", "--max-sec", f"{args.max_sec:g}", "--seed", str(args.seed)]
    if args.speaker:
        parts += ["--speaker", args.speaker]
    defaults = {"min_segment_sec": 2.0, "max_segment_sec": 15.0, "split_pause": 0.5, "target_lufs": -20.0,
                "min_speech_ratio": 0.5, "min_asr_logprob": -1.0, "max_no_speech": 0.6, "max_compression_ratio": 2.4,
                "max_clipped": 0.001,
                "gpu_memory": 16.0}
    for key in RAW_ARGS:
        value = getattr(args, key, None)
        if value is None or value == defaults.get(key):
            continue
        flag = "--" + key.replace("_", "-")
        if key == "report":
            parts.append(flag if value else "--no-report")
        else:
            parts.append(f"{flag}={value:g}" if isinstance(value, float) else f"{flag}={value}")  # -1e9 is no option
    return shlex.join(parts + ["--resume"])


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
