"""`cosyext demo`: the whole workflow on an embedded tiny default, on CPU, in a few minutes.

vendor upstream (the newest supported commit, offline from the upstream mirror when there is one)
-> apply its patch series -> generate tiny recordings (wav + txt) and a complete tiny pretrained
model dir (random weights, a tiny Qwen2, stand-in ONNX feature models; upstream's inference class
loads it) -> `cosyext prepare` -> `cosyext lint` with the data -> train LLM and flow LoRA with the
stock train.py under torchrun -> `cosyext plot` -> `cosyext export --serve` -> `cosyext eval` of the
trained adapters against the base on the CV utterances (a tiny random Whisper for WER) -> a summary
with the eval table and a few synthesised wavs. The models are random and tiny: the audio is noise
and the numbers say nothing about quality, but every step is the real one.
CosyVoice3 by default; `--family cosyvoice2` for CosyVoice2. `--recording upstream` (or FILE) trains
from one long recording instead: prepare cuts it on pauses, normalises it and transcribes it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time
from pathlib import Path

LOSS = re.compile(r" INFO (TRAIN Batch (\d+)/(\d+) loss (\S+)|Epoch \d+ Step \d+ CV info.*)")
LORA_SECTION = """\
cosyext:
  llm: {r: 8, alpha: 16, dropout: 0.0}
  flow: {r: 8, alpha: 16, dropout: 0.0}
  early_stop: {patience: 3, min_delta: 0.0}
"""
#: what the demo makes in its work dir; a rerun replaces these and nothing else
MADE = ("recordings", "pretrained", "data", "exp", "serve", "ext.yaml", "loss.png", "train_llm.log", "train_flow.log",
        "asr", "eval")
#: utterances the closing eval synthesises per system (a random tiny LLM says ~0.8 s per syllable)
EVAL_UTTS = 3
#: synthesised wavs the summary lists
SHOW_WAVS = 2
MARKER = ".cosyext-demo"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole workflow on a tiny embedded default with torchrun on CPU (minutes)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  cosyext demo --workdir /tmp/cosyext-demo\n"
                       "  cosyext demo --workdir /tmp/d --source github --models llm --epochs 3\n"
                       "  cosyext demo --workdir /tmp/d --recording upstream   # one long take of real speech")
    p.add_argument("--workdir", type=Path, default=Path("cosyext-demo"), help="everything is written here")
    p.add_argument("--source", default=None, help="where upstream comes from (see 'cosyext vendor --help'; default: "
                   "$COSYEXT_UPSTREAM_MIRROR, else the checkout's ../shared/upstream, else GitHub)")
    p.add_argument("--rev", default=None, help="supported upstream commit (default: the newest)")
    p.add_argument("--family", default="cosyvoice3", choices=["cosyvoice3", "cosyvoice2"],
                   help="model family to fine-tune (default: cosyvoice3)")
    p.add_argument("--models", default="llm,flow", help="comma-separated: llm, flow")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--utterances", type=int, default=40, help="tiny recordings to generate")
    p.add_argument("--recording", metavar="upstream|FILE", help="train from ONE long recording instead: 'upstream' "
                   "joins the real speech in the vendored tree's asset/ with pauses; FILE is yours (any format ffmpeg "
                   "reads). prepare cuts it on pauses (silero-vad), normalises loudness and transcribes it with --asr")
    p.add_argument("--asr", metavar="NAME|PATH", help="with --recording: the Whisper model for the transcripts "
                   "(default: a tiny random one built here, offline: its transcripts are noise)")
    p.add_argument("--eval-utts", type=int, default=EVAL_UTTS, metavar="N",
                   help=f"CV utterances the closing 'cosyext eval' synthesises per system (default {EVAL_UTTS}; 0 skips "
                   "the eval)")
    p.set_defaults(func=run)


def _step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def _cli(*argv: str) -> int:
    from ..cli import main

    return main(list(argv))


def _train(cmd: list[str], env: dict, log_path: Path) -> tuple[int, list[float], int]:
    """Run torchrun, echo the loss lines, return (exit code, train losses, batches in the last epoch)."""
    losses, per_epoch = [], {}
    with log_path.open("w") as log, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                                     stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            log.write(line)
            m = LOSS.search(line)
            if m:
                print("   ", m.group(1).strip()[:110], flush=True)
                if m.group(2) is not None:
                    losses.append(float(m.group(4)))
                    per_epoch[int(m.group(2))] = int(m.group(3))
    return proc.returncode, losses, max(per_epoch.values()) if per_epoch else 0


def _eval(work: Path, models: list[str], pretrained: Path, cv_list: Path, upstream: Path,
          n_utts: int) -> tuple[Path, str, dict, float]:
    """`cosyext eval` of the trained runs (adapters in memory) vs the base on the CV utterances; a tiny random
    Whisper stands in for the ASR model a user names (large-v3), so WER runs offline. Returns what the
    summary shows: the eval dir, its table, eval.json and the seconds it took."""
    import contextlib
    import io
    import json

    from ..errors import EnvironmentProblem
    from ..eval.tiny import make_whisper_checkpoint

    start = time.monotonic()
    asr = make_whisper_checkpoint(work / "asr" / "whisper-tiny.pt")
    out = work / "eval"
    _step(f"cosyext eval {' '.join(f'exp/{m}' for m in models)} --base {pretrained} --data {cv_list} --upstream "
          f"{upstream} --asr {asr.relative_to(work)} --max-utts {n_utts} -o {out}")
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):  # the table goes into the closing summary; progress stays on stderr
        rc = _cli("eval", *(str(work / "exp" / m) for m in models), "--base", str(pretrained), "--data", str(cv_list),
                  "--upstream", str(upstream), "--asr", str(asr), "--max-utts", str(n_utts), "-o", str(out))
    if rc != 0:
        print(captured.getvalue(), end="")
        raise EnvironmentProblem(f"cosyext eval failed (exit {rc})", hint="rerun with cosyext -v demo for details")
    result = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    return out, (out / "eval.txt").read_text(encoding="utf-8"), result, time.monotonic() - start


def _eval_summary(out: Path, table: str, result: dict, seconds: float) -> None:
    utts = result["utterances"]
    rate = result["systems"]["tuned"].get("sample_rate")
    print(f"\neval: base vs fine-tuned, {len(utts)} CV utterances, same texts and seeds ({seconds:.0f} s; random tiny "
          "models speak noise, so the numbers show the pipeline, not quality)")
    print(table, end="")
    print(f"synthesised wavs ({rate} Hz; all in {out / 'wavs'}):")
    for u in utts[:SHOW_WAVS]:
        for system, label in (("base", "base"), ("tuned", "fine-tuned")):
            if u[system]["wav"]:
                print(f"  {label:10} {u[system]['wav']}  ({u[system]['seconds']:.1f} s, seed {u['seed']}: {u['text']!r})")
    print(f"eval table, JSON and plot: {out / 'eval.txt'}, {out / 'eval.json'}, {out / 'eval.png'}")


def _long_recording(spec: str, upstream: Path, work: Path) -> Path:
    """The one long recording the demo trains from: upstream's real speech joined with pauses, or the user's file."""
    from ..errors import UsageError
    from ..tiny.recording import long_recording

    if spec != "upstream":
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"--recording {spec}: no such file", hint="cosyext demo --recording upstream")
        _step(f"one long recording: {path}")
        return path
    try:
        path = long_recording(upstream, work / "recordings" / "long_take.flac")
    except FileNotFoundError as exc:
        raise UsageError(f"--recording upstream: {exc}", hint="cosyext demo --recording upstream (at a git commit: "
                         "the default --rev), or --recording FILE") from None
    _step(f"one long recording from upstream's real speech (asset/*.wav joined with pauses): {path}")
    return path


def _raw_options(args: argparse.Namespace, work: Path) -> dict:
    """prepare's raw-recording options: the named Whisper as it is, or a tiny random one with its filters opened
    (its transcripts are noise, which its confidence says; a real model is held to the defaults)."""
    if args.asr:
        return {"asr": args.asr}
    from ..eval.tiny import make_whisper_checkpoint

    asr = make_whisper_checkpoint(work / "asr" / "whisper-tiny.pt")
    return {"asr": str(asr), "language": "en", "min_asr_logprob": -1e9, "max_no_speech": 1.0,
            "max_compression_ratio": 1e9}


def _claim_workdir(work: Path) -> None:
    """Use `work` only if it is new, empty, or an earlier demo's; then clear what an earlier demo made.

    A directory the demo did not create is never cleared (it may hold the user's own data).
    """
    from ..errors import UsageError

    if work.exists() and any(work.iterdir()) and not (work / MARKER).is_file():
        raise UsageError(f"{work} exists, is not empty and was not made by 'cosyext demo'; nothing was changed",
                         hint="pass a new directory: cosyext demo --workdir NEW_DIR")
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("made by cosyext demo; a rerun replaces: " + ", ".join(MADE) + "\n")
    for name in MADE:
        p = work / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def run(args: argparse.Namespace) -> int:
    import warnings

    from .. import family as families
    from ..errors import EnvironmentProblem, UsageError
    from ..prepare.pipeline import PrepareOptions, prepare
    from ..tiny.config import write_tiny_config
    from ..tiny.data import write_recordings
    from ..tiny.inference import make_inference_dir
    from ..tiny.api import train_py_has_onnx_path
    from ..tiny.workspace import Workspace, train_command, train_env, upstream_on_path
    from ..upstream import lockfile, mirror, patching, sources
    from ..upstream.tree import recognise

    warnings.filterwarnings("ignore")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or set(models) - {"llm", "flow"}:
        raise UsageError(f"--models takes llm and/or flow, got {args.models!r}", hint="cosyext demo --models llm,flow")
    if args.asr and not args.recording:
        raise UsageError("--asr transcribes a --recording; the generated recordings come with their texts",
                         hint="cosyext demo --recording upstream --asr small")
    if args.eval_utts < 0:
        raise UsageError(f"--eval-utts takes 0 (no eval) or more, got {args.eval_utts}", hint="cosyext demo --eval-utts 3")
    fam = families.get(args.family)
    work = args.workdir.expanduser().resolve()
    t0 = time.monotonic()
    lock = lockfile.load()
    commit = lock.resolve(args.rev)
    if fam.name not in commit.families:
        raise UsageError(f"upstream {commit.label} has no {fam.name} (it trains {', '.join(commit.families)})",
                         hint=f"cosyext demo --rev {lock.newest.name} --family {fam.name}")
    _claim_workdir(work)
    upstream = work / "CosyVoice"
    found = recognise(upstream, lock).commit if upstream.is_dir() else None
    if found is not None and found.commit == commit.commit:
        _step(f"upstream {commit.label} already at {upstream}")
    else:
        if upstream.exists():
            shutil.rmtree(upstream)  # an earlier demo's tree at another commit (the marker says the dir is ours)
        source = args.source or mirror.default_source()
        _step(f"cosyext vendor {upstream} --rev {commit.name} --source {source}")
        print(sources.vendor(upstream, source, lock, rev=commit.commit))
    _step(f"cosyext apply-patches --upstream {upstream}")
    print(patching.apply_series(upstream, lock).message)

    if args.recording:
        recordings = _long_recording(args.recording, upstream, work)
        _step(f"a tiny pretrained {fam.inference_class} dir")
    else:
        _step(f"generate {args.utterances} tiny recordings (wav + txt) and a tiny pretrained {fam.inference_class} dir")
        recordings = write_recordings(work / "recordings", args.utterances, seed=0)
    pretrained = work / "pretrained"
    with upstream_on_path(upstream):  # built here, so the eval at the end reuses this process's import of upstream
        made = make_inference_dir(pretrained, family=fam, upstream=upstream, speakers=())
    qwen = made.qwen_dir
    # the training config: the pretrained dir's models (same template and Qwen) without the vocoder, plus LoRA
    config = write_tiny_config(work / "ext.yaml", qwen, family=fam, upstream=upstream, max_epoch=args.epochs, lr=0.01,
                               max_frames_in_batch=600, extra=LORA_SECTION)
    print(f"recordings in {recordings}; pretrained {fam.inference_class} dir (random weights: llm, flow, hift, "
          f"{fam.config_name}, tiny Qwen2, stand-in ONNX models) in {pretrained}")

    raw = _raw_options(args, work) if args.recording else {}
    shown = "".join(f" --{k.replace('_', '-')} {v}" for k, v in raw.items())
    _step(f"cosyext prepare {recordings} {work / 'data'} --pretrained {pretrained}{shown}")
    prep = prepare(PrepareOptions(src=recordings, dest=work / "data", pretrained=pretrained, cv_ratio=0.2,
                                  seed=0, progress=False, **raw))
    if args.recording:
        print(f"cut, normalised and transcribed: {work / 'data' / 'segments'}; transcripts (editable): "
              f"{work / 'data' / 'transcripts.tsv'}; data report: {work / 'data' / 'report.html'}")
    print(f"{prep.family} data: train {prep.utts.get('train', 0)} / cv {prep.utts.get('cv', 0)} utterances, "
          f"{len(prep.skipped)} skipped")

    # the precomputed features prepare wrote: at trees whose train.py has --onnx_path, that is ''
    onnx = ["--onnx-path", ""] if train_py_has_onnx_path(upstream) else []
    _step(f"cosyext lint {config} --data {prep.train_list} --upstream {upstream}" + (" --onnx-path ''" if onnx else ""))
    for model in models:
        _cli("lint", str(config), "--data", str(prep.train_list), "--model", model, "--upstream", str(upstream),
             *onnx, "--exit-zero")

    base = {m: pretrained / f"{m}.pt" for m in ("llm", "flow")}  # fine-tune the pretrained dir's own weights
    ws = Workspace(root=work, qwen_dir=qwen, config=config, train_list=prep.train_list, cv_list=prep.cv_list,
                   llm_ckpt=base["llm"], flow_ckpt=base["flow"], family=fam.name)

    rows = []
    for model in models:
        model_dir = work / "exp" / model
        cmd = train_command(ws, upstream, model, model_dir, checkpoint=base[model])
        onnx = f" --onnx_path {cmd[cmd.index('--onnx_path') + 1]!r}" if "--onnx_path" in cmd else ""
        _step(f"torchrun --nproc_per_node=1 {upstream}/cosyvoice/bin/train.py --config {config.name} --model {model}"
              f"{onnx} ... (LoRA from the cosyext: section)")
        start = time.monotonic()
        log_path = work / f"train_{model}.log"
        code, losses, batches = _train(cmd, train_env(upstream), log_path)
        if code != 0:
            raise EnvironmentProblem(f"training {model} failed (exit {code}); log: {log_path}",
                                     hint=f"tail -50 {log_path}")
        ckpts = sorted(model_dir.glob("epoch_*_whole.pt"), key=lambda p: int(p.name.split("_")[1]))
        rows.append({"model": model, "batches": batches, "steps": len(losses), "first": losses[0] if losses else None,
                     "last": losses[-1] if losses else None, "adapter": ckpts[-1].stat().st_size,
                     "base": base[model].stat().st_size, "seconds": time.monotonic() - start})

    plot = work / "loss.png"
    _step(f"cosyext plot {' '.join(str(work / 'exp' / m) for m in models)} -o {plot}")
    _cli("plot", *(str(work / "exp" / m) for m in models), "-o", str(plot))

    serve_dir = work / "serve" / "demo_voice"
    for model in models:
        _step(f"cosyext export --model {model} --run exp/{model} --serve {pretrained} -o {serve_dir}")
        rc = _cli("export", "--model", model, "--run", str(work / "exp" / model), "--config", str(config),
                  "--qwen-pretrain-path", str(qwen), "--upstream", str(upstream), "--serve", str(pretrained),
                  "--speaker-data", str(prep.train_list), "--speaker-name", "demo_voice",
                  "--description", "cosyext demo voice", "-o", str(serve_dir))
        if rc != 0:
            raise EnvironmentProblem(f"export of {model} failed", hint="rerun with cosyext -v demo for details")

    evaluated = _eval(work, models, pretrained, prep.cv_list, upstream, args.eval_utts) if args.eval_utts else None

    print(f"\n{fam.name} at upstream {commit.label}")
    print(f"{'model':6} {'samples':>7} {'batches/ep':>10} {'steps':>5} {'first loss':>10} {'last loss':>10} "
          f"{'adapter':>10} {'base ckpt':>10} {'train s':>7}")
    for r in rows:
        print(f"{r['model']:6} {prep.utts.get('train', 0):>7} {r['batches']:>10} {r['steps']:>5} "
              f"{r['first'] or float('nan'):>10.3f} {r['last'] or float('nan'):>10.3f} "
              f"{r['adapter'] / 1024:>8.0f}KB {r['base'] / 1024:>8.0f}KB {r['seconds']:>7.1f}")
    exported = sorted(p.name for p in serve_dir.iterdir() if not p.is_symlink())
    print(f"\nexported (merged, stock-loadable): {serve_dir}: {', '.join(exported)} (+ pretrained files linked)")
    print(f"serve it with upstream: {fam.inference_class}('{serve_dir}')")
    print(f"loss plot: {plot}")
    if evaluated is not None:
        _eval_summary(*evaluated)
    print(f"total {time.monotonic() - t0:.0f} s; everything is under {work}")
    return 0
