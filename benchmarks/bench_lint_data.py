"""Data-aware lint vs iterating upstream's Dataset: same batches, how much faster.

Generates N utterances (tiny generator, 1-8 s, 24 kHz WAV in parquet), a CosyVoice2-shaped config
with users' settings (shuffle 500, sort 500, max_frames_in_batch 400), then, in one run, side by side:
  upstream  - iterate cosyvoice.dataset.dataset.Dataset for one epoch (decode audio, fbank, ...)
  cold      - cosyext's analysis with no length index (pyarrow + WAV headers + tokenizer)
  warm      - the same with the cached length index (a repeat lint of unchanged data)
checks that batch membership is identical, and prints the speedup ratios.

usage: python benchmarks/bench_lint_data.py --upstream /path/to/CosyVoice [--utts 2000] [--repeat 3]
(--upstream: a CosyVoice tree, or any dir with cosyvoice/ and matcha/ importable; default $COSYEXT_UPSTREAM)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", default=os.environ.get("COSYEXT_UPSTREAM"), help="upstream CosyVoice root")
    ap.add_argument("--utts", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions of our side (median)")
    ap.add_argument("--workdir", type=Path, help="keep generated data here (default: a temp dir)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch threads for upstream's side (default 1, as in a DataLoader worker; more threads "
                         "oversubscribe small CPUs and slow upstream down by 10x, flattering the ratio)")
    args = ap.parse_args()
    if not args.upstream:
        ap.error("--upstream (or $COSYEXT_UPSTREAM) is required")
    root = Path(args.upstream)
    for p in (root / "third_party" / "Matcha-TTS", root):
        if p.is_dir():
            sys.path.insert(0, str(p))

    from cosyvoice_ext.lint.data_analysis import analyse
    from cosyvoice_ext.lint.document import Document
    from cosyvoice_ext.lint.engine import Options
    from cosyvoice_ext.tiny.config import load_tiny_config, write_tiny_config
    from cosyvoice_ext.tiny.data import write_parquet_dataset
    from cosyvoice_ext.tiny.qwen import make_tiny_qwen

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_lint_"))
    os.environ["COSYEXT_CACHE_DIR"] = str(work / "cache")
    t = time.perf_counter()
    qwen = make_tiny_qwen(work / "qwen")
    data = write_parquet_dataset(work / "data", args.utts, shards=args.shards, seed=0, min_sec=1.0, max_sec=8.0)
    cfg = write_tiny_config(work / "conf.yaml", qwen, max_epoch=1, max_frames_in_batch=400,
                            shuffle_size=500, sort_size=500)
    size = sum(Path(p).stat().st_size for p in data.read_text().split()) / 2**20
    print(f"generated {args.utts} utterances ({size:.0f} MiB parquet, {args.shards} shards) in "
          f"{time.perf_counter() - t:.1f} s under {work}")

    # upstream: the Dataset train.py builds, one epoch, seeded by the config's !apply:random.seed
    import torch
    from cosyvoice.dataset.dataset import Dataset

    torch.set_num_threads(args.torch_threads)
    conf = load_tiny_config(cfg, "llm")
    t = time.perf_counter()
    ds = Dataset(str(data), data_pipeline=conf["data_pipeline"], mode="train", shuffle=True, partition=True)
    ds.set_epoch(0)
    theirs = [sorted(b["utts"]) for b in ds]
    t_up = time.perf_counter() - t

    doc = Document.from_text(cfg.read_text(), cfg)

    def ours(use_cache: bool):
        t0 = time.perf_counter()
        a = analyse(doc, Options(data=data, model="llm", epochs=1, use_cache=use_cache), keep_batches=True)
        dt = time.perf_counter() - t0
        if a.error:
            raise SystemExit(f"analysis failed: {a.error}")
        return dt, a

    cold = []
    for _ in range(args.repeat):
        dt, a_cold = ours(use_cache=False)
        cold.append(dt)
    ours(use_cache=True)  # builds the index
    warm = []
    for _ in range(args.repeat):
        dt, a_warm = ours(use_cache=True)
        warm.append(dt)
    t_cold, t_warm = statistics.median(cold), statistics.median(warm)

    same = all([sorted(b) for b in a.batch_utts[0]] == theirs for a in (a_cold, a_warm))
    print(f"batches per epoch: upstream {len(theirs)}, cosyext {a_warm.epochs[0].batches}; "
          f"identical membership: {same}")
    print(f"upstream Dataset iteration: {t_up:8.3f} s   (torch threads {args.torch_threads})")
    print(f"cosyext lint, cold (no index):  {t_cold:8.3f} s   speedup {t_up / t_cold:6.1f}x")
    print(f"cosyext lint, warm (index):     {t_warm:8.3f} s   speedup {t_up / t_warm:6.1f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
