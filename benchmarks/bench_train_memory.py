"""Peak memory and step time of CosyVoice2-0.5B training at real shapes: full fine-tune vs LoRA, and the memory levers.

Builds the real-size models with random weights (nothing is downloaded): upstream's ``Qwen2LM``
around a Qwen2 at CosyVoice2-0.5B dims, and the flow at ``cosyvoice2.yaml`` dims. Each configuration
trains a few steps through the PATCHED upstream ``train_utils`` step functions (``batch_forward``,
``batch_backward``, ``update_parameter_and_lr``; optimizer from ``init_optimizer_and_scheduler``) on
identical synthetic batches shaped like upstream's ``padding`` output, in its own subprocess so its
peak is its own: on CPU the RSS high-water mark of the training steps (VmHWM, reset once the model,
optimizer and batch exist; the whole process's ``ru_maxrss`` is reported as ``process_peak_bytes``),
on a GPU ``torch.cuda.max_memory_allocated``.

Example (CPU, LoRA vs full at 400 and 2000 frames, ~5 min on 2 idle cores)::

    python -m cosyvoice_ext.cli vendor /tmp/bench-up --source pypi
    python -m cosyvoice_ext.cli apply-patches --upstream /tmp/bench-up
    python benchmarks/bench_train_memory.py --upstream /tmp/bench-up --only llm:full llm:lora --json out.json

Configuration names: ``MODEL:BASE[+LEVER...]`` with BASE ``full`` or ``lora`` (r=16; LLM targets
q,k,v,o,gate,up,down; flow targets the attention projections) and LEVERs ``ckpt`` (gradient
checkpointing), ``bf16``/``fp16`` (autocast), ``skip`` (skip unused logits), ``all`` (ckpt+bf16+skip).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

GIB = 1024 ** 3
REPO = Path(__file__).resolve().parents[1]

# Qwen2 inside CosyVoice2-0.5B (= Qwen2.5-0.5B dims; tied input/output embeddings).
QWEN2_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                 rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
                 sliding_window=None, hidden_act="silu")
SPEECH_TOKEN_SIZE = 6561
MEL_HZ = 50            # 24000 / 480: what max_frames_in_batch counts
TOKEN_HZ = 25          # speech tokens; token_mel_ratio 2
TEXT_TOKENS_PER_S = 3.5
LEVER_NAMES = {"ckpt": "gradient_checkpointing", "skip": "skip_unused_logits", "bf16": "bf16", "fp16": "fp16"}

DEFAULT_MATRIX = [
    ("llm:full", 400), ("llm:lora", 400), ("llm:full", 2000), ("llm:lora", 2000),
    ("llm:lora+skip", 400), ("llm:lora+skip", 2000),
    ("llm:lora+ckpt", 400), ("llm:lora+ckpt", 2000),
    ("llm:lora+bf16", 400), ("llm:lora+bf16", 2000),
    ("llm:lora+all", 400), ("llm:lora+all", 2000), ("llm:lora+all", 4000),
    ("llm:full+all", 400), ("llm:full+all", 2000),
    ("flow:full", 400), ("flow:lora", 400), ("flow:full", 2000), ("flow:lora", 2000),
    ("flow:lora+bf16", 400), ("flow:lora+bf16", 2000),
]


@dataclass(frozen=True)
class Spec:
    model: str
    lora: bool
    levers: tuple[str, ...]
    frames: int

    @classmethod
    def parse(cls, name: str, frames: int) -> "Spec":
        model, _, rest = name.partition(":")
        base, *levers = rest.split("+")
        if model not in ("llm", "flow") or base not in ("full", "lora"):
            raise SystemExit(f"bad configuration {name!r}: expected llm|flow:full|lora[+lever...]")
        out: list[str] = []
        for lever in levers:
            if lever == "all":
                out += ["ckpt", "bf16", "skip"]
            elif lever in LEVER_NAMES:
                out.append(lever)
            else:
                raise SystemExit(f"bad lever {lever!r} in {name!r}: choose from {', '.join(LEVER_NAMES)}, all")
        return cls(model, base == "lora", tuple(dict.fromkeys(out)), frames)

    @property
    def name(self) -> str:
        return f"{self.model}:{'lora' if self.lora else 'full'}" + "".join(f"+{lv}" for lv in self.levers)

    def memory_section(self) -> dict:
        autocast = next((lv for lv in self.levers if lv in ("bf16", "fp16")), "off")
        return {"gradient_checkpointing": "ckpt" in self.levers, "skip_unused_logits": "skip" in self.levers,
                "autocast": autocast}


# --- child: one configuration --------------------------------------------------------------------

def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Restart the kernel's high-water mark of this process's RSS (Linux >= 4.0, /proc/PID/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss() -> int:
    """VmHWM: the largest RSS since the last reset_peak_rss()."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def build_llm():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cosyvoice.llm.llm import Qwen2Encoder, Qwen2LM
    from cosyvoice.utils.common import ras_sampling

    # Qwen2Encoder.__init__ would from_pretrained() a checkpoint dir: build the same module around
    # a randomly initialised model instead (same attention implementation as from_pretrained picks).
    config = Qwen2Config(**QWEN2_05B, attn_implementation="sdpa")
    enc = Qwen2Encoder.__new__(Qwen2Encoder)
    torch.nn.Module.__init__(enc)
    enc.model = Qwen2ForCausalLM(config)
    return Qwen2LM(llm_input_size=896, llm_output_size=896, speech_token_size=SPEECH_TOKEN_SIZE, llm=enc,
                   sampling=ras_sampling, length_normalized_loss=True, lsm_weight=0, mix_ratio=[5, 15])


def build_flow():
    from omegaconf import DictConfig

    from cosyvoice.flow.decoder import CausalConditionalDecoder
    from cosyvoice.flow.flow import CausalMaskedDiffWithXvec
    from cosyvoice.flow.flow_matching import CausalConditionalCFM
    from cosyvoice.transformer.upsample_encoder import UpsampleConformerEncoder

    # the dims of upstream examples/libritts/cosyvoice2/conf/cosyvoice2.yaml
    encoder = UpsampleConformerEncoder(
        input_size=512, output_size=512, attention_heads=8, linear_units=2048, num_blocks=6, dropout_rate=0.1,
        positional_dropout_rate=0.1, attention_dropout_rate=0.1, normalize_before=True, input_layer="linear",
        pos_enc_layer_type="rel_pos_espnet", selfattention_layer_type="rel_selfattn", use_cnn_module=False,
        macaron_style=False, use_dynamic_chunk=True)
    estimator = CausalConditionalDecoder(
        in_channels=320, out_channels=80, channels=[256], dropout=0.0, attention_head_dim=64, n_blocks=4,
        num_mid_blocks=12, num_heads=8, act_fn="gelu", static_chunk_size=TOKEN_HZ * 2, num_decoding_left_chunks=2)
    cfm = DictConfig({"sigma_min": 1e-06, "solver": "euler", "t_scheduler": "cosine", "training_cfg_rate": 0.2,
                      "inference_cfg_rate": 0.7, "reg_loss_type": "l1"})
    decoder = CausalConditionalCFM(in_channels=240, n_spks=1, spk_emb_dim=80, cfm_params=cfm, estimator=estimator)
    return CausalMaskedDiffWithXvec(input_size=512, output_size=80, spk_embed_dim=192, output_type="mel",
                                    vocab_size=SPEECH_TOKEN_SIZE, input_frame_rate=TOKEN_HZ, only_mask_loss=True,
                                    token_mel_ratio=2, pre_lookahead_len=3, encoder=encoder, decoder=decoder)


def utterance_frames(frames: int, utt_frames: int | None) -> list[int]:
    """How a dynamic batch of ``frames`` mel frames is filled: equal utterances of ``utt_frames``
    (default min(frames, 1000): one 8 s utterance at 400, two 20 s ones at 2000)."""
    utt = min(frames, utt_frames or 1000)
    n = max(1, frames // utt)
    return [utt] * n


def make_batch(frames: int, utt_frames: int | None, seed: int = 0) -> dict:
    """Tensors with the keys and shapes upstream's padding() yields (the ones the models read)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    utts = utterance_frames(frames, utt_frames)
    mel = [f - f % 2 for f in utts]
    tok = [f // 2 for f in mel]
    txt = [max(1, round(f / MEL_HZ * TEXT_TOKENS_PER_S)) for f in mel]
    b = len(utts)
    return {
        "text_token": torch.randint(0, 151000, (b, max(txt)), generator=g),
        "text_token_len": torch.tensor(txt, dtype=torch.int32),
        "speech_token": torch.randint(0, SPEECH_TOKEN_SIZE, (b, max(tok)), generator=g),
        "speech_token_len": torch.tensor(tok, dtype=torch.int32),
        "speech_feat": torch.randn(b, max(mel), 80, generator=g),
        "speech_feat_len": torch.tensor(mel, dtype=torch.int32),
        "embedding": torch.randn(b, 192, generator=g),
    }


def run_child(spec: Spec, steps: int, warmup: int, device: str, utt_frames: int | None, lora_dropout: float) -> dict:
    import torch

    from cosyvoice.utils import train_utils
    from cosyvoice_ext import plugins
    from cosyvoice_ext.hookspecs import hookimpl
    from cosyvoice_ext.memory import levers
    from cosyvoice_ext.memory.config import parse_memory_section

    torch.manual_seed(0)
    cuda = device == "cuda"
    base_rss = rss_now()
    model = build_llm() if spec.model == "llm" else build_flow()
    trainable_note = "all"
    if spec.lora:
        from cosyvoice_ext.lora.config import parse_model_section
        from cosyvoice_ext.lora.inject import inject
        from cosyvoice_ext.lora.targets import resolve_targets

        settings = parse_model_section(spec.model, {
            "r": 16, "alpha": 32, "dropout": lora_dropout,
            "target_modules": "attention_mlp" if spec.model == "llm" else "attention"})
        targets = resolve_targets(model, settings)
        inject(model, settings, targets, [])
        trainable_note = f"LoRA r16 on {len(targets)} modules"
    mem = parse_memory_section({"cosyext": {"memory": spec.memory_section()}})
    args = argparse.Namespace(train_engine="torch_ddp", use_amp=mem.autocast == "fp16", model=spec.model)
    levers.check_runtime(mem, args, cuda=cuda)
    applied = levers.apply(model, spec.model, mem)
    if cuda:
        model.cuda()

    class TrainableOnly:  # what the LoRA plugin's optimizer hook does
        @hookimpl
        def cosyext_optimizer_params(self, model):
            return [p for p in model.parameters() if p.requires_grad]

    pm = plugins.new_manager(autoload=False)
    pm.register(TrainableOnly(), name="trainable_only")
    plugins.reset_manager(pm)
    configs = {"train_conf": {"optim": "adam", "optim_conf": {"lr": 1e-5}, "scheduler": "constantlr",
                              "scheduler_conf": {}, "grad_clip": 5, "accum_grad": 1}}
    model, optimizer, scheduler, _, _ = train_utils.init_optimizer_and_scheduler(args, configs, model, False)
    scaler = torch.cuda.amp.GradScaler() if args.use_amp else None
    model.train()
    batch = make_batch(spec.frames, utt_frames)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()  # the peak of the training steps, not of building the model
    times, losses = [], []
    for i in range(warmup + steps):
        random.seed(i)  # upstream draws bistream/streaming/prompt choices from `random`: same per step everywhere
        info = {"dtype": "fp32", "train_engine": "torch_ddp", "accum_grad": 1, "batch_idx": i, "grad_clip": 5}
        t0 = time.perf_counter()
        info = train_utils.batch_forward(model, batch, scaler, info)
        info = train_utils.batch_backward(model, scaler, info)
        info = train_utils.update_parameter_and_lr(model, optimizer, scheduler, scaler, info)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        losses.append(float(info["loss_dict"]["loss"]))
        if i >= warmup:
            times.append(dt)
        print(f"  step {i}: {dt:.2f} s loss {losses[-1]:.4f}", file=sys.stderr, flush=True)

    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params) + \
        sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = [p for p in params if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in trainable)
    opt_state = sum(t.numel() * t.element_size() for st in optimizer.state.values() for t in st.values()
                    if torch.is_tensor(t))
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if cuda:
        peak, base = torch.cuda.max_memory_allocated(), 0
    else:
        peak, base = peak_rss(), base_rss
    return {
        "config": spec.name, "model": spec.model, "lora": spec.lora, "levers": list(spec.levers),
        "applied": applied, "frames": spec.frames, "utterances": utterance_frames(spec.frames, utt_frames),
        "device": torch.cuda.get_device_name() if cuda else "cpu", "trainable": trainable_note,
        "params": sum(p.numel() for p in params), "trainable_params": sum(p.numel() for p in trainable),
        "peak_bytes": peak, "process_peak_bytes": process_peak, "baseline_bytes": base,
        "weights_bytes": weights, "grads_bytes": grads, "optimizer_bytes": opt_state,
        "activations_bytes": peak - base - weights - grads - opt_state,
        "step_times": times, "median_step_s": statistics.median(times), "losses": losses,
        "threads": torch.get_num_threads(),
    }


# --- parent: run the matrix, one child at a time ------------------------------------------------

def mem_available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024 ** 2
    return float("inf")


def need_gib(spec: Spec) -> float:
    """Free RAM to wait for before starting a configuration on a shared CPU machine: the measured
    memory model's estimate, +25% for glibc's slack, plus the process baseline."""
    from cosyvoice_ext.memory.model import estimate_peak_gib

    mem = spec.memory_section()
    return 1.0 + 1.25 * estimate_peak_gib(spec.model, spec.frames, lora=spec.lora, **mem)


def select(only: list[str] | None) -> list[Spec]:
    """The default matrix, or the ``--only`` entries in the order given (NAME@FRAMES, NAME, or a model)."""
    matrix = [Spec.parse(n, f) for n, f in DEFAULT_MATRIX]
    if not only:
        return matrix
    out: list[Spec] = []
    for entry in only:
        if "@" in entry:
            name, frames = entry.split("@")
            picked = [Spec.parse(name, int(frames))]
        else:
            picked = [s for s in matrix if entry in (s.name, s.model)] or [Spec.parse(entry, f) for f in (400, 2000)]
        out += [s for s in picked if s not in out]
    return out


def run_parent(args: argparse.Namespace) -> list[dict]:
    upstream = Path(args.upstream).resolve()
    if not (upstream / "cosyvoice" / "utils" / "train_utils.py").is_file():
        raise SystemExit(f"{upstream} is not a CosyVoice tree (run cosyext vendor + apply-patches first)")
    specs = select(args.only)
    if args.frames:
        specs = [s for s in specs if s.frames in args.frames]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(upstream), str(upstream / "third_party" / "Matcha-TTS"), str(REPO),
                                         env.get("PYTHONPATH", "")])
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "COSYEXT_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONWARNINGS": "ignore"})
    if args.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    results = []
    for spec in specs:
        if args.device == "cpu":
            need, waited = need_gib(spec), 0
            while mem_available_gib() < need and waited < args.wait_memory:
                time.sleep(10)
                waited += 10
            if mem_available_gib() < need:
                free = mem_available_gib()
                print(f"{spec.name} @ {spec.frames}: skipped, {free:.1f} GiB free < {need:.1f}", flush=True)
                results.append({"config": spec.name, "frames": spec.frames, "skipped": "not enough free memory"})
                continue
        child = {"model": spec.model, "lora": spec.lora, "levers": spec.levers, "frames": spec.frames,
                 "steps": args.steps, "warmup": args.warmup, "device": args.device, "utt_frames": args.utt_frames,
                 "lora_dropout": args.lora_dropout}
        t0 = time.time()
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(child)], env=env,
                              stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.PIPE, text=True)
        line = next((ln for ln in proc.stdout.splitlines()[::-1] if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            tail = (proc.stderr or "")[-2000:]
            print(f"{spec.name} @ {spec.frames}: FAILED (exit {proc.returncode})\n{tail}", flush=True)
            results.append({"config": spec.name, "frames": spec.frames, "failed": proc.returncode})
            continue
        res = json.loads(line[len("RESULT "):])
        res["wall_s"] = round(time.time() - t0, 1)
        results.append(res)
        print(f"{res['config']:<18} {res['frames']:>5} frames  peak {res['peak_bytes'] / GIB:6.2f} GiB  "
              f"step {res['median_step_s']:6.2f} s  (wall {res['wall_s']:.0f} s)", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(_meta(args) | {"results": results}, indent=1))
    return results


def _meta(args: argparse.Namespace) -> dict:
    import platform

    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
            "cpu": _cpu_name(), "cores": os.cpu_count(), "command": " ".join(sys.argv),
            "device": args.device, "steps": args.steps, "warmup": args.warmup,
            "malloc_mmap_threshold": args.malloc_mmap_threshold}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "?"


def report(results: list[dict]) -> str:
    """The tables: per configuration, LoRA/full ratios measured in this run, and the breakdown."""
    ok = [r for r in results if "peak_bytes" in r]
    lines = ["| config | frames | peak GiB | median step s | trainable params | weights | grads | optimizer | "
             "activations+other |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in ok:
        lines.append(f"| {r['config']} | {r['frames']} | {r['peak_bytes'] / GIB:.2f} | {r['median_step_s']:.2f} | "
                     f"{r['trainable_params'] / 1e6:.1f}M | {r['weights_bytes'] / GIB:.2f} | "
                     f"{r['grads_bytes'] / GIB:.2f} | "
                     f"{r['optimizer_bytes'] / GIB:.2f} | {r['activations_bytes'] / GIB:.2f} |")
    by = {(r["config"], r["frames"]): r for r in ok}
    ratio_lines = ["", "| ratio (same run) | frames | peak | step time |", "|---|---:|---:|---:|"]
    for (name, frames), r in sorted(by.items()):
        model, _, rest = name.partition(":")
        if not rest.startswith("lora"):
            continue
        full = by.get((f"{model}:full", frames))
        if full is None:
            continue
        ratio_lines.append(f"| {name} / {model}:full | {frames} | {r['peak_bytes'] / full['peak_bytes']:.2f} | "
                           f"{r['median_step_s'] / full['median_step_s']:.2f} |")
    fits = ["", "| config | GiB/1000 frames (fit) | fixed GiB (fit) | largest max_frames_in_batch under 16 GiB |",
            "|---|---:|---:|---:|"]
    for name in dict.fromkeys(r["config"] for r in ok):
        pts = sorted((r["frames"], r["peak_bytes"] / GIB) for r in ok if r["config"] == name)
        if len(pts) < 2:
            continue
        slope, icpt = _fit(pts)
        fit16 = int((16 - icpt) / slope) if slope > 0 else None
        fits.append(f"| {name} | {slope * 1000:.2f} | {icpt:.2f} | "
                    f"{'no limit found (slope <= 0)' if fit16 is None else fit16} (extrapolated) |")
    return "\n".join(lines + ratio_lines + fits)


def _fit(pts: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line peak = icpt + slope * frames."""
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else 0.0
    return slope, my - slope * mx


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", help="patched CosyVoice tree (cosyext vendor + apply-patches)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--steps", type=int, default=2, help="timed steps per configuration (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--only", nargs="*", help="configurations to run: NAME, NAME@FRAMES, or a model (llm/flow)")
    p.add_argument("--frames", nargs="*", type=int, help="keep only these max_frames_in_batch values")
    p.add_argument("--utt-frames", type=int, default=None, help="mel frames per utterance (default min(frames, 1000))")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (default 0.0, the plugin's default)")
    p.add_argument("--malloc-mmap-threshold", type=int, default=0,
                   help="set glibc MALLOC_MMAP_THRESHOLD_ in the children (CPU RSS closer to live tensors; slower)")
    p.add_argument("--wait-memory", type=int, default=300, help="seconds to wait for free RAM before a config")
    p.add_argument("--json", help="write all results here (rewritten after every configuration)")
    p.add_argument("--report", help="print the tables of an earlier --json file and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="show the children's stderr (step lines)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        c = json.loads(args.child)
        spec = Spec(c["model"], c["lora"], tuple(c["levers"]), c["frames"])
        res = run_child(spec, c["steps"], c["warmup"], c["device"], c["utt_frames"], c["lora_dropout"])
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    if args.report:
        print(report(json.loads(Path(args.report).read_text())["results"]))
        return 0
    if not args.upstream:
        p.error("--upstream is required")
    results = run_parent(args)
    print()
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
