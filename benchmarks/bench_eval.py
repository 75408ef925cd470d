"""What `cosyext eval` costs per utterance on CPU: each metric's scoring, and the synthesis of one utterance
by one system, measured side by side in one run.

Metrics (each: setup once, one warm-up clip reported as 'first', then the mean over --clips clips):

- sim_campplus: the fbank front end + campplus.onnx. The real campplus.onnx (from a downloaded
  CosyVoice dir) is used when --campplus names it; otherwise the test suite's stand-in ONNX, whose cost
  is the fbank and a tiny network (the real CAM++ network is not measured then; the table says which).
- sim_resemblyzer: resemblyzer's GE2E encoder (weights in its wheel), real.
- dnsmos: DNSMOS P.835 + P.808 (ONNX in the speechmos wheel), real. A clip is tiled to 9.01 s windows
  and hopped by 1 s, so its cost depends on its length: shorter clips tile to more windows.
- wer: openai-whisper, greedy, on random weights built here (cosyvoice_ext.eval.tiny): 'tiny' (the
  tests' few-MB model) and real shapes ('base', 'small'; 'large-v3' with --whisper). Whisper encodes a
  padded 30 s window whatever the clip's length, then decodes one step per token; 'tokens' is the
  mean number of tokens its decoder produced per clip (a random decoder may run to its limit, 224
  for the real shapes, where a real model writes a sentence's worth).

The clip is real speech: upstream's asset/zero_shot_prompt.wav (3.5 s) from the --upstream tree.

Synthesis: one utterance ('ko be do', 3 words of the tiny data's language) by the tiny CosyVoice2
and CosyVoice3 inference dirs of the test suite (random weights), zero-shot from a tiny recording, as
`cosyext eval` runs it (cosyvoice_ext.eval.synthesis.System: upstream's own class); load once, one
warm-up utterance, then --clips utterances with seeds 1..N. A random LLM's length varies with the seed:
the mean audio length is reported with the time, and RTF = synthesis s / audio s.

    python benchmarks/bench_eval.py --upstream ~/CosyVoice [--threads 1] [--clips 5] [--whisper tiny,base,small]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_metric(metric, context, clip, n: int, setup_s: float | None = None) -> dict:
    """`setup_s`: the metric was set up already, in that many seconds."""
    from cosyvoice_ext.eval import Sample

    if setup_s is None:
        _, setup_s = _timed(lambda: metric.setup(context))
    sample = Sample("u", "hello world this is a test", "en", "tuned", clip)
    first, first_s = _timed(lambda: metric.score(sample))
    times, last = [], first
    for _ in range(n):
        last, t = _timed(lambda: metric.score(sample))
        times.append(t)
    return {"setup_s": setup_s, "first_s": first_s, "per_clip_s": float(np.mean(times)), "score": last}


def count_decoded(model) -> list[int]:
    """Tokens the decoder produced per `decode` call (transcribe may drop a window's text as 'no speech')."""
    counts: list[int] = []
    original = model.decode

    def decode(mel, options):
        res = original(mel, options)
        counts.extend(len(r.tokens) for r in (res if isinstance(res, list) else [res]))
        return res

    model.decode = decode
    return counts


def metrics(args, work: Path, clip) -> list[dict]:
    from cosyvoice_ext.eval import Context
    from cosyvoice_ext.eval.asr import ErrorRate
    from cosyvoice_ext.eval.mos import Dnsmos
    from cosyvoice_ext.eval.speaker import CampplusSimilarity, ResemblyzerSimilarity
    from cosyvoice_ext.eval.tiny import make_whisper_checkpoint
    from cosyvoice_ext.tiny.standin import make_pretrained_standin

    if args.campplus:
        pretrained = work / "campplus-real"
        pretrained.mkdir(exist_ok=True)
        link = pretrained / "campplus.onnx"
        if not link.exists():
            link.symlink_to(Path(args.campplus).resolve())
        campplus = "campplus.onnx (real, --campplus)"
    else:
        pretrained = make_pretrained_standin(work / "standin")
        campplus = "stand-in campplus.onnx (real fbank, tiny net)"
    rows = []
    plain = [("sim_campplus", campplus, CampplusSimilarity()),
             ("sim_resemblyzer", "resemblyzer GE2E (wheel)", ResemblyzerSimilarity()),
             ("dnsmos", "DNSMOS P.835 + P.808 (speechmos wheel)", Dnsmos())]
    for name, what, metric in plain:
        ctx = Context(references=[clip], texts=[("hello world", "en")], pretrained=pretrained, threads=args.threads)
        r = bench_metric(metric, ctx, clip, args.clips)
        rows.append({"metric": name, "model": what, **r, "tokens": None})
        print(f"[bench] {name} done", file=sys.stderr, flush=True)
    for shape in [s.strip() for s in args.whisper.split(",") if s.strip()]:
        ckpt, build_s = _timed(lambda: make_whisper_checkpoint(work / f"whisper-{shape}.pt", shape))
        metric = ErrorRate("wer", "en")
        ctx = Context(references=[clip], texts=[("hello world", "en")], asr=str(ckpt), threads=args.threads)
        _, setup_s = _timed(lambda: metric.setup(ctx))
        counts = count_decoded(metric.model)
        r = bench_metric(metric, ctx, clip, args.clips, setup_s)
        params = sum(p.numel() for p in metric.model.parameters()) / 1e6
        tokens = int(np.mean(counts))
        rows.append({"metric": "wer", "model": f"Whisper {shape} shape, random ({params:.0f}M)", **r, "tokens": tokens})
        del metric, ctx
        ckpt.unlink()
        print(f"[bench] whisper {shape} done (checkpoint built in {build_s:.1f} s)", file=sys.stderr, flush=True)
    return rows


def synthesis(args, work: Path, tree: Path) -> list[dict]:
    from cosyvoice_ext.eval.data import Utterance
    from cosyvoice_ext.eval.synthesis import Prompt, System
    from cosyvoice_ext.synth import ModelSource, loader
    from cosyvoice_ext.tiny.data import write_recordings
    from cosyvoice_ext.tiny.inference import make_inference_dir

    loader.import_tree(loader.verify(tree))
    rec = sorted((write_recordings(work / "rec", 1, seed=0, min_sec=2.0, max_sec=2.0) / "voice").glob("*.wav"))[0]
    prompt = Prompt(rec, rec.with_suffix(".txt").read_text().strip(), "prompt")
    u = Utterance("u", "voice", "ko be do", b"")
    rows = []
    for fam in ("cosyvoice2", "cosyvoice3"):
        root = work / f"tiny-{fam}"
        if not root.exists():
            make_inference_dir(root, family=fam, upstream=tree, speakers=())
        system = System("base", tree, ModelSource.pretrained(root))
        _, load_s = _timed(system.load)
        _, first_s = _timed(lambda: system(u, 0, prompt))
        times, audio = [], []
        for seed in range(1, args.clips + 1):
            clip, t = _timed(lambda: system(u, seed, prompt))
            times.append(t)
            audio.append(clip.seconds)
        system.close()
        rows.append({"family": fam, "load_s": load_s, "first_s": first_s, "per_utt_s": float(np.mean(times)),
                     "audio_s": float(np.mean(audio)), "rtf": float(np.sum(times) / np.sum(audio))})
        print(f"[bench] synthesis {fam} done", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", type=Path, default=os.environ.get("COSYEXT_UPSTREAM"),
                    help="upstream tree at ace7c47 (CosyVoice2 + CosyVoice3); default $COSYEXT_UPSTREAM")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clips", type=int, default=5, help="timed clips/utterances per row after the warm-up (default 5)")
    ap.add_argument("--whisper", default="tiny,base,small", help="Whisper shapes: tiny, base, small, large-v3")
    ap.add_argument("--campplus", type=Path, help="a real campplus.onnx (from a downloaded CosyVoice model dir)")
    ap.add_argument("--no-synthesis", action="store_true", help="metrics only")
    args = ap.parse_args()
    if args.upstream is None:
        ap.error("--upstream DIR (or $COSYEXT_UPSTREAM) is required (its asset/zero_shot_prompt.wav is the clip)")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from cosyvoice_ext.eval import Clip

    tree = Path(args.upstream).resolve()
    clip = Clip.load(tree / "asset" / "zero_shot_prompt.wav")
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        work = Path(tmp)
        metric_rows = metrics(args, work, clip)
        synth_rows = [] if args.no_synthesis else synthesis(args, work, tree)

    print(f"cosyext eval cost on CPU, {args.threads} thread(s), torch {torch.__version__}; clip: asset/zero_shot_prompt.wav "
          f"({clip.seconds:.1f} s of real speech); per clip = mean of {args.clips} after one warm-up ('first')")
    print(f"{'metric':<16} {'model':<46} {'setup s':>7} {'first s':>7} {'per clip s':>10} {'tokens':>6}")
    for r in metric_rows:
        tokens = "-" if r["tokens"] is None else str(r["tokens"])
        print(f"{r['metric']:<16} {r['model']:<46} {r['setup_s']:>7.2f} {r['first_s']:>7.2f} {r['per_clip_s']:>10.3f} "
              f"{tokens:>6}")
    if synth_rows:
        print(f"\nsynthesis per utterance ('ko be do', zero-shot, tiny random models; mean of {args.clips} seeds after "
              "one warm-up)")
        print(f"{'model':<16} {'load s':>6} {'first s':>7} {'per utt s':>9} {'audio s':>7} {'RTF':>5}")
        for r in synth_rows:
            print(f"tiny {r['family']:<11} {r['load_s']:>6.1f} {r['first_s']:>7.2f} {r['per_utt_s']:>9.2f} "
                  f"{r['audio_s']:>7.2f} {r['rtf']:>5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
