"""``cosyext export``: adapter (or merged) training checkpoints -> one stock ``llm.pt``/``flow.pt``,
or a model directory upstream inference serves. All of export is in this package; the command
module only turns arguments into a :class:`Request`.

Works for both families (CosyVoice2's Qwen2LM/CausalMaskedDiffWithXvec, CosyVoice3's
CosyVoice3LM/CausalMaskedDiffWithDiT): the stock model comes from the training config, so the
family is whatever that config builds, and preset targets resolve against it.

Each chosen checkpoint becomes merged stock weights (base + LoRA folded in, peft's ``merge()``),
optionally several are averaged (like upstream's ``average_model.py``, but over *merged* weights:
averaging LoRA A and B factors separately would not average the products), and the result is
checked to be finite and to load with ``strict=True`` into the stock model built from the config
before it is written.

The order is the promise "nothing lost": every check that can fail on the user's files (arguments,
the checkpoints chosen, the outputs against the inputs, writability, the speaker data and what a
serving directory already holds) runs before the slow merge, and the merge runs before anything is
written.

- :mod:`.runs`     which checkpoints: ``--checkpoint``, or a run's ``best.yaml``, latest or N best epochs
- :mod:`.stock`    the stock model, built from the training config as train.py builds it
- :mod:`.weights`  merging, averaging, and the finite-value check
- :mod:`.outputs`  where an export may write (never over or into its inputs)
- :mod:`.serve`    the model directory for ``CosyVoice2(DIR)`` / ``CosyVoice3(DIR)``
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ... import checkpoints
from ... import family as families
from ...errors import CheckpointError, UsageError
from ..base import compare, family_clash
from ..config import parse_section
from . import outputs, serve
from .runs import DEEPSPEED_STATES, Candidate, Progress, choose, run_candidates, select
from .stock import add_upstream_to_path, build_stock_model, load_configs, read_config
from .weights import average, check_finite, merged_weights, recorded_base

__all__ = ["DEEPSPEED_STATES", "Candidate", "Request", "Result", "add_upstream_to_path", "average",
           "build_stock_model", "choose", "export", "load_configs", "merged_weights", "run", "run_candidates"]


@dataclass(frozen=True)
class Request:
    """One export, as the command line gives it. ``output`` keeps a trailing '/' (a directory)."""

    model: str
    config: str | os.PathLike
    output: str
    run_dir: str | os.PathLike | None = None
    checkpoint: str | os.PathLike | None = None
    base: str | os.PathLike | None = None
    average: int = 1
    val_best: bool = False
    qwen_pretrain_path: str | None = None
    upstream: str | os.PathLike | None = None
    serve: str | os.PathLike | None = None
    copy: bool = False
    speaker_data: str | os.PathLike | None = None
    speaker: str | None = None
    speaker_name: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Result:
    model_file: Path
    #: the serving directory and the inference class that opens it (``--serve``), else None
    model_dir: Path | None = None
    inference_class: str | None = None


def export(*, model: str, config: str | os.PathLike, out: str | os.PathLike, base: str | os.PathLike | None = None,
           checkpoint: str | os.PathLike | None = None, run_dir: str | os.PathLike | None = None, average_n: int = 1,
           val_best: bool = False, qwen_pretrain_path: str | None = None, progress: Progress = print) -> Path:
    """Write the merged (optionally averaged) stock state dict and return its path (no ``--serve``)."""
    return run(Request(model=model, config=config, output=str(out), run_dir=run_dir, checkpoint=checkpoint,
                       base=base, average=average_n, val_best=val_best, qwen_pretrain_path=qwen_pretrain_path),
               progress).model_file


def run(req: Request, progress: Progress = print) -> Result:
    """The whole export: checks first, then the merge, then the writes (see the module docstring)."""
    if not req.serve and (req.speaker_data or req.speaker or req.speaker_name or req.copy):
        raise UsageError("--speaker-data/--speaker/--speaker-name/--copy only apply with --serve PRETRAINED_DIR")
    read_config(req.config)
    pretrained = Path(req.serve).expanduser().resolve() if req.serve else None
    fam = serve.check_pretrained(pretrained) if pretrained else None
    chosen = select(req.run_dir, req.checkpoint, req.average, req.val_best, progress)
    base = _base(req, chosen[0])
    for path in [*(c.path for c in chosen[1:]), *([base] if base is not None else [])]:
        checkpoints.verify(path)  # readable, complete, every zip member's CRC intact
        checkpoints.load(path, mmap=True)

    target, model_dir, writes = _plan(req, pretrained)
    outputs.refuse_overlap(req.output, writes, _inputs(req, chosen, base, pretrained))
    outputs.check_writable(target.parent, req.output)
    speaker = None
    if model_dir is not None:
        if req.speaker_data:
            spk, embedding = serve.speaker_embedding(Path(req.speaker_data), req.speaker)
            speaker = (req.speaker_name or spk, embedding)
            serve.existing_speakers(pretrained, model_dir)
            serve.read_speaker_config(model_dir)

    add_upstream_to_path(req.upstream)
    result = _merge(req, chosen, base, fam, pretrained, progress)
    with outputs.writing(target):
        checkpoints.save_atomic(result, target)
        progress(f"wrote {target}: {len(result)} tensors, loads into the stock {req.model} with strict=True")
        if model_dir is None:
            return Result(target)
        serve.assemble(pretrained, model_dir, req.model, fam, copy=req.copy, speaker=speaker,
                       description=req.description, progress=progress)
    return Result(target, model_dir, fam.inference_class)


def _base(req: Request, first: Candidate) -> str | os.PathLike | None:
    """``--base``, else the base the first adapter records; the first checkpoint is checked on the way
    (readable, zip CRCs intact, an adapter of ``--model``)."""
    checkpoints.verify(first.path)
    state = checkpoints.load(first.path, mmap=True)
    recorded = recorded_base(state, first.path, req.model, must_exist=req.base is None)
    base = req.base if req.base is not None else recorded
    if base is None and checkpoints.is_adapter(state):
        raise UsageError(f"{first.path} is an adapter and no base checkpoint is known",
                         hint=f"pass --base pretrained/{req.model}.pt")
    return base


def _plan(req: Request, pretrained: Path | None) -> tuple[Path, Path | None, list[Path]]:
    """(the model file, the serving dir or None, every path the export writes, as entries)."""
    if pretrained is None:
        out = Path(req.output)
        target = out / f"{req.model}.pt" if out.is_dir() or req.output.endswith(("/", os.sep)) else out
        return target, None, [outputs.entry(target)]
    model_dir = Path(req.output)
    if model_dir.exists() and not model_dir.is_dir():
        raise UsageError(f"-o {req.output} is a file; with --serve, -o is the model directory to write",
                         hint="pass a new directory, e.g. -o serve/my_voice")
    real = model_dir.resolve()  # writes go into the folder a link names
    names = {f"{req.model}.pt", serve.SPK2INFO, serve.SPEAKER_CONFIG, *(p.name for p in pretrained.iterdir())}
    return model_dir / f"{req.model}.pt", model_dir, [real, *(real / n for n in sorted(names))]


def _inputs(req: Request, chosen: list[Candidate], base: str | os.PathLike | None,
            pretrained: Path | None) -> list[outputs.Input]:
    """Everything this export reads, as :mod:`.outputs` guards it."""
    Input = outputs.Input
    found = [Input("--config", Path(req.config))]
    if req.checkpoint is not None:
        found.append(Input("--checkpoint", Path(req.checkpoint), tree=Path(req.checkpoint).is_dir()))
    if req.run_dir is not None:
        found.append(Input("--run", Path(req.run_dir), tree=True))
        found += [Input(f"the checkpoint chosen from --run {req.run_dir}", c.path) for c in chosen]
    if base is not None:
        found.append(Input("--base" if req.base is not None else "the base checkpoint the adapter records",
                           Path(base)))
    if pretrained is not None:
        found.append(Input("--serve", Path(req.serve), tree=True))
    if base is not None:
        found += outputs.pretrained_dirs(base)
    if req.qwen_pretrain_path:
        found.append(Input("--qwen-pretrain-path", Path(req.qwen_pretrain_path), tree=True))
    if req.speaker_data:
        found.append(Input("--speaker-data", Path(req.speaker_data)))
    return found


def _merge(req: Request, chosen: list[Candidate], base: str | os.PathLike | None, fam: families.Family | None,
           pretrained: Path | None, progress: Progress):
    """The merged (optionally averaged) stock weights, checked finite and strict-loadable."""
    configs = load_configs(req.config, req.model, req.qwen_pretrain_path)
    stock = configs[req.model]
    if fam is not None:
        _check_family(stock, fam, req, pretrained)
    settings = parse_section(configs).get(req.model)
    base_sha = None
    if base is not None:
        base_state = checkpoints.load(base, mmap=True)
        base_sha = checkpoints.file_digest(base)
        report = compare(stock, base_state)
        if report.missing or report.unexpected or report.shape_mismatch:
            raise CheckpointError(f"base {base} does not load strictly into the stock {req.model}"
                                  f"{family_clash(stock, base_state, req.model)}: {report.summary()}",
                                  hint=f"pass the pretrained {req.model}.pt the adapter was trained on as --base")
        check_finite(checkpoints.tensors(base_state), f"base {base}")
        stock.load_state_dict(checkpoints.tensors(base_state), strict=True)
        del base_state
    states = []
    for i, cand in enumerate(chosen, 1):
        loss = f" (cv loss {cand.cv_loss:.6g})" if cand.cv_loss is not None else ""
        progress(f"[{i}/{len(chosen)}] merging {cand.path}{loss}")
        state = checkpoints.load(cand.path, mmap=True)
        if base is None and checkpoints.is_adapter(state):
            raise UsageError(f"{cand.path} is an adapter and no base checkpoint is known",
                             hint=f"pass --base pretrained/{req.model}.pt")
        states.append(merged_weights(stock, state, cand.path, base_sha, settings, name=req.model))
        del state
    if len(states) > 1:
        progress(f"averaging {len(states)} merged checkpoints: epochs {', '.join(str(c.epoch) for c in chosen)}")
    result = average(states) if len(states) > 1 else states[0]
    check_finite(result, "the merged weights")
    stock.load_state_dict(result, strict=True)  # the promise: a stock model loads it strictly
    return result


def _check_family(stock, fam: families.Family, req: Request, pretrained: Path | None) -> None:
    """The merged file must fit the yaml of the model dir it goes into."""
    from ..targets import describe_model, model_family

    got = model_family(stock)
    if got is not None and got is not fam:  # a class no family claims: the user knows their model
        raise UsageError(f"--config {req.config} builds {describe_model(stock)} but --serve {pretrained} is "
                         f"a {fam.inference_class} model dir ({fam.config_name})",
                         hint="pass the pretrained dir of the family the run trained "
                         "(CosyVoice2-0.5B for CosyVoice2 configs, Fun-CosyVoice3-0.5B for CosyVoice3)")
