"""`cosyext export`: merge LoRA training checkpoints into a stock llm.pt / flow.pt."""

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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..lora.export import add_upstream_to_path, export

    add_upstream_to_path(args.upstream)
    export(model=args.model, config=args.config, out=args.output, base=args.base, checkpoint=args.checkpoint,
           run_dir=args.run, average_n=args.average, val_best=args.val_best,
           qwen_pretrain_path=args.qwen_pretrain_path, progress=lambda msg: print(msg, file=sys.stderr))
    return 0
