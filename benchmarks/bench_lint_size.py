"""Static lint time vs config size: linear now (it was quadratic in `!ref` resolution).

Generates configs of growing size from the tiny CosyVoice2 config plus filler stages that `!ref`
each other and the fixed params (the shape that made a 1 MB config take a minute), and times
`lint_document` (parse + every static rule) on each, in a fresh child process per measurement, in
one run. With --baseline REV (a git revision of this checkout, e.g. the commit before the fix) the
same sizes are also timed with that revision's lint package, side by side, up to --baseline-max-mb.

Prints seconds, seconds per MB, and the ratio of each size's time to the smallest size's time next
to the size ratio (linear: the two ratios match; quadratic: the time ratio is the size ratio squared).

usage: python benchmarks/bench_lint_size.py [--sizes 0.25,0.5,1,2,5,10] [--repeat 3]
                                            [--baseline 35f4d9e --baseline-max-mb 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Timed in a child (fresh interpreter, `tree` first on sys.path): rules registered straight from the
# built-in plugin module, so the measurement is lint itself, not plugin discovery.
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from cosyvoice_ext.lint import plugin
from cosyvoice_ext.lint.engine import Options, lint_document, read_config
from cosyvoice_ext.lint.registry import RuleRegistry
assert plugin.__file__.startswith(sys.argv[1]), plugin.__file__
reg = RuleRegistry()
for rule in plugin.all_rules():
    reg.add(rule, "lint_rules")
t = time.perf_counter()
res = lint_document(read_config(__import__("pathlib").Path(sys.argv[2])), reg, Options())
print(json.dumps({"seconds": time.perf_counter() - t, "findings": len(res.findings)}))
"""


def filler_config(base: str, target_bytes: int) -> str:
    """`base` plus `stage_i` processor blocks until the text has `target_bytes` bytes; each block
    refers to the previous one and to two fixed params (three `!ref` per block)."""
    parts, size, i = [base, "\n# generated filler\n"], len(base), 0
    while size < target_bytes:
        prev = f"stage_{i - 1}.max_length" if i else "sample_rate"
        block = (f"stage_{i}: !name:cosyvoice.dataset.processor.filter\n"
                 f"    max_length: !ref <{prev}>\n"
                 f"    min_length: !ref <token_frame_rate> * <token_mel_ratio>\n"
                 f"    note: 'filler text to reach the size of a large generated config {i}'\n")
        parts.append(block)
        size += len(block)
        i += 1
    return "".join(parts)


def time_lint(tree: Path, config: Path, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(config)], capture_output=True, text=True,
                             env=env, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    return statistics.median(runs)


def export_revision(rev: str, dest: Path) -> Path:
    """The lint package as it was at `rev` (git archive of cosyvoice_ext/), importable from `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "cosyvoice_ext"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.25,0.5,1,2,5,10", help="config sizes in MB, comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    ap.add_argument("--baseline", metavar="REV", help="also time this git revision's lint (side by side)")
    ap.add_argument("--baseline-max-mb", type=float, default=1.0, help="largest size timed with --baseline")
    args = ap.parse_args()
    sizes = [float(x) for x in args.sizes.split(",")]

    from cosyvoice_ext.tiny.config import render_tiny_config

    with tempfile.TemporaryDirectory(prefix="bench-lint-size-") as t:
        tmp = Path(t)
        base = render_tiny_config(tmp / "qwen")
        old_tree = export_revision(args.baseline, tmp / "old") if args.baseline else None
        rows = []
        for mb in sizes:
            cfg = tmp / f"config-{mb:g}MB.yaml"
            cfg.write_text(filler_config(base, int(mb * 1e6)), encoding="utf-8")
            real_mb = cfg.stat().st_size / 1e6
            new = time_lint(ROOT, cfg, args.repeat)
            old = (time_lint(old_tree, cfg, 1) if old_tree is not None and mb <= args.baseline_max_mb else None)
            rows.append((real_mb, new, old))
            print(f"measured {real_mb:6.2f} MB: {new:7.2f} s" + (f" (baseline {old:7.2f} s)" if old else ""),
                  file=sys.stderr, flush=True)

    mb0, new0, old0 = rows[0]
    print(f"\nstatic lint, median of {args.repeat} (baseline: 1 run){' vs ' + args.baseline if args.baseline else ''}")
    head = f"{'MB':>7} {'size x':>7} | {'now s':>7} {'s/MB':>6} {'time x':>7}"
    if args.baseline:
        head += f" | {'base s':>8} {'time x':>7} {'base/now':>8}"
    print(head)
    for mb, new, old in rows:
        line = f"{mb:7.2f} {mb / mb0:7.1f} | {new:7.2f} {new / mb:6.2f} {new / new0:7.1f}"
        if args.baseline:
            line += (f" | {old:8.2f} {old / old0:7.1f} {old / new:8.1f}" if old is not None and old0
                     else f" | {'-':>8} {'-':>7} {'-':>8}")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
