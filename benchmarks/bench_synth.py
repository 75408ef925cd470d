"""Synthesis speed of `cosyext synth` on CPU: real-time factor (synthesis seconds / audio seconds)
offline and streaming, and the streaming first-chunk latency, through cosyvoice_ext.synth (upstream's
own CosyVoice2/CosyVoice3 classes from a verified tree).

Models, all random weights built here (nothing downloaded):

- tiny-cv2, tiny-cv3: the test suite's tiny inference dirs (cosyvoice_ext.tiny.inference)
- real-cv2: CosyVoice2-0.5B's shapes: upstream's examples/libritts/cosyvoice2/conf/cosyvoice2.yaml (the
  flow and HiFT of the release) with a random Qwen2 of the release's dims (hidden 896, 24 layers, 14
  heads, 2 KV heads, FFN 4864, vocabulary 151936)
- real-cv3: the same for Fun-CosyVoice3-0.5B (examples/libritts/cosyvoice3/conf/cosyvoice3.yaml: DiT flow,
  causal HiFT)

The voice is the registered speaker (prompt-free `inference_sft`): the front end's ONNX models are
stand-ins, so a zero-shot prompt would time those, not the release's. A random LLM never emits its end
token, so every utterance runs to upstream's cap (20 speech tokens per text token): the audio length
is the same for every run of a model, and the RTF compares like with like. Each model runs in its own
child process (one upstream tree, one model in memory at a time); per model: one offline call to warm
up (reported as 'first'), then one offline and one streaming call, all with seed 0.

    python benchmarks/bench_synth.py --upstream ~/CosyVoice [--models tiny-cv2,real-cv2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("tiny-cv2", "tiny-cv3", "real-cv2", "real-cv3")
QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
                 rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu")


def build(model: str, dest: Path, tree: Path) -> Path:
    """The model dir for `model` under `dest` (built once; reused when complete)."""
    from cosyvoice_ext import family as families
    from cosyvoice_ext.tiny.inference import build_weights, make_inference_dir, write_spk2info

    fam = families.get("cosyvoice2" if model.endswith("cv2") else "cosyvoice3")
    root = dest / model
    if (root / ".complete").exists():
        return root
    if root.exists():
        import shutil

        shutil.rmtree(root)
    if model.startswith("tiny"):
        make_inference_dir(root, family=fam, upstream=tree, speakers=("bench",))
    else:
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        from cosyvoice_ext.tiny.qwen import make_tiny_qwen
        from cosyvoice_ext.tiny.standin import make_pretrained_standin

        qwen = make_tiny_qwen(root / "CosyVoice-BlankEN", family=fam, qwen2_ids=fam is families.COSYVOICE3)
        torch.manual_seed(0)
        Qwen2ForCausalLM(Qwen2Config(**QWEN2_05B)).save_pretrained(qwen)  # the tokenizer files stay
        recipe = tree / "examples" / "libritts" / fam.name / "conf" / fam.config_name
        text = recipe.read_text(encoding="utf-8").replace("qwen_pretrain_path: ''", f"qwen_pretrain_path: '{qwen}'")
        make_pretrained_standin(root, family=fam, config_text=text)
        build_weights(root / fam.config_name, root, upstream=tree)
        write_spk2info(root / "spk2info.pt", ("bench",))
    (root / ".complete").write_text("")
    return root


def child(model: str, tree: Path, work: Path, text: str, threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from cosyvoice_ext.synth import ModelSource, Speaker, Synthesizer, loader

    loader.import_tree(loader.verify(tree))
    t = time.perf_counter()
    root = build(model, work, tree)
    built = time.perf_counter() - t
    t = time.perf_counter()
    syn = Synthesizer(tree, ModelSource.serve_dir(root))
    load = time.perf_counter() - t
    params = {m: sum(p.numel() for p in getattr(syn._cv.model, m).parameters()) for m in ("llm", "flow", "hift")}
    voice = Speaker("bench")

    def timed(stream: bool) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        first, chunks = None, []
        for chunk in syn.chunks(text, voice, seed=0, stream=stream):
            if first is None:
                first = time.perf_counter() - t0
            chunks.append(chunk)
        spent = time.perf_counter() - t0
        return spent, len(np.concatenate(chunks)) / syn.sample_rate, first

    warm = timed(False)
    offline = timed(False)
    stream = timed(True)
    return {"model": model, "family": syn.family.inference_class, "params": params, "build_s": built, "load_s": load,
            "first_s": warm[0], "audio_s": offline[1], "offline_s": offline[0], "stream_s": stream[0],
            "stream_audio_s": stream[1], "first_chunk_s": stream[2]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", type=Path, default=os.environ.get("COSYEXT_UPSTREAM"),
                    help="upstream tree at ace7c47 (CosyVoice2 + CosyVoice3); default $COSYEXT_UPSTREAM")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--work", type=Path, help="where the model dirs are built (default: a temp dir); reused")
    ap.add_argument("--text", default="hello world", help="the utterance (default 'hello world')")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.upstream is None:
        ap.error("--upstream DIR (or $COSYEXT_UPSTREAM) is required")
    tree = Path(args.upstream).resolve()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, tree, args.work, args.text, args.threads)), flush=True)
        return 0
    load_before = os.getloadavg()[0]
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_synth_"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        if model not in MODELS:
            ap.error(f"unknown model {model!r}")
        res = subprocess.run([sys.executable, __file__, "--child", model, "--upstream", str(tree), "--work", str(work),
                              "--text", args.text, "--threads", str(args.threads)], env=env, capture_output=True,
                             text=True)
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if res.returncode != 0 or line is None:
            print(f"{model}: failed\n{res.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[len("RESULT "):]))
        print(f"[bench] {model} done", file=sys.stderr, flush=True)
    print(f"cosyext synth on CPU ({os.cpu_count()} cores, load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after), {args.threads} thread(s), text {args.text!r}, registered speaker, seed 0; "
          f"RTF = synthesis s / audio s")
    print(f"{'model':<9} {'class':<10} {'params llm/flow/hift (M)':<25} {'load s':>6} {'audio s':>7} {'first RTF':>9} "
          f"{'offline RTF':>11} {'stream RTF':>10} {'1st chunk s':>11}")
    for r in rows:
        p = r["params"]
        sizes = "/".join(f"{p[m] / 1e6:.1f}" for m in ("llm", "flow", "hift"))
        print(f"{r['model']:<9} {r['family']:<10} {sizes:<25} {r['load_s']:>6.1f} {r['audio_s']:>7.2f} "
              f"{r['first_s'] / r['audio_s']:>9.2f} {r['offline_s'] / r['audio_s']:>11.2f} "
              f"{r['stream_s'] / r['stream_audio_s']:>10.2f} {r['first_chunk_s']:>11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
