"""`cosyext export`: merge LoRA training checkpoints into a stock llm.pt / flow.pt (the arguments only;
the work is in :mod:`cosyvoice_ext.lora.export`)."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """\
examples:
  cosyext export --model llm --run exp/llm --base pretrained/llm.pt --config ext.yaml \\
      --upstream ~/CosyVoice --qwen-pretrain-path pretrained/CosyVoice-BlankEN -o out/
  cosyext export --model flow --run exp/flow --base pretrained/flow.pt --config ext.yaml \\
      --average 3 --val-best -o out/flow.pt
  cosyext export --model llm --checkpoint exp/llm/epoch_4_whole.pt --base pretrained/llm.pt --config ext.yaml -o llm.pt
  # a directory CosyVoice2(MODEL_DIR) serves: run once per model, the speaker registered for prompt-free use
  cosyext export --model llm --run exp/llm --config ext.yaml --serve pretrained_models/CosyVoice2-0.5B \
      --speaker-data data/train/data.list --speaker-name my_voice -o serve/my_voice
  cosyext export --model flow --run exp/flow --config ext.yaml --serve pretrained_models/CosyVoice2-0.5B \
      --speaker-data data/train/data.list --speaker-name my_voice -o serve/my_voice
  # CosyVoice3: the same with a CosyVoice3 config and pretrained dir (an upstream tree at ace7c47 or later)
  cosyext export --model flow --run exp/flow --config cv3-lora.yaml --upstream ~/CosyVoice \
      --serve pretrained_models/Fun-CosyVoice3-0.5B -o serve/my_voice
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="merge LoRA checkpoints into a stock, strict-loadable llm.pt/flow.pt",
        description="Fold LoRA adapters into the base weights (optionally averaging the N best epochs by CV "
        "loss) and write a state dict that upstream loads with strict=True.\n\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, choices=["llm", "flow"], help="which model the checkpoints are of")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="DIR", help="training --model_dir holding epoch_N_whole.pt (default: the best checkpoint "
                     "recorded by early stopping in best.yaml, else the latest epoch)")
    src.add_argument("--checkpoint", metavar="FILE", help="one adapter or merged checkpoint")
    p.add_argument("--base", metavar="FILE", help="base checkpoint the adapter was trained on (default: the path "
                   "recorded in the adapter; its sha256 is checked either way)")
    p.add_argument("--config", required=True, metavar="YAML", help="the training config (builds the stock model)")
    p.add_argument("--qwen-pretrain-path", metavar="DIR", help="Qwen2 directory for the llm (as train.py's "
                   "--qwen_pretrain_path)")
    p.add_argument("--upstream", metavar="DIR", help="upstream CosyVoice tree to import (default: already importable)")
    p.add_argument("--average", type=int, default=1, metavar="N", help="average the merged weights of N epochs")
    p.add_argument("--val-best", action="store_true", help="with --average: the N epochs with the lowest CV loss "
                   "(from epoch_N_whole.yaml) instead of the N latest")
    p.add_argument("-o", "--output", required=True, metavar="FILE|DIR", help="output file, or directory for <model>.pt")
    serve = p.add_argument_group("serving directory (--serve)")
    serve.add_argument("--serve", metavar="PRETRAINED_DIR", help="make -o a model dir upstream inference loads "
                       "(CosyVoice2 or CosyVoice3, as the pretrained dir): the pretrained files linked, the merged "
                       "<model>.pt, the speaker in spk2info.pt")
    serve.add_argument("--copy", action="store_true", help="with --serve: copy pretrained files instead of linking")
    serve.add_argument("--speaker-data", metavar="LIST", help="with --serve: data.list whose spk_embedding registers "
                       "the speaker")
    serve.add_argument("--speaker", metavar="SPK", help="with --speaker-data: the speaker id in the data (default: "
                       "the only one)")
    serve.add_argument("--speaker-name", metavar="NAME", help="name for spk2info.pt and speaker_config.json "
                       "(default: the speaker id)")
    serve.add_argument("--description", default="", help="with --serve: description in speaker_config.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..lora.export import Request, run as export

    result = export(Request(
        model=args.model, config=args.config, output=args.output, run_dir=args.run, checkpoint=args.checkpoint,
        base=args.base, average=args.average, val_best=args.val_best, qwen_pretrain_path=args.qwen_pretrain_path,
        upstream=args.upstream, serve=args.serve, copy=args.copy, speaker_data=args.speaker_data,
        speaker=args.speaker, speaker_name=args.speaker_name, description=args.description),
        progress=lambda msg: print(msg, file=sys.stderr))
    if result.model_dir is not None:
        print(f"serve with: {result.inference_class}('{result.model_dir}')")
    return 0
