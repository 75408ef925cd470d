"""`cosyext demo`: the whole patch-and-train loop on an embedded tiny default, on CPU.

Vendors upstream (offline from PyPI unless told otherwise), applies the patch series, generates a
tiny Qwen2 model, tiny parquet data and base checkpoints, then runs the stock train.py under
torchrun for the LLM and the flow and prints the loss lines it logged.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

LOSS = re.compile(r"(TRAIN Batch \S+ loss \S+|Epoch \d+ Step \d+ CV info.*)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="vendor, patch and train a tiny model with torchrun on CPU (a few minutes)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  cosyext demo --workdir /tmp/cosyext-demo\n"
                       "  cosyext demo --workdir /tmp/d --source github --models llm")
    p.add_argument("--workdir", type=Path, default=Path("cosyext-demo"), help="everything is written here")
    p.add_argument("--source", default="pypi", help="where upstream comes from (see 'cosyext vendor --help')")
    p.add_argument("--models", default="llm,flow", help="comma-separated: llm, flow")
    p.add_argument("--epochs", type=int, default=2)
    p.set_defaults(func=run)


def _step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def run(args: argparse.Namespace) -> int:
    from .. import lockfile, patching, sources
    from ..errors import EnvironmentProblem, UsageError
    from ..tiny.workspace import make_workspace, train_command, train_env

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or set(models) - {"llm", "flow"}:
        raise UsageError(f"--models takes llm and/or flow, got {args.models!r}", hint="cosyext demo --models llm,flow")
    work = args.workdir.expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    lock = lockfile.load()
    upstream = work / "CosyVoice"
    if upstream.exists():
        _step(f"upstream already at {upstream}")
    else:
        _step(f"vendor upstream {lock.upstream_commit[:12]} from {args.source}")
        print(sources.vendor(upstream, args.source, lock))
    _step("apply the patch series")
    print(patching.apply_series(upstream, lock, patching.read_series()).message)
    _step("generate a tiny Qwen2 model, tiny parquet data and base checkpoints")
    ws = make_workspace(work / "tiny", max_epoch=args.epochs, upstream=upstream)
    summary = []
    for model in models:
        model_dir = work / "exp" / model
        cmd = train_command(ws, upstream, model, model_dir, checkpoint=getattr(ws, f"{model}_ckpt"))
        _step(f"train {model} with the stock train.py: torchrun --nproc_per_node=1 {upstream}/cosyvoice/bin/train.py ...")
        start = time.monotonic()
        log_path = work / f"train_{model}.log"
        with log_path.open("w") as log, subprocess.Popen(cmd, env=train_env(upstream), stdout=subprocess.PIPE,
                                                         stderr=subprocess.STDOUT, text=True) as proc:
            losses = []
            for line in proc.stdout:
                log.write(line)
                m = LOSS.search(line)
                if m and " INFO " in line:
                    print("   ", m.group(1).strip(), flush=True)
                    if m.group(1).startswith("TRAIN"):
                        losses.append(float(m.group(1).split()[-1]))
        if proc.returncode != 0:
            raise EnvironmentProblem(f"training {model} failed (exit {proc.returncode}); full log: {log_path}",
                                     hint=f"tail -50 {log_path}")
        ckpts = sorted(model_dir.glob("epoch_*_whole.pt"))
        summary.append((model, len(losses), losses[0] if losses else float("nan"),
                        losses[-1] if losses else float("nan"), time.monotonic() - start, ckpts[-1] if ckpts else None))
    print()
    print(f"{'model':6} {'loss lines':>10} {'first':>8} {'last':>8} {'seconds':>8}  checkpoint")
    for model, n, first, last, secs, ckpt in summary:
        print(f"{model:6} {n:>10} {first:>8.3f} {last:>8.3f} {secs:>8.1f}  {ckpt}")
    print(f"\nlogs and outputs under {work}", file=sys.stderr)
    return 0
