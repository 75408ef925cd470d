"""What samples during training cost, and that they change nothing else: the same tiny 2-rank LoRA run
(stock train.py under torchrun, CPU, gloo) with and without `cosyext: samples:`, side by side.

Printed per sampled checkpoint: seconds spent by rank 0 (applying the adapter, synthesis, metrics) and
the share of the training time since the previous checkpoint; once: building upstream's CosyVoice2
(at the init checkpoint); and the whole run's wall time on vs off. Then the proof that samples do not
touch training: every TRAIN loss line (both ranks) and every adapter tensor of every checkpoint equal
bit for bit between the two runs (the sampler gives every global RNG back).

The model is tiny (random weights: a 1 M-parameter LLM, so an epoch is a second): the ratio to epoch
time is what a real run will NOT see; the absolute seconds per sentence are what the tiny model costs.
A real model's cost per sentence is in bench_synth.py / bench_eval.py (synthesis RTF, metric cost).

    python benchmarks/bench_samples.py --upstream ~/CosyVoice [--sentences 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

LOSS = re.compile(r"(TRAIN Batch \d+/\d+ loss \S+ .*rank \d)")


def setup(root: Path, upstream: Path, sentences: int, epochs: int):
    from cosyvoice_ext.tiny.api import detect_api
    from cosyvoice_ext.tiny.data import write_parquet_dataset, write_train_cv
    from cosyvoice_ext.tiny.inference import make_inference_dir, render_inference_config
    from cosyvoice_ext.tiny.qwen import LEXICON
    from cosyvoice_ext.tiny.workspace import Workspace

    pretrained = make_inference_dir(root / "pretrained", upstream=upstream)
    train_list, cv_list = write_train_cv(root / "data", 12, 4, shards=2, min_sec=1.6, max_sec=1.6)
    samples_cv = write_parquet_dataset(root / "samples_cv", sentences + 2, seed=5, min_sec=2.0, max_sec=2.5,
                                       utt_prefix="scv", text_fn=lambda i: " ".join(LEXICON[2 * i:2 * i + 2]))
    lora = "cosyext:\n  llm:\n    r: 4\n    alpha: 8\n    dropout: 0.1\n"  # dropout draws from the RNG samples must give back
    samples = (f"  samples:\n    pretrained: {pretrained.root}\n    cv_data: {samples_cv}\n    sentences: {sentences}\n"
               "    max_seconds: 120\n    metrics: [sim_campplus]\n")
    configs = {}
    for name, extra in (("off", lora), ("on", lora + samples)):
        text = render_inference_config(pretrained.qwen_dir, api=detect_api(upstream), max_epoch=epochs, lr=0.01,
                                       max_frames_in_batch=400, extra=extra)
        configs[name] = root / f"{name}.yaml"
        configs[name].write_text(text, encoding="utf-8")
    return {name: Workspace(root=root, qwen_dir=pretrained.qwen_dir, config=c, train_list=train_list, cv_list=cv_list,
                            llm_ckpt=pretrained.path("llm.pt"), flow_ckpt=pretrained.path("flow.pt"))
            for name, c in configs.items()}


def train(ws, upstream: Path, exp: Path) -> tuple[float, str]:
    from cosyvoice_ext.tiny.workspace import train_command, train_env

    t = time.perf_counter()
    res = subprocess.run(train_command(ws, upstream, "llm", exp, nproc=2, checkpoint=ws.llm_ckpt),
                         env=train_env(upstream), capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t
    log = res.stdout + res.stderr
    if res.returncode != 0:
        sys.exit(f"training failed ({exp}):\n{log[-4000:]}")
    return wall, log


def same_checkpoints(a: Path, b: Path) -> tuple[int, list[str]]:
    import torch

    names = sorted(p.name for p in a.glob("*.pt"))
    differ = []
    for name in names:
        x, y = (torch.load(d / name, weights_only=True) for d in (a, b))
        for part in ("lora", "modules_to_save"):
            for k in x.get(part, {}):
                if not torch.equal(x[part][k], y[part][k]):
                    differ.append(f"{name}:{part}.{k}")
    return len(names), differ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", type=Path, required=True, help="a patched upstream tree (cosyext vendor + apply-patches)")
    ap.add_argument("--sentences", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    from cosyvoice_ext.samples import read_rows

    with tempfile.TemporaryDirectory(prefix="bench-samples-") as tmp:
        root = Path(tmp)
        ws = setup(root, args.upstream.resolve(), args.sentences, args.epochs)
        walls, logs = {}, {}
        for name in ("off", "on"):  # side by side, one after the other, same data and config
            walls[name], logs[name] = train(ws[name], args.upstream.resolve(), root / f"exp_{name}")
        rows = read_rows(root / "exp_on")
        build = re.search(r"upstream CosyVoice2 ready in ([\d.]+) s", logs["on"])
        print(f"tiny CosyVoice2 LoRA (llm), 2 ranks CPU, {args.epochs} epochs, {args.sentences} sentence(s) per "
              f"checkpoint, sim_campplus; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
        print(f"build upstream's CosyVoice2 on rank 0 (once, at init): {build.group(1) if build else '?'} s")
        print(f"{'checkpoint':18} {'load s':>7} {'synth s':>8} {'metric s':>9} {'total s':>8} {'train s before':>15} "
              f"{'overhead':>9} {'audio s/sentence':>17}")
        for r in rows:
            sec = r["seconds"]
            audio = [u["seconds"] for u in r["utterances"].values()]
            since = r["seconds_since_previous_checkpoint"]
            print(f"{r['name']:18} {sec['load']:7.3f} {sec['synthesis']:8.2f} {sec['metrics']:9.3f} {sec['total']:8.2f} "
                  f"{since if since is not None else float('nan'):15.2f} "
                  f"{(r['overhead'] or float('nan')):9.1%} {sum(audio) / len(audio):17.2f}")
        print(f"whole run wall time: off {walls['off']:.1f} s, on {walls['on']:.1f} s "
              f"(ratio {walls['on'] / walls['off']:.2f})")
        losses = {n: sorted(LOSS.findall(logs[n])) for n in logs}  # the ranks' lines interleave differently
        n, differ = same_checkpoints(root / "exp_off", root / "exp_on")
        same = losses["on"] == losses["off"] and losses["on"] and not differ
        print(f"training unchanged by samples: {len(losses['on'])} TRAIN loss lines "
              f"{'equal' if losses['on'] == losses['off'] else 'DIFFER'}; adapter tensors of {n} checkpoints "
              f"{'equal' if not differ else 'DIFFER: ' + ', '.join(differ[:3])}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
