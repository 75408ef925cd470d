"""`cosyext plot`: TRAIN and CV loss curves of one or more training runs, as PNG or CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  cosyext plot exp/llm -o loss.png
  cosyext plot tensorboard/llm/torch_ddp tensorboard_r32/llm/torch_ddp --per epoch -o compare.png
  cosyext plot exp/llm --format csv -o loss.csv        # or -o - for stdout
  cosyext plot exp/llm --metric acc -o acc.png

RUN_DIR is train.py's --tensorboard_dir or any directory above it; every directory below holding
event files is a run (labelled by its path). Per step: each optimizer step's TRAIN value and each
CV evaluation. Per epoch: TRAIN averaged over the epoch, CV's last evaluation in the epoch.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="TRAIN/CV loss curves from upstream's TensorBoard logs (PNG or CSV)",
        description="Plot TRAIN and CV curves from the TensorBoard event files upstream's train.py writes; "
        "several runs are overlaid, one colour each.\n\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", type=Path, help="tensorboard dir of a run, or above it")
    p.add_argument("-o", "--output", metavar="FILE", default="loss.png",
                   help="output file (default loss.png; '-' writes CSV to stdout)")
    p.add_argument("--format", choices=["png", "csv"], help="default: from the output's suffix (.csv), else png")
    p.add_argument("--per", choices=["step", "epoch"], default="step", help="x axis (default step)")
    p.add_argument("--metric", default="loss", help="scalar after TRAIN/ and CV/ (default loss; llm also logs acc)")
    p.add_argument("--title", help="plot title")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..plot import plot

    fmt = args.format or ("csv" if args.output == "-" or str(args.output).lower().endswith(".csv") else "png")
    if args.output == "-":
        if fmt != "csv":
            from ..errors import UsageError

            raise UsageError("only CSV can go to stdout", hint="cosyext plot RUN_DIR --format csv -o -")
        sys.stdout.write(plot(args.runs, None, fmt="csv", per=args.per, metric=args.metric))
        return 0
    out = plot(args.runs, Path(args.output), fmt=fmt, per=args.per, metric=args.metric, title=args.title)
    print(f"wrote {out}")
    return 0
