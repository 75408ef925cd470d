"""Peak memory and step time of CosyVoice2-0.5B and CosyVoice3-0.5B training at real shapes: full fine-tune
vs LoRA vs LoRA with the memory levers, for both LLMs and both flows.

Builds the real-size models with random weights (nothing is downloaded): upstream's ``Qwen2LM``
(CosyVoice2) and ``CosyVoice3LM`` around a Qwen2 at Qwen2.5-0.5B dims, the CosyVoice2 flow at
``cosyvoice2.yaml`` dims and the CosyVoice3 DiT flow at ``cosyvoice3.yaml`` dims (ace7c47: DiT dim
1024, depth 22, 16 heads). Each configuration trains a few steps through upstream's ``train_utils``
step functions (``batch_forward``, ``batch_backward``, ``update_parameter_and_lr``; optimizer from
``init_optimizer_and_scheduler``) on identical synthetic batches shaped like upstream's ``padding``
output, in its own subprocess so its peak is its own: on CPU the RSS high-water mark of the training
steps (VmHWM, reset once the model, optimizer and batch exist; the whole process's ``ru_maxrss`` is
reported as ``process_peak_bytes``), on a GPU ``torch.cuda.max_memory_allocated``.

Example (CPU; the issue-9 matrix: both families, full vs LoRA vs LoRA+levers at 400 and 2000 frames)::

    cosyext vendor /tmp/up-v2 --rev 2025-06-29 && cosyext apply-patches --upstream /tmp/up-v2
    cosyext vendor /tmp/up-v3 --rev ace7c47 && cosyext apply-patches --upstream /tmp/up-v3   # CosyVoice3
    python benchmarks/bench_train_memory.py --upstream /tmp/up-v2 --upstream-cv3 /tmp/up-v3 --json out.json

(about 50 minutes on 2 shared cores with ``--steps 1 --warmup 1``; ``--only cv3-flow`` runs one group).

Configuration names: ``[FAMILY-]MODEL:BASE[+LEVER...]``. FAMILY ``cv2`` (default) or ``cv3``; MODEL
``llm`` or ``flow``; BASE ``full`` or ``lora`` (r=16; LLM targets q,k,v,o,gate,up,down; CosyVoice2
flow targets the attention projections, CosyVoice3 flow its default preset: DiT attention and
feed-forward). LEVERs ``ckpt`` (gradient checkpointing), ``bf16``/``fp16`` (autocast), ``skip``
(skip unused logits), ``all`` (ckpt+bf16+skip), ``levers`` (what the CPU comparison turns on: LLM
ckpt+skip+release, flow ckpt+release; bf16 is emulated on CPUs without bf16 instructions, 10x slower),
``release`` (release_cpu_memory: glibc returns freed memory; CPU RSS only).
"""

from __future__ import annotations

import argparse
import json
import logging
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
INSTRUCT_TOKENS = 8    # "You are a helpful assistant.<|endofprompt|>" (CosyVoice3 LLM batches)
LEVER_NAMES = {"ckpt": "gradient_checkpointing", "skip": "skip_unused_logits", "release": "release_cpu_memory",
               "bf16": "bf16", "fp16": "fp16"}
FAMILIES = ("cv2", "cv3")
# "levers": what LoRA+levers means in the comparison (CPU: no autocast, see the docstring)
LEVER_SETS = {"llm": ("ckpt", "skip", "release"), "flow": ("ckpt", "release")}

# The issue-9 comparison: per family and model, full vs LoRA vs LoRA+levers at 400 and 2000 frames.
# Within one (family, model, frames) they run back to back, so their ratios share the machine's load.
# For the flows also each lever's share: LoRA with checkpointing alone (its slope is the memory model's
# flow checkpointing factor), and at 2000 frames the full fine-tune with release_cpu_memory (what the
# allocator alone does to the baseline).
DEFAULT_MATRIX = [(f"{fam}-{model}:{base}", frames)
                  for fam in FAMILIES for model in ("llm", "flow") for frames in (400, 2000)
                  for base in ("full", "lora", "lora+levers")
                  + (("lora+ckpt",) if model == "flow" else ())
                  + (("full+release",) if model == "flow" and frames == 2000 else ())]


@dataclass(frozen=True)
class Spec:
    model: str
    lora: bool
    levers: tuple[str, ...]
    frames: int
    family: str = "cv2"

    @classmethod
    def parse(cls, name: str, frames: int) -> "Spec":
        head, _, rest = name.partition(":")
        family, _, model = head.rpartition("-")
        family = family or "cv2"
        base, *levers = rest.split("+")
        if family not in FAMILIES or model not in ("llm", "flow") or base not in ("full", "lora"):
            raise SystemExit(f"bad configuration {name!r}: expected [cv2-|cv3-]llm|flow:full|lora[+lever...]")
        out: list[str] = []
        for lever in levers:
            if lever == "all":
                out += ["ckpt", "bf16", "skip"]
            elif lever == "levers":
                out += list(LEVER_SETS[model])
            elif lever in LEVER_NAMES:
                out.append(lever)
            else:
                raise SystemExit(f"bad lever {lever!r} in {name!r}: choose from {', '.join(LEVER_NAMES)}, all, levers")
        return cls(model, base == "lora", tuple(dict.fromkeys(out)), frames, family)

    @property
    def name(self) -> str:
        return (f"{self.family}-{self.model}:{'lora' if self.lora else 'full'}"
                + "".join(f"+{lv}" for lv in self.levers))

    @property
    def group(self) -> str:
        """What ratios are taken within: ``cv3-flow``."""
        return f"{self.family}-{self.model}"

    def memory_section(self) -> dict:
        autocast = next((lv for lv in self.levers if lv in ("bf16", "fp16")), "off")
        return {"gradient_checkpointing": "ckpt" in self.levers, "skip_unused_logits": "skip" in self.levers,
                "release_cpu_memory": "release" in self.levers, "autocast": autocast}


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


def build_llm(family: str = "cv2"):
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
    kw = dict(llm_input_size=896, llm_output_size=896, speech_token_size=SPEECH_TOKEN_SIZE, llm=enc,
              sampling=ras_sampling, length_normalized_loss=True, lsm_weight=0, mix_ratio=[5, 15])
    if family == "cv3":  # examples/libritts/cosyvoice3/conf/cosyvoice3.yaml at ace7c47
        from cosyvoice.llm.llm import CosyVoice3LM

        return CosyVoice3LM(**kw)
    return Qwen2LM(**kw)


def build_flow(family: str = "cv2"):
    from omegaconf import DictConfig

    if family == "cv3":
        return build_dit_flow()

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


def build_dit_flow():
    """CosyVoice3's flow at the dims of upstream examples/libritts/cosyvoice3/conf/cosyvoice3.yaml (ace7c47)."""
    from omegaconf import DictConfig

    from cosyvoice.flow.DiT.dit import DiT
    from cosyvoice.flow.flow import CausalMaskedDiffWithDiT
    from cosyvoice.flow.flow_matching import CausalConditionalCFM
    from cosyvoice.transformer.upsample_encoder import PreLookaheadLayer

    estimator = DiT(dim=1024, depth=22, heads=16, dim_head=64, ff_mult=2, mel_dim=80, mu_dim=80, spk_dim=80,
                    out_channels=80, static_chunk_size=TOKEN_HZ * 2, num_decoding_left_chunks=-1)
    cfm = DictConfig({"sigma_min": 1e-06, "solver": "euler", "t_scheduler": "cosine", "training_cfg_rate": 0.2,
                      "inference_cfg_rate": 0.7, "reg_loss_type": "l1"})
    decoder = CausalConditionalCFM(in_channels=240, n_spks=1, spk_emb_dim=80, cfm_params=cfm, estimator=estimator)
    return CausalMaskedDiffWithDiT(input_size=80, output_size=80, spk_embed_dim=192, output_type="mel",
                                   vocab_size=SPEECH_TOKEN_SIZE, input_frame_rate=TOKEN_HZ, only_mask_loss=True,
                                   token_mel_ratio=2, pre_lookahead_len=3,
                                   pre_lookahead_layer=PreLookaheadLayer(in_channels=80, channels=1024,
                                                                         pre_lookahead_len=3),
                                   decoder=decoder)


def utterance_frames(frames: int, utt_frames: int | None) -> list[int]:
    """How a dynamic batch of ``frames`` mel frames is filled: equal utterances of ``utt_frames``
    (default min(frames, 1000): one 8 s utterance at 400, two 20 s ones at 2000)."""
    utt = min(frames, utt_frames or 1000)
    n = max(1, frames // utt)
    return [utt] * n


def make_batch(frames: int, utt_frames: int | None, seed: int = 0, family: str = "cv2") -> dict:
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
    } | ({"instruct_token": torch.randint(0, 151000, (b, INSTRUCT_TOKENS), generator=g),
          "instruct_token_len": torch.full((b,), INSTRUCT_TOKENS, dtype=torch.int32)} if family == "cv3" else {})


class _LogLines(logging.Handler):
    """What the levers logged (which blocks were checkpointed), for the result."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def lora_targets(spec: Spec) -> str:
    """The LoRA preset: the LLM's attention and MLP; CosyVoice2 flow attention (as measured before CosyVoice3);
    CosyVoice3 flow the class's default (DiT attention and feed-forward)."""
    if spec.model == "llm":
        return "attention_mlp"
    return "attention" if spec.family == "cv2" else "default"


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
    model = build_llm(spec.family) if spec.model == "llm" else build_flow(spec.family)
    trainable_note = "all"
    if spec.lora:
        from cosyvoice_ext.lora.config import parse_model_section
        from cosyvoice_ext.lora.inject import inject
        from cosyvoice_ext.lora.targets import resolve_targets

        settings = parse_model_section(spec.model, {
            "r": 16, "alpha": 32, "dropout": lora_dropout,
            "target_modules": lora_targets(spec)})
        targets = resolve_targets(model, settings)
        inject(model, settings, targets, [])
        trainable_note = f"LoRA r16 on {len(targets)} modules"
    mem = parse_memory_section({"cosyext": {"memory": spec.memory_section()}})
    args = argparse.Namespace(train_engine="torch_ddp", use_amp=mem.autocast == "fp16", model=spec.model)
    levers.check_runtime(mem, args, cuda=cuda)
    said = _LogLines()
    logging.getLogger("cosyvoice_ext.memory").addHandler(said)
    logging.getLogger("cosyvoice_ext.memory").setLevel(logging.INFO)
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
    batch = make_batch(spec.frames, utt_frames, family=spec.family)
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
        "config": spec.name, "family": spec.family, "group": spec.group, "model": spec.model, "lora": spec.lora,
        "levers": list(spec.levers), "applied": applied, "levers_log": said.lines,
        "patched_train_utils": hasattr(train_utils, "cosyext_relay"), "frames": spec.frames, "utterances": utterance_frames(spec.frames, utt_frames),
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
    family = "cosyvoice3" if spec.family == "cv3" else "cosyvoice2"
    return 1.0 + 1.25 * estimate_peak_gib(spec.model, spec.frames, lora=spec.lora, family=family,
                                          gradient_checkpointing=mem["gradient_checkpointing"],
                                          skip_unused_logits=mem["skip_unused_logits"], autocast=mem["autocast"])


def select(only: list[str] | None) -> list[Spec]:
    """The default matrix, or the ``--only`` entries in the order given (NAME@FRAMES, NAME, a family
    ``cv3``, a model ``flow`` or both ``cv3-flow``)."""
    matrix = [Spec.parse(n, f) for n, f in DEFAULT_MATRIX]
    if not only:
        return matrix
    out: list[Spec] = []
    for entry in only:
        if "@" in entry:
            name, frames = entry.split("@")
            picked = [Spec.parse(name, int(frames))]
        else:
            picked = [s for s in matrix if entry in (s.name, s.model, s.family, s.group)] or \
                [Spec.parse(entry, f) for f in (400, 2000)]
        out += [s for s in picked if s not in out]
    return out


def upstream_trees(args: argparse.Namespace, specs: list[Spec]) -> dict[str, Path]:
    """The CosyVoice tree each family's configurations import: ``--upstream`` for CosyVoice2,
    ``--upstream-cv3`` (else ``--upstream``, if it has CosyVoice3) for CosyVoice3."""
    trees: dict[str, Path] = {}
    for family in dict.fromkeys(s.family for s in specs):
        given = args.upstream_cv3 if family == "cv3" and args.upstream_cv3 else args.upstream
        if not given:
            raise SystemExit(f"{family} configurations need --upstream{'-cv3' if family == 'cv3' else ''}")
        tree = Path(given).resolve()
        if not (tree / "cosyvoice" / "utils" / "train_utils.py").is_file():
            raise SystemExit(f"{tree} is not a CosyVoice tree (run cosyext vendor + apply-patches first)")
        if family == "cv3" and not (tree / "cosyvoice" / "flow" / "DiT" / "dit.py").is_file():
            raise SystemExit(f"{tree} has no CosyVoice3 (cosyvoice/flow/DiT): pass an ace7c47 tree as --upstream-cv3")
        trees[family] = tree
    return trees


def child_env(args: argparse.Namespace, tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(tree / "third_party" / "Matcha-TTS"), str(REPO),
                                         env.get("PYTHONPATH", "")])
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "COSYEXT_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONWARNINGS": "ignore"})
    env["OMP_NUM_THREADS"] = str(args.threads)  # 1 on a shared 2-core box: 2 threads ran ~10x slower under load
    env.pop("onnx_path", None)  # ace7c47: set, it would switch on online feature extraction (ONNX models)
    if args.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    return env


def run_parent(args: argparse.Namespace) -> list[dict]:
    specs = select(args.only)
    if args.frames:
        specs = [s for s in specs if s.frames in args.frames]
    trees = upstream_trees(args, specs)
    envs = {family: child_env(args, tree) for family, tree in trees.items()}
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
        child = {"model": spec.model, "lora": spec.lora, "levers": spec.levers, "frames": spec.frames, "family": spec.family,
                 "steps": args.steps, "warmup": args.warmup, "device": args.device, "utt_frames": args.utt_frames,
                 "lora_dropout": args.lora_dropout}
        t0 = time.time()
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(child)], env=envs[spec.family],
                              stdout=subprocess.PIPE, stderr=None if args.verbose else subprocess.PIPE, text=True)
        line = next((ln for ln in proc.stdout.splitlines()[::-1] if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            tail = (proc.stderr or "")[-2000:]
            print(f"{spec.name} @ {spec.frames}: FAILED (exit {proc.returncode})\n{tail}", flush=True)
            results.append({"config": spec.name, "frames": spec.frames, "failed": proc.returncode})
            continue
        res = json.loads(line[len("RESULT "):])
        res["wall_s"] = round(time.time() - t0, 1)
        res["upstream"] = str(trees[spec.family])
        results.append(res)
        print(f"{res['config']:<24} {res['frames']:>5} frames  peak {res['peak_bytes'] / GIB:6.2f} GiB  "
              f"step {res['median_step_s']:6.2f} s  (wall {res['wall_s']:.0f} s)", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(_meta(args) | {"results": results}, indent=1))
    return results


def _meta(args: argparse.Namespace) -> dict:
    import platform

    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
            "cpu": _cpu_name(), "cores": os.cpu_count(), "command": " ".join(sys.argv),
            "device": args.device, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
            "malloc_mmap_threshold": args.malloc_mmap_threshold}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "?"


def _canonical(r: dict) -> str | None:
    """full, lora or lora+levers (the issue-9 comparison's columns) for a result, else None."""
    levers = tuple(r.get("levers", ()))
    if not r["lora"]:
        return "full" if not levers else None
    if not levers:
        return "lora"
    return "lora+levers" if set(levers) == set(LEVER_SETS[r["model"]]) else None


def _group(r: dict) -> str:
    return r.get("group") or f"{r.get('family', 'cv2')}-{r['model']}"


def comparison(results: list[dict]) -> str:
    """Full vs LoRA vs LoRA+levers per family, model and frames: the full fine-tune's peak and step time,
    the others as ratios to it (all from this run), and the flow target of issue 9."""
    ok = [r for r in results if "peak_bytes" in r]
    by: dict[tuple[str, int], dict[str, dict]] = {}
    for r in ok:
        col = _canonical(r)
        if col:
            by.setdefault((_group(r), r["frames"]), {})[col] = r
    lines = ["| model | frames | full: peak GiB | LoRA: peak ×full | LoRA+levers: peak ×full | full: step s | "
             "LoRA: step ×full | LoRA+levers: step ×full | levers |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    targets = []
    for (group, frames), cols in by.items():
        full = cols.get("full")
        if full is None:
            continue

        def ratio(col: str, key: str) -> str:
            r = cols.get(col)
            return f"{r[key] / full[key]:.2f}" if r else "–"

        lv = cols.get("lora+levers")
        lines.append(f"| {group} | {frames} | {full['peak_bytes'] / GIB:.2f} | {ratio('lora', 'peak_bytes')} | "
                     f"{ratio('lora+levers', 'peak_bytes')} | {full['median_step_s']:.1f} | "
                     f"{ratio('lora', 'median_step_s')} | {ratio('lora+levers', 'median_step_s')} | "
                     f"{'+'.join(lv['levers']) if lv else '–'} |")
        if group.endswith("-flow") and frames == 2000 and lv:
            x = lv["peak_bytes"] / full["peak_bytes"]
            targets.append(f"- {group} at 2000 frames: LoRA+levers peak = {x:.2f}x full "
                           f"({'meets' if x <= 0.5 else 'MISSES'} the <= 0.5x target)")
    return "\n".join(lines + ([""] + targets if targets else []))


def report(results: list[dict]) -> str:
    """The tables: per configuration, the comparison (ratios measured in this run), other ratios, fits."""
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
        if _canonical(r) is not None:
            continue  # the comparison table has these
        full = next((f for f in ok if _group(f) == _group(r) and f["frames"] == frames
                     and _canonical(f) == "full"), None)
        if full is None:
            continue
        ratio_lines.append(f"| {name} / {full['config']} | {frames} | {r['peak_bytes'] / full['peak_bytes']:.2f} | "
                           f"{r['median_step_s'] / full['median_step_s']:.2f} |")
    if len(ratio_lines) == 3:
        ratio_lines = []
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
    checkpointed = sorted({ln for r in ok for ln in r.get("levers_log", []) if "gradient_checkpointing of" in ln})
    notes = ["", "Checkpointed (from the levers' log):"] + [f"- {ln}" for ln in checkpointed] if checkpointed else []
    return "\n".join([comparison(results), ""] + lines + ratio_lines + fits + notes)


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
    p.add_argument("--upstream", help="patched CosyVoice tree (cosyext vendor + apply-patches) for CosyVoice2")
    p.add_argument("--upstream-cv3", help="CosyVoice tree at ace7c47 or later for CosyVoice3 (default: --upstream)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--steps", type=int, default=2, help="timed steps per configuration (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--only", nargs="*", help="configurations to run: NAME, NAME@FRAMES, a family (cv2/cv3), "
                   "a model (llm/flow) or both (cv3-flow)")
    p.add_argument("--frames", nargs="*", type=int, help="keep only these max_frames_in_batch values")
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per configuration (default 1)")
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
        spec = Spec(c["model"], c["lora"], tuple(c["levers"]), c["frames"], c.get("family", "cv2"))
        res = run_child(spec, c["steps"], c["warmup"], c["device"], c["utt_frames"], c["lora_dropout"])
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    if args.report:
        print(report(json.loads(Path(args.report).read_text())["results"]))
        return 0
    if not (args.upstream or args.upstream_cv3):
        p.error("--upstream (and/or --upstream-cv3) is required")
    results = run_parent(args)
    print()
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
