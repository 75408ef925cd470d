"""`cosyext eval`: base vs fine-tuned on held-out utterances (the arguments only; the work is in
:mod:`cosyvoice_ext.eval`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  # a training run's adapters (llm and/or flow runs) applied in memory to the pretrained model
  cosyext eval exp/llm exp/flow --base pretrained_models/CosyVoice2-0.5B --data data/cv/data.list \\
      --upstream ~/CosyVoice --asr large-v3 -o eval-out
  # an exported serve dir ('cosyext export --serve'), its registered speaker as the fine-tuned voice
  cosyext eval serve/my_voice --voice registered --base pretrained_models/CosyVoice2-0.5B \\
      --data data/cv/data.list --upstream ~/CosyVoice --asr ~/models/whisper-large-v3.pt
  # score wavs synthesised earlier (OUT/wavs of an earlier eval, or DIR/base + DIR/tuned of your own)
  cosyext eval --synth-dir eval-out/wavs --base pretrained_models/CosyVoice2-0.5B --data data/cv/data.list -o rescored
  cosyext eval --list-metrics

Both systems say every held-out text of the target speaker with the same seed per utterance,
zero-shot from one of that speaker's CV utterances (its audio and text; not scored). Output in OUT:
eval.txt (the table, also printed), eval.json, eval.png and wavs/{base,tuned}/UTT.wav.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="base vs fine-tuned: speaker similarity, WER/CER, DNSMOS with bootstrap CIs",
        description="Synthesise the held-out utterances' texts with the base and the fine-tuned model (same texts, "
        "same seeds) and report per system the mean of each metric with a 95% bootstrap CI, and the fine-tuned - base "
        "difference with its paired CI. Metrics are plugins (docs/eval.md).\n\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", nargs="*", metavar="RUN|MODEL_DIR",
                   help="the fine-tuned model: training run dir(s) (--model_dir of the llm and/or flow run) or an "
                   "exported serve dir")
    p.add_argument("--base", metavar="PRETRAINED", type=Path,
                   help="the pretrained model dir (the base system; its campplus.onnx embeds speakers)")
    p.add_argument("--data", metavar="CV_LIST", type=Path, help="held-out data.list (parquet with text and audio_data)")
    p.add_argument("-o", "--output", metavar="DIR", type=Path, default=Path("eval-out"),
                   help="output directory: new, empty or an earlier eval's (default ./eval-out)")
    p.add_argument("--synth-dir", metavar="DIR", type=Path,
                   help="score these wavs instead of synthesising: DIR/base/UTT.wav and DIR/tuned/UTT.wav")
    p.add_argument("--upstream", metavar="DIR", type=Path, help="upstream CosyVoice tree for synthesis "
                   "(default: $COSYEXT_UPSTREAM, else the current directory)")
    voice = p.add_argument_group("utterances and voice")
    voice.add_argument("--speaker", metavar="SPK", help="the target speaker in the data (default: the only one)")
    voice.add_argument("--prompt-utt", metavar="UTT", help="zero-shot prompt utterance (default: the first lasting "
                       "3-10 s, else the longest)")
    voice.add_argument("--voice", choices=["prompt", "registered"], default="prompt",
                       help="fine-tuned system's voice: the zero-shot prompt (default; as the base) or, for a serve "
                       "dir, its registered speaker (prompt-free)")
    voice.add_argument("--speaker-name", metavar="NAME", help="with --voice registered: the spk2info entry "
                       "(default: the serve dir's only or default speaker)")
    voice.add_argument("--max-utts", type=int, metavar="N", help="evaluate only the first N utterances")
    voice.add_argument("--lang", choices=["en", "zh"], help="language of every text (default: per text, zh when it "
                       "holds Chinese characters); en is scored by WER, zh by CER")
    voice.add_argument("--seed", type=int, default=0, help="utterance i is synthesised with seed+i (default 0); "
                       "also seeds the bootstrap")
    metrics = p.add_argument_group("metrics")
    metrics.add_argument("--asr", metavar="NAME|PATH", help="Whisper for WER/CER: an openai-whisper name "
                         "(large-v3, downloaded once) or checkpoint file; without it WER/CER say so and do not run")
    metrics.add_argument("--metrics", metavar="A,B", help="only these metrics (default: every registered one)")
    metrics.add_argument("--list-metrics", action="store_true", help="list the registered metrics and exit")
    metrics.add_argument("--bootstrap", type=int, default=10_000, metavar="N", help="bootstrap resamples "
                         "(default 10000)")
    metrics.add_argument("--ci", type=float, default=0.95, metavar="LEVEL", help="confidence level (default 0.95)")
    metrics.add_argument("--threads", type=int, default=1, metavar="N", help="torch/ONNX threads (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..eval.metric import collect

    if args.list_metrics:
        for name, reg in collect().items():
            m = reg.metric
            print(f"{name}  {m.label} ({'higher' if m.higher_is_better else 'lower'} is better; plugin {reg.plugin})")
        return 0
    if args.base is None or args.data is None:
        raise UsageError("--base PRETRAINED and --data CV_LIST are required",
                         hint="cosyext eval RUN|MODEL_DIR --base PRETRAINED --data CV_LIST")
    if bool(args.target) == bool(args.synth_dir):
        raise UsageError("give the fine-tuned model (RUN or MODEL_DIR) or --synth-dir DIR, not both" if args.target
                         else "nothing to evaluate: give the fine-tuned model (RUN or MODEL_DIR) or --synth-dir DIR",
                         hint="cosyext eval RUN|MODEL_DIR --base PRETRAINED --data CV_LIST")
    if args.bootstrap < 100 or not 0.5 <= args.ci < 1 or args.threads < 1 or (args.max_utts is not None and args.max_utts < 1):
        raise UsageError("--bootstrap >= 100, 0.5 <= --ci < 1, --threads >= 1 and --max-utts >= 1, please",
                         hint="the defaults: --bootstrap 10000 --ci 0.95 --threads 1")
    if not args.base.is_dir():
        raise UsageError(f"--base {args.base} is not a directory", hint="pass the pretrained model directory")
    from ..eval.run import Options, evaluate

    opts = Options(data=args.data, out=args.output, pretrained=args.base, synth_dir=args.synth_dir,
                   speaker=args.speaker, prompt_utt=args.prompt_utt, max_utts=args.max_utts, lang=args.lang,
                   seed=args.seed, asr=args.asr, resamples=args.bootstrap, level=args.ci, threads=args.threads,
                   metrics=[m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None)
    progress = lambda msg: print(f"[eval] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    _threads(args.threads)
    synthesizers = None
    if args.target:
        from ..eval.synthesis import make_synthesizers

        synthesizers, opts.describe = make_synthesizers(args, progress)
    result = evaluate(opts, synthesizers, progress)
    from ..eval.report import table

    print(table(result), end="")
    print(f"wrote {args.output / 'eval.txt'}, {args.output / 'eval.json'}, {args.output / 'eval.png'}")
    return 0


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
