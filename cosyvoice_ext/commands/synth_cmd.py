"""`cosyext synth`: text to wav with upstream's own CosyVoice2/CosyVoice3 classes (the arguments, the
checks and the writing; the synthesis is :mod:`cosyvoice_ext.synth`).

Every mistake a user can make (a missing or incomplete model dir, an unknown speaker, a bad prompt,
an output that exists or lies inside the model) is found before upstream is imported, so it costs
no model load and never reaches modelscope's downloader.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ._common import UPSTREAM_ENV, add_upstream_arg, upstream_root

EXAMPLES = f"""\
examples:
  # the speaker 'cosyext export --serve --speaker-name my_voice' registered (prompt-free)
  cosyext synth --model-dir serve/my_voice --speaker my_voice --text "Hello there." -o hello.wav
  # zero-shot: clone the voice of a recording, given its transcript
  cosyext synth --model-dir pretrained_models/CosyVoice2-0.5B --prompt-wav prompt.wav \\
      --prompt-text "What the prompt says." --text "Hello there." -o hello.wav
  # a training run's adapters applied in memory to the pretrained model (no merge), streaming
  cosyext synth --pretrained pretrained_models/CosyVoice2-0.5B --llm exp/llm --flow exp/flow \\
      --speaker my_voice --text "Hello there." --stream --seed 7 -o hello.wav
  # many utterances: one per line ('ID<TAB>text' or just text), one wav each in out/
  cosyext synth --model-dir serve/my_voice --text-file lines.txt -o out/

The upstream tree comes from --upstream, else ${UPSTREAM_ENV}, else the current directory. Output is
16-bit PCM (--format float: 32-bit float) at the model's sample rate; the same --seed gives the same
samples, offline and --stream. Nothing is downloaded: without --text-frontend the text goes to the
tokenizer as written (no normalisation, no network); --text-frontend turns on upstream's own text
normalisation (wetext, whose files ship inside its package).
"""

#: ID<TAB>text lines: the ID becomes a file name
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SUBTYPES = {"pcm16": "PCM_16", "float": "FLOAT"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="text to wav with upstream's CosyVoice2/CosyVoice3 (serve dir, or pretrained + adapters)",
        description="Synthesise speech with upstream's own inference classes from a verified tree: an exported "
        "serve dir (cosyext export --serve), or a pretrained dir with a training run's LoRA adapters applied in "
        "memory. A registered speaker (spk2info.pt) or a zero-shot prompt speaks.\n\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = p.add_argument_group("model (one of)")
    which = model.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-dir", metavar="DIR", type=Path, help="a serve dir 'cosyext export --serve' wrote "
                       "(or any complete CosyVoice2/CosyVoice3 model dir)")
    which.add_argument("--pretrained", metavar="DIR", type=Path, help="the pretrained model dir the adapters were "
                       "trained on")
    model.add_argument("--llm", metavar="RUN|CKPT", type=Path, help="with --pretrained: the llm training run "
                       "(--model_dir; best.yaml's epoch, else the latest) or one adapter checkpoint")
    model.add_argument("--flow", metavar="RUN|CKPT", type=Path, help="with --pretrained: the flow run or checkpoint")
    voice = p.add_argument_group("voice (default: the model dir's only or default registered speaker)")
    voice.add_argument("--speaker", metavar="NAME", help="a speaker registered in the model dir's spk2info.pt")
    voice.add_argument("--prompt-wav", metavar="WAV", type=Path, help="zero-shot: a recording of the voice "
                       "(>= 16 kHz, under 30 s)")
    voice.add_argument("--prompt-text", metavar="TEXT", help="zero-shot: the transcript of --prompt-wav")
    text = p.add_argument_group("text (one of)")
    what = text.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", metavar="TEXT", help="one utterance: -o is the wav file")
    what.add_argument("--text-file", metavar="FILE", type=Path, help="one utterance per line ('ID<TAB>text', or "
                      "text and the line number is the ID): -o is a directory of ID.wav")
    p.add_argument("-o", "--output", required=True, metavar="WAV|DIR", type=Path, help="output wav (--text) or "
                   "directory (--text-file)")
    p.add_argument("--force", action="store_true", help="replace wavs that exist already")
    p.add_argument("--format", choices=sorted(SUBTYPES), default="pcm16", help="sample format (default pcm16)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every line (default 0): the "
                   "same seed gives identical samples")
    p.add_argument("--stream", action="store_true", help="upstream's streaming path (chunked synthesis; the "
                   "wav holds all chunks)")
    p.add_argument("--text-frontend", action="store_true", help="upstream's text normalisation (wetext, files "
                   "shipped in the package, no download). Off by default: no normalisation and no network")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's own choice)")
    add_upstream_arg(p)
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Job:
    """One utterance: its text and the wav it becomes."""

    utt: str
    text: str
    out: Path


def run(args: argparse.Namespace) -> int:
    from ..synth import ModelSource, Speaker, Synthesizer, ZeroShot
    from ..synth import source as source_mod
    from ..synth import voices

    if args.pretrained is None and (args.llm or args.flow):
        raise UsageError("--llm/--flow adapters apply to --pretrained DIR, not to --model-dir (a serve dir holds "
                         "merged weights already)", hint="cosyext synth --pretrained DIR --llm RUN ...")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1", hint="leave it out for torch's default")
    source = (ModelSource.serve_dir(args.model_dir) if args.model_dir is not None
              else ModelSource.pretrained(args.pretrained, llm=args.llm, flow=args.flow))
    source_mod.check(source)
    for name, path in source.adapters.items():
        if not path.exists():
            raise UsageError(f"--{name} {path} does not exist",
                             hint=f"pass the {name} training run (its --model_dir) or one epoch_N_whole.pt in it")
    model_dir = Path(source.model_dir)
    voice = _voice(args, model_dir, ZeroShot, Speaker, voices)
    jobs = _jobs(args)
    _check_outputs(args, jobs, source, voice)
    upstream = upstream_root(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    say = lambda msg: print(f"[synth] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    start = time.perf_counter()
    syn = Synthesizer(upstream, source, text_frontend=args.text_frontend, lock_path=args.lock,
                      verbose=args.verbose, progress=say)
    say(f"{type(syn._cv).__name__}('{syn.model_dir}') from upstream {syn.tree.commit.label}, {syn.sample_rate} Hz, "
        f"{voices.describe(voice)}; loaded in {time.perf_counter() - start:.1f} s")
    if args.text_file is not None:
        args.output.mkdir(parents=True, exist_ok=True)
    total_audio = total_time = 0.0
    bar = _progress(jobs, args.text_file is not None)
    for job in bar:
        t0 = time.perf_counter()
        audio = syn.tts(job.text, voice, seed=args.seed, stream=args.stream)
        spent = time.perf_counter() - t0
        seconds = len(audio) / syn.sample_rate
        write_wav(job.out, audio, syn.sample_rate, SUBTYPES[args.format], force=args.force)
        total_audio, total_time = total_audio + seconds, total_time + spent
        if args.text_file is None:
            print(f"wrote {job.out} ({seconds:.2f} s at {syn.sample_rate} Hz; synthesised in {spent:.1f} s, "
                  f"real-time factor {spent / max(seconds, 1e-9):.2f})")
    if args.text_file is not None:
        print(f"wrote {len(jobs)} wav(s) to {args.output} ({total_audio:.1f} s of audio at {syn.sample_rate} Hz; "
              f"synthesised in {total_time:.1f} s, real-time factor {total_time / max(total_audio, 1e-9):.2f})")
    return 0


def _voice(args: argparse.Namespace, model_dir: Path, ZeroShot, Speaker, voices):
    """The voice the arguments name, checked (the default speaker when none is named)."""
    if args.prompt_wav is not None or args.prompt_text is not None:
        if args.speaker is not None:
            raise UsageError("--speaker and --prompt-wav/--prompt-text are two voices: give one",
                             hint="drop --speaker for zero-shot, or the prompt for the registered speaker")
        if args.prompt_wav is None or args.prompt_text is None:
            raise UsageError("zero-shot needs both --prompt-wav and --prompt-text (the recording's transcript)",
                             hint="cosyext synth ... --prompt-wav prompt.wav --prompt-text 'what it says'")
        voice = ZeroShot(args.prompt_wav, args.prompt_text)
        voices.check_prompt(voice)
        return voice
    name = args.speaker
    if name is None:
        name = voices.default_speaker(model_dir)
        if name is None:
            known = sorted(voices.read_speakers(model_dir))
            have = f"it registers {len(known)}: {', '.join(known[:20])}" if known else "it registers none"
            raise UsageError(f"no voice given and {model_dir} has no single or default speaker ({have})",
                             hint="pass --speaker NAME, or --prompt-wav WAV --prompt-text TEXT for zero-shot")
    voice = Speaker(name)
    voices.speaker_mode(model_dir, voice)
    return voice


def _jobs(args: argparse.Namespace) -> list[Job]:
    if args.text is not None:
        if not args.text.strip():
            raise UsageError("--text is empty", hint="cosyext synth ... --text 'something to say' -o out.wav")
        return [Job("text", args.text, args.output)]
    path: Path = args.text_file
    hint = "one utterance per line: 'ID<TAB>text' or just the text"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"--text-file {path} does not exist", hint=hint) from None
    except IsADirectoryError:
        raise UsageError(f"--text-file {path} is a directory", hint=hint) from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--text-file {path} is not UTF-8 text (byte {exc.start})", hint=hint) from None
    except OSError as exc:
        raise UsageError(f"cannot read --text-file {path}: {exc.strerror or exc}", hint=hint) from None
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise UsageError(f"--text-file {path} holds no text", hint=hint)
    width = max(4, len(str(len(lines))))
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for lineno, line in numbered:
        if "\t" in line:
            utt, text = (part.strip() for part in line.split("\t", 1))
        else:
            utt, text = f"{lineno:0{width}d}", line.strip()
        if not _ID.match(utt):
            raise UsageError(f"{path}:{lineno}: ID {utt!r} cannot be a file name (letters, digits, '.', '_', '-'; "
                             "not starting with '.' or '-')", hint=hint)
        if not text:
            raise UsageError(f"{path}:{lineno}: ID {utt!r} has no text after the tab", hint=hint)
        if utt in seen:
            raise UsageError(f"{path}:{lineno}: ID {utt!r} repeats line {seen[utt]}", hint="give each line its own ID")
        seen[utt] = lineno
        jobs.append(Job(utt, text, args.output / f"{utt}.wav"))
    return jobs


def _check_outputs(args: argparse.Namespace, jobs: list[Job], source, voice) -> None:
    """Never into a model dir or an adapter run, never over an input, never over a wav without --force."""
    from .. import safe_paths
    from ..synth.voices import ZeroShot

    out = safe_paths.entry(args.output)
    if args.text is not None and out.is_dir():
        raise UsageError(f"-o {args.output} is a directory; --text writes one wav file",
                         hint=f"pass a file name, e.g. -o {Path(args.output) / 'out.wav'}")
    if args.text_file is not None and out.exists() and not out.is_dir():
        raise UsageError(f"-o {args.output} is a file; --text-file writes a directory of wavs",
                         hint="pass a directory, e.g. -o out/")
    guarded = [("the model dir", Path(source.model_dir), True)]
    guarded += [(f"the --{name} adapter", Path(p), True) for name, p in source.adapters.items()]
    if isinstance(voice, ZeroShot):
        guarded.append(("--prompt-wav", voice.wav, False))
    if args.text_file is not None:
        guarded.append(("--text-file", args.text_file, False))
    targets = [out] if args.text is not None else [out, *(safe_paths.entry(j.out) for j in jobs)]
    for what, path, tree in guarded:
        real = path.expanduser().resolve()
        for target in targets:
            hit = safe_paths.at_or_inside(target, real) if tree else target == real
            if hit or safe_paths.same_file(target, real):
                raise UsageError(f"-o {args.output} would write {'into' if tree else 'over'} {what} {path}",
                                 hint="write the wavs somewhere else, e.g. -o out/ (synth never writes into inputs)")
    if args.text is not None and out.parent != out and not out.parent.is_dir():
        raise UsageError(f"the directory of -o {args.output} does not exist", hint=f"mkdir -p {out.parent}")
    if not args.force:
        existing = [j.out for j in jobs if os.path.lexists(j.out)]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise UsageError(f"{existing[0]} exists{more}; synth does not overwrite without --force",
                             hint="pass --force to replace it, or another -o")
    safe_paths.check_writable(out.parent if args.text is not None else out, f"-o {args.output}",
                              hint="pass -o somewhere you can write")


def _progress(jobs: list[Job], show: bool):
    if not show:
        return jobs
    from tqdm import tqdm

    return tqdm(jobs, desc="synth", unit="utt", file=sys.stderr, dynamic_ncols=True)


def write_wav(path: Path, audio, sample_rate: int, subtype: str = "PCM_16", *, force: bool = False) -> Path:
    """`audio` (float mono in [-1, 1]) as a wav at `path`, atomically: a temp file in its directory, renamed."""
    import numpy as np
    import soundfile

    path = Path(path)
    data = np.asarray(audio, dtype=np.float32).reshape(-1)
    if subtype == "PCM_16":
        data = np.clip(data, -1.0, 1.0)
    tmp = path.with_name(f".{path.name}.cosyext-tmp")
    try:
        soundfile.write(str(tmp), data, int(sample_rate), subtype=subtype, format="WAV")
        if not force and os.path.lexists(path):
            raise UsageError(f"{path} appeared while synthesising; synth does not overwrite without --force",
                             hint="pass --force to replace it, or another -o")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
