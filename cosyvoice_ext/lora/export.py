"""``cosyext export``: adapter (or merged) training checkpoints -> one stock ``llm.pt``/``flow.pt``.

Works for both families (CosyVoice2's Qwen2LM/CausalMaskedDiffWithXvec, CosyVoice3's
CosyVoice3LM/CausalMaskedDiffWithDiT): the stock model comes from the training config, so the
family is whatever that config builds, and preset targets resolve against it.

Each chosen checkpoint becomes merged stock weights (base + LoRA folded in, peft's ``merge()``),
optionally several are averaged (like upstream's ``average_model.py``, but over *merged* weights:
averaging LoRA A and B factors separately would not average the products), and the result is
checked to load with ``strict=True`` into the stock model built from the config before it is written.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
import yaml
from torch import nn

from .. import checkpoints
from ..early_stop import BEST_FILE, read_best
from ..errors import CheckpointError, EnvironmentProblem, UsageError
from . import adapter as adapter_io
from .base import compare, family_clash
from .config import SECTION, LoraSettings, parse_section
from .inject import inject, load_exact, lora_state, module_tensors
from .merge import merge_into_stock
from .targets import resolve_modules_to_save, resolve_targets

log = logging.getLogger("cosyvoice_ext.lora")
MODEL_KEYS = ("llm", "flow", "hift", "hifigan")
_EPOCH = re.compile(r"^epoch_(\d+)_whole(\.pt)?$")
DEEPSPEED_STATES = "mp_rank_00_model_states.pt"  # what DeepSpeed's save_checkpoint writes per tag

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Candidate:
    """One epoch checkpoint of a run, with its CV loss when the run recorded one."""

    epoch: int
    path: Path
    cv_loss: float | None


def add_upstream_to_path(upstream: str | os.PathLike | None) -> None:
    """Make ``cosyvoice`` and ``matcha`` importable from an upstream checkout."""
    if upstream:  # first on sys.path, even when already further down: --upstream names the tree to use
        root = Path(upstream).resolve()
        for p in (root / "third_party" / "Matcha-TTS", root):
            while str(p) in sys.path:
                sys.path.remove(str(p))
            sys.path.insert(0, str(p))
    try:
        import cosyvoice
    except ImportError as exc:
        raise EnvironmentProblem(
            f"upstream CosyVoice is not importable ({exc}); building the stock model needs it",
            hint="pass --upstream ~/CosyVoice (the tree 'cosyext apply-patches' prepared)") from exc
    where = Path(next(iter(cosyvoice.__path__))).resolve()
    if upstream and Path(upstream).resolve() not in where.parents:  # only in-process callers get here
        log.warning("cosyext export: cosyvoice was imported from %s before; --upstream %s does not replace it "
                    "in this process", where.parent, upstream)


def build_stock_model(config: str | os.PathLike, model: str, qwen_pretrain_path: str | None = None) -> nn.Module:
    """The stock model built from the training config the way train.py builds it (other models -> None)."""
    return load_configs(config, model, qwen_pretrain_path)[model]


def load_configs(config: str | os.PathLike, model: str, qwen_pretrain_path: str | None = None) -> dict:
    """The training config loaded as train.py loads it for ``--model model`` (runs the config's tags)."""
    from hyperpyyaml import load_hyperpyyaml

    text = Path(config).read_text(encoding="utf-8")
    present = set(re.findall(r"^([A-Za-z_]\w*)\s*:", text, flags=re.M))
    overrides = {k: None for k in MODEL_KEYS if k != model and k in present}
    if qwen_pretrain_path:
        overrides["qwen_pretrain_path"] = qwen_pretrain_path
    try:
        configs = load_hyperpyyaml(text, overrides=overrides)
    except Exception as exc:
        hint = "pass --qwen-pretrain-path DIR (as train.py's --qwen_pretrain_path)" if model == "llm" else \
            "pass the YAML you trained with; --upstream DIR if cosyvoice is not importable"
        raise UsageError(f"building the stock {model} from {config} failed: {exc!r}", hint=hint) from exc
    if not isinstance(configs.get(model), nn.Module):
        raise UsageError(f"config {config} has no '{model}' model", hint="pass the YAML you trained with")
    return configs


def run_candidates(run_dir: str | os.PathLike) -> list[Candidate]:
    """Epoch checkpoints of a run with the CV loss from ``epoch_N_whole.yaml``.

    torch DDP runs write ``epoch_N_whole.pt``; DeepSpeed runs a directory ``epoch_N_whole/``.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise UsageError(f"run directory {run} does not exist", hint="pass the --model_dir you trained with")
    out = []
    for p in sorted(run.iterdir()):
        m = _EPOCH.match(p.name)
        if not m or (p.is_dir() and not (p / DEEPSPEED_STATES).is_file()):
            continue
        path = p / DEEPSPEED_STATES if p.is_dir() else p
        out.append(Candidate(int(m.group(1)), path, _cv_loss(run / f"epoch_{m.group(1)}_whole.yaml")))
    if not out:
        raise UsageError(f"no epoch_*_whole.pt checkpoints in {run}", hint="train at least one epoch, or pass --checkpoint")
    return sorted(out, key=lambda c: c.epoch)


def choose(candidates: list[Candidate], average: int, val_best: bool) -> list[Candidate]:
    """The N best by CV loss (``val_best``), else the N latest epochs."""
    if average < 1:
        raise UsageError(f"--average must be >= 1, got {average}")
    if average > len(candidates):
        raise UsageError(f"--average {average} but the run has only {len(candidates)} epoch checkpoint(s)")
    if not val_best:
        return candidates[-average:]
    missing = [f"epoch_{c.epoch}_whole.yaml" for c in candidates if c.cv_loss is None]
    if missing:
        raise UsageError(f"--val-best needs the CV loss of every epoch; none in {', '.join(missing)}",
                         hint="drop --val-best to average the latest epochs")
    return sorted(candidates, key=lambda c: (c.cv_loss, c.epoch))[:average]


def merged_weights(stock: nn.Module, state: Mapping, path: str | os.PathLike, base_sha256: str | None,
                   settings: LoraSettings | None = None, name: str | None = None) -> "OrderedDict[str, torch.Tensor]":
    """Stock-keyed merged weights of one loaded checkpoint.

    An adapter is applied to ``stock``; a DeepSpeed model-states file holds the whole LoRA-injected
    model, merged with ``settings`` (the config's section); a full state dict is taken as it is.
    """
    if isinstance(state.get("module"), Mapping) and "ds_version" in state:
        module = state["module"]
        if any(".lora_" in k for k in module):
            if settings is None:
                raise UsageError(f"{path} holds LoRA weights but the config has no {SECTION}: section for this model",
                                 hint="pass the config the run was trained with")
            model = copy.deepcopy(stock)
            targets = resolve_targets(model, settings)
            inject(model, settings, targets, resolve_modules_to_save(model, settings, targets))
            try:
                model.load_state_dict(dict(module), strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"{path} does not fit the LoRA model of the config: {exc}",
                                      hint="pass the config the run was trained with") from exc
            merge_into_stock(model)
            return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
        state = module
    if not checkpoints.is_adapter(state):
        full = checkpoints.tensors(state)
        report = compare(stock, full)
        if report.missing or report.unexpected or report.shape_mismatch:
            raise CheckpointError(f"{path} is neither a cosyext adapter nor a full checkpoint of this model"
                                  f"{family_clash(stock, full, name)}: "
                                  f"{report.summary()}")
        return OrderedDict((k, full[k]) for k in stock.state_dict())
    ad = adapter_io.read(state, str(path))
    if ad.base_sha256 and base_sha256 and ad.base_sha256 != base_sha256:
        raise CheckpointError(
            f"adapter {path} was trained on base sha256 {ad.base_sha256[:12]} (recorded path {ad.base_path}), "
            f"--base has sha256 {base_sha256[:12]}", hint="pass the base checkpoint the adapter was trained on as --base")
    adapter_io.check_same_model(ad, stock, str(path))
    model = copy.deepcopy(stock)
    targets = resolve_targets(model, ad.settings)
    to_save = resolve_modules_to_save(model, ad.settings, targets)
    inject(model, ad.settings, targets, to_save)
    load_exact(model, ad.modules_to_save, f"adapter {path} (modules_to_save)", expected=set(module_tensors(model, to_save)))
    load_exact(model, ad.lora, f"adapter {path}", expected=set(lora_state(model)))
    merge_into_stock(model)
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())


def average(states: list[Mapping[str, torch.Tensor]]) -> "OrderedDict[str, torch.Tensor]":
    """Element-wise mean (float64 accumulation, original dtype); non-float tensors must agree and are kept."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, first in states[0].items():
        if first.is_floating_point():
            acc = torch.zeros(first.shape, dtype=torch.float64)
            for s in states:
                acc += s[key].to(torch.float64)
            out[key] = (acc / len(states)).to(first.dtype)
        else:
            if any(not torch.equal(s[key], first) for s in states[1:]):
                raise CheckpointError(f"cannot average {key}: a non-float tensor that differs between checkpoints")
            out[key] = first.clone()
    return out


def export(*, model: str, config: str | os.PathLike, out: str | os.PathLike, base: str | os.PathLike | None = None,
           checkpoint: str | os.PathLike | None = None, run_dir: str | os.PathLike | None = None, average_n: int = 1,
           val_best: bool = False, qwen_pretrain_path: str | None = None,
           progress: Progress = print, check_stock: Callable[[nn.Module], None] | None = None) -> Path:
    """Write the merged (optionally averaged) stock state dict and return its path.

    ``check_stock`` sees the stock model built from the config before anything is merged or written
    (``export --serve`` checks there that its family is the pretrained dir's).
    """
    if (checkpoint is None) == (run_dir is None):
        raise UsageError("give exactly one of --checkpoint FILE or --run DIR")
    if checkpoint is not None:
        if average_n != 1 or val_best:
            raise UsageError("--average/--val-best choose among a run's epochs: use them with --run DIR")
        path = Path(checkpoint)
        chosen = [Candidate(-1, path / DEEPSPEED_STATES if path.is_dir() else path, None)]
    else:
        chosen = _best_pointer(run_dir) if average_n == 1 and not val_best else None
        if chosen:
            progress(f"using the best checkpoint recorded by early stopping in {Path(run_dir) / BEST_FILE}")
        else:
            chosen = choose(run_candidates(run_dir), average_n, val_best)
    out_path = _output_path(out, model)

    configs = load_configs(config, model, qwen_pretrain_path)
    stock = configs[model]
    if check_stock is not None:
        check_stock(stock)
    settings = parse_section(configs).get(model)
    base_path = base or _recorded_base(checkpoints.load(chosen[0].path, mmap=True), chosen[0].path)
    base_sha = None
    if base_path is not None:
        base_sha = checkpoints.file_digest(base_path)
        base_state = checkpoints.load(base_path, mmap=True)
        report = compare(stock, base_state)
        if report.missing or report.unexpected or report.shape_mismatch:
            raise CheckpointError(f"base {base_path} does not load strictly into the stock {model}"
                                  f"{family_clash(stock, base_state, model)}: {report.summary()}",
                                  hint=f"pass the pretrained {model}.pt the adapter was trained on as --base")
        stock.load_state_dict(checkpoints.tensors(base_state), strict=True)
        del base_state
    states = []
    for i, cand in enumerate(chosen, 1):
        loss = f" (cv loss {cand.cv_loss:.6g})" if cand.cv_loss is not None else ""
        progress(f"[{i}/{len(chosen)}] merging {cand.path}{loss}")
        state = checkpoints.load(cand.path, mmap=True)
        if base_path is None and checkpoints.is_adapter(state):
            raise UsageError(f"{cand.path} is an adapter and no base checkpoint is known",
                             hint=f"pass --base pretrained/{model}.pt")
        states.append(merged_weights(stock, state, cand.path, base_sha, settings, name=model))
        del state
    if len(states) > 1:
        progress(f"averaging {len(states)} merged checkpoints: epochs {', '.join(str(c.epoch) for c in chosen)}")
    result = average(states) if len(states) > 1 else states[0]
    stock.load_state_dict(result, strict=True)  # the promise: a stock model loads it strictly
    checkpoints.save_atomic(result, out_path)
    progress(f"wrote {out_path}: {len(result)} tensors, loads into the stock {model} with strict=True")
    return out_path


def _best_pointer(run_dir: str | os.PathLike) -> list[Candidate] | None:
    """The checkpoint `best.yaml` names (written by the early-stop plugin), if it exists."""
    best = read_best(run_dir)
    if best is None:
        return None
    path = Path(run_dir) / str(best["checkpoint"])
    if path.is_dir():
        path = path / DEEPSPEED_STATES
    if not path.is_file():
        raise UsageError(f"{Path(run_dir) / BEST_FILE} points at {path}, which does not exist",
                         hint="pass --checkpoint FILE, or --average 1 --val-best to choose by CV loss")
    value = best.get("value")
    return [Candidate(int(best.get("epoch", -1)), path, float(value) if isinstance(value, (int, float)) else None)]


def _recorded_base(state: Mapping, path: Path) -> str | None:
    if not checkpoints.is_adapter(state):
        return None
    recorded = adapter_io.read(state, str(path)).base_path
    if recorded and not os.path.isfile(recorded):
        raise UsageError(f"adapter {path} was trained on {recorded}, which does not exist here",
                         hint="pass the base checkpoint with --base FILE")
    return recorded


def _output_path(out: str | os.PathLike, model: str) -> Path:
    out_s = str(out)
    p = Path(out_s)
    if p.is_dir() or out_s.endswith(("/", os.sep)):
        return p / f"{model}.pt"
    return p


def _cv_loss(yaml_path: Path) -> float | None:
    """``loss_dict.loss`` from upstream's info yaml, read as plain data (no python tags constructed)."""
    if not yaml_path.is_file():
        return None
    try:
        info = yaml.load(yaml_path.read_text(encoding="utf-8"), Loader=_PlainLoader)
        return float(info["loss_dict"]["loss"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader that reads unknown tags (``!!python/tuple`` ...) as plain data instead of failing."""


def _plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_PlainLoader.add_multi_constructor("", _plain)
