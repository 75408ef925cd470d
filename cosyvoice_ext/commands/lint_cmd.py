"""`cosyext lint` (check configs before a GPU run) and `cosyext rule` (explain a lint rule)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORMATS = ("concise", "json", "github", "sarif")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lint",
        help="check CosyVoice training configs (and optionally the data) without running them",
        description="Read HyperPyYAML training configs WITHOUT executing them and report problems that would\n"
        "otherwise show up hours into a run. With --data, replay upstream's data pipeline on header-level\n"
        "lengths: samples kept/dropped, batches and optimizer steps per epoch, warmup vs run, oversize\n"
        "utterances, the empty-first-batch trap.\n\n"
        "exit codes: 0 no failing findings, 1 failing findings (errors; warnings too with --strict),\n"
        "            2 unreadable input or usage error\n\n"
        "The model family (CosyVoice2/CosyVoice3) comes from the config's classes; the upstream train.py\n"
        "it runs under from --upstream DIR (read, never imported) or the config itself.\n\n"
        "examples:\n"
        "  cosyext lint conf/ext.yaml\n"
        "  cosyext lint conf/ext.yaml --data data/train.list --model llm --qwen-pretrain-path pretrained/CosyVoice-BlankEN\n"
        "  cosyext lint conf/cosyvoice3.yaml --upstream ~/CosyVoice --data data/train.list --onnx-path ''\n"
        "  cosyext lint conf/*.yaml --select CX1,CX2 --ignore CX103 --format github",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("configs", nargs="+", metavar="CONFIG", type=Path, help="HyperPyYAML training config(s)")
    p.add_argument("--data", type=Path, metavar="LIST", help="data.list of parquet shards (data-aware mode)")
    p.add_argument("--cv-data", type=Path, metavar="LIST", dest="cv_data",
                   help="data mode: the data.list train.py gets as --cv_data (its CV pass after each epoch is "
                        "replayed too)")
    p.add_argument("--model", choices=["llm", "flow", "hifigan"], help="the model train.py will train (--model)")
    p.add_argument("--gpu-memory", type=float, metavar="GB", help="memory per GPU in GiB, for CX106")
    p.add_argument("--train-engine", choices=["torch_ddp", "deepspeed"], help="train.py --train_engine (CX203)")
    p.add_argument("--qwen-pretrain-path", metavar="DIR",
                   help="what you pass to train.py as --qwen_pretrain_path (it overrides the config key)")
    p.add_argument("--upstream", type=Path, metavar="DIR",
                   help="the upstream CosyVoice tree train.py runs from (its sources are read, never imported)")
    p.add_argument("--onnx-path", metavar="''|DIR", dest="onnx_path",
                   help="what you pass to train.py as --onnx_path: '' = the data's precomputed speech tokens and "
                        "embeddings, DIR = online extraction with DIR's ONNX files (CX506)")
    p.add_argument("--select", metavar="CODES", action="append",
                   help="only these codes/prefixes, comma-separated (ALL = everything); overrides cosyext.lint.select")
    p.add_argument("--ignore", metavar="CODES", action="append", default=[], help="skip these codes/prefixes")
    p.add_argument("--format", choices=FORMATS, default="concise", help="output format (default concise)")
    p.add_argument("--statistics", action="store_true", help="count findings per rule")
    p.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    p.add_argument("--exit-zero", action="store_true", help="exit 0 even with findings (2 still means bad input)")
    p.add_argument("--epochs", type=int, metavar="N", help="data mode: epochs to replay (default train_conf.max_epoch)")
    p.add_argument("--world-size", type=int, default=1, metavar="N", help="data mode: number of GPUs/ranks")
    p.add_argument("--num-workers", type=int, default=0, metavar="N", help="data mode: train.py --num_workers")
    p.add_argument("--no-cache", action="store_true", help="data mode: do not read or write the length index cache")
    p.set_defaults(func=run)

    r = sub.add_parser(
        "rule",
        help="explain a lint rule (what, why, example, fix)",
        description="Explain a lint rule, or list them all.\n\nexamples:\n  cosyext rule CX101\n"
        "  cosyext rule --list --format markdown",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("code", nargs="?", help="rule code, e.g. CX101")
    r.add_argument("--list", action="store_true", help="list every registered rule")
    r.add_argument("--format", choices=["text", "markdown"], default="text")
    r.set_defaults(func=run_rule)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..lint.engine import Options, lint_paths
    from ..lint.formats import render
    from ..lint.registry import collect

    if args.data is not None and not args.data.is_file():
        raise UsageError(f"data list {args.data} does not exist", hint="pass the data.list your train.py uses (--train_data)")
    if args.cv_data is not None and (args.data is None or not args.cv_data.is_file()):
        raise UsageError(f"--cv-data {args.cv_data}: " + ("needs --data" if args.data is None else "no such file"),
                         hint="pass the data.lists your train.py gets as --train_data (--data) and --cv_data")
    for n, v in (("--world-size", args.world_size), ("--num-workers", args.num_workers), ("--epochs", args.epochs)):
        if v is not None and v < (0 if n == "--num-workers" else 1):
            raise UsageError(f"{n} must be positive, got {v}", hint=f"cosyext lint --help")
    if args.gpu_memory is not None and args.gpu_memory <= 0:
        raise UsageError(f"--gpu-memory must be > 0 GiB, got {args.gpu_memory:g}", hint="e.g. --gpu-memory 16")
    upstream = None
    if args.upstream is not None:
        from ..lint.target import read_upstream

        upstream = read_upstream(args.upstream)  # a usage error (exit 2) when DIR is not a tree
    registry = collect()
    opts = Options(select=args.select, ignore=args.ignore, model=args.model, gpu_memory=args.gpu_memory,
                   train_engine=args.train_engine, data=args.data, cv_data=args.cv_data,
                   qwen_pretrain_path=args.qwen_pretrain_path,
                   epochs=args.epochs, world_size=args.world_size, num_workers=args.num_workers,
                   use_cache=not args.no_cache, upstream=upstream, onnx_path=args.onnx_path)
    results = lint_paths(args.configs, registry, opts)
    text = render(results, registry, args.format, args.statistics)
    if text:
        print(text)
    if any(r.internal_errors for r in results):
        return 2
    failing = {"error", "warning"} if args.strict else {"error"}
    has_fail = any(f.severity in failing for r in results for f in r.findings)
    return 0 if args.exit_zero or not has_fail else 1


def run_rule(args: argparse.Namespace) -> int:
    import difflib

    from ..errors import UsageError
    from ..lint.registry import collect

    registry = collect()
    if args.list or not args.code:
        if args.format == "markdown":
            from ..lint.docs import table

            sys.stdout.write(table(registry.sorted()))
        else:
            for rule in registry.sorted():
                print(f"{rule.code}  {rule.name:28s} {rule.severity:8s} {rule.summary}")
        return 0
    rule = registry.get(args.code)
    if rule is None:
        close = difflib.get_close_matches(args.code.upper(), list(registry.rules), n=1, cutoff=0.6)
        raise UsageError(f"no lint rule {args.code}" + (f"; did you mean {close[0]}?" if close else ""),
                         hint="cosyext rule --list")
    out = [f"{rule.code} {rule.name} ({rule.severity}; from plugin '{registry.origin[rule.code]}')", "",
           f"What: {rule.summary}"]
    if rule.needs_data:
        out.append("Runs only in data-aware mode (--data).")
    if rule.doc:
        out += ["", "Why:", *("    " + line if line else "" for line in rule.doc.splitlines())]
    if rule.example:
        out += ["", "Example (flagged):", *("    " + line for line in rule.example.splitlines())]
    if rule.fix:
        out += ["", f"Fix: {rule.fix}"]
    out += ["", f"Silence one line with `# cosyext: disable={rule.code}`, or everywhere with --ignore {rule.code}."]
    sys.stdout.write("\n".join(out) + "\n")
    return 0
