"""Mutations of the tiny CosyVoice2/CosyVoice3 configs: delete a key, change a type, a value at a
boundary or past it, move a section, reorder or drop a pipeline stage.

A mutation is a list of text edits on the block-style YAML that `cosyvoice_ext.tiny.config`
renders (keys found by indentation, nothing parsed or executed), so a mutated config keeps every
tag, comment and position of the original except what the mutation changes. Which mutations run on
which setup (family @ upstream commit) is part of the spec: a mutation that names a stage or key only
one generation has runs only there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

Path_ = tuple[str, ...]


class MutationError(ValueError):
    """The edit does not apply to this config (a key or text it names is not there)."""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    """A line that ends a block when it is indented no deeper than the block's key (not blank, not a
    comment, not the closing bracket of a flow sequence such as data_pipeline's)."""
    s = line.strip()
    return bool(s) and not s.startswith("#") and not s.startswith("]")


def find_block(lines: list[str], path: Path_) -> tuple[int, int]:
    """[start, end) line indexes of the key at `path` and everything nested under it."""
    lo, hi, parent_indent = 0, len(lines), -1
    start = -1
    for key in path:
        child_indent = None
        start = -1
        for i in range(lo, hi):
            line = lines[i]
            if not _content(line) or _indent(line) <= parent_indent:
                continue
            child_indent = _indent(line) if child_indent is None else child_indent
            if _indent(line) == child_indent and line.strip().startswith(f"{key}:"):
                start = i
                break
        if start < 0:
            raise MutationError(f"no key {'.'.join(path)} in the config")
        end = start + 1
        while end < hi and not (_content(lines[end]) and _indent(lines[end]) <= _indent(lines[start])):
            end += 1
        while end > start + 1 and not lines[end - 1].strip():
            end -= 1  # trailing blank lines belong to what follows
        lo, hi, parent_indent = start + 1, end, _indent(lines[start])
    return start, hi


def delete(path: Path_) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        s, e = find_block(lines, path)
        return lines[:s] + lines[e:]
    return edit


def set_value(path: Path_, value: str) -> Callable[[list[str]], list[str]]:
    """`key: value`, replacing the old value and anything nested under it."""
    def edit(lines: list[str]) -> list[str]:
        s, e = find_block(lines, path)
        return lines[:s] + [" " * _indent(lines[s]) + f"{path[-1]}: {value}"] + lines[e:]
    return edit


def add(parent: Path_, key: str, value: str) -> Callable[[list[str]], list[str]]:
    """A new `key: value` as the last child of `parent`."""
    def edit(lines: list[str]) -> list[str]:
        s, e = find_block(lines, parent)
        return lines[:e] + [" " * (_indent(lines[s]) + 4) + f"{key}: {value}"] + lines[e:]
    return edit


def rename(path: Path_, new: str) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        s, _ = find_block(lines, path)
        ind = _indent(lines[s])
        rest = lines[s].strip()[len(path[-1]) + 1:]
        return lines[:s] + [" " * ind + new + ":" + rest] + lines[s + 1:]
    return edit


def move(path: Path_, dest: Path_) -> Callable[[list[str]], list[str]]:
    """Cut the block at `path` and paste it as the last child of `dest` (() = top level)."""
    def edit(lines: list[str]) -> list[str]:
        s, e = find_block(lines, path)
        block = lines[s:e]
        rest = lines[:s] + lines[e:]
        shift = -_indent(block[0])
        if dest:
            ds, de = find_block(rest, dest)
            shift += _indent(rest[ds]) + 4
            at = de
        else:
            at = len(rest)
        moved = [(" " * (_indent(x) + shift) + x.lstrip(" ")) if x.strip() else x for x in block]
        return rest[:at] + moved + rest[at:]
    return edit


def replace(old: str, new: str) -> Callable[[list[str]], list[str]]:
    """Raw text replacement (exactly one occurrence), e.g. a pipeline entry."""
    def edit(lines: list[str]) -> list[str]:
        text = "\n".join(lines)
        if text.count(old) != 1:
            raise MutationError(f"{old!r} occurs {text.count(old)} times in the config, expected once")
        return text.replace(old, new).split("\n")
    return edit


def drop_stage(name: str) -> Callable[[list[str]], list[str]]:
    return replace(f"    !ref <{name}>,\n", "")


def swap_stages(a: str, b: str) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        ia, ib = lines.index(f"    !ref <{a}>,"), lines.index(f"    !ref <{b}>,")
        out = list(lines)
        out[ia], out[ib] = out[ib], out[ia]
        return out
    return edit


@dataclass(frozen=True)
class Mutation:
    """One corpus entry's recipe: `id` names the file, `model` is what train.py trains (--model)."""

    id: str
    what: str
    model: str
    edits: tuple[Callable[[list[str]], list[str]], ...] = ()
    #: setups (``family@rev``) it applies to; empty: all
    only: tuple[str, ...] = field(default=())

    def applies(self, setup: str) -> bool:
        return not self.only or any(setup == o or setup.endswith("@" + o) or setup.startswith(o + "@")
                                    for o in self.only)

    def apply(self, text: str) -> str:
        lines = text.split("\n")
        for edit in self.edits:
            lines = edit(lines)
        out = "\n".join(lines)
        if self.edits and out == text:
            raise MutationError(f"mutation {self.id} changed nothing")
        return out


TC = ("train_conf",)
OLD, NEW = "44316c34", "ace7c47"
#: train_conf and data-pipeline mutations run on one setup per commit (CosyVoice2 at 44316c34, CosyVoice3
#: at ace7c47): the executor and processors they reach are the same code for both families of a commit.
#: Mutations marked ALL run on CosyVoice2 at ace7c47 as well.
CORE = ("cosyvoice2@" + OLD, "cosyvoice3@" + NEW)
ALL = ("all",)


def M(id: str, what: str, *edits, model: str = "llm", only: tuple[str, ...] = CORE) -> Mutation:  # noqa: N802
    return Mutation(id, what, model, tuple(edits), () if only == ALL else only)


#: Every mutation, in corpus order. Keys were chosen as the ones train.py, the executor and the data
#: pipeline read; each gets deleted, a wrong type, its boundary and a value past it where that means
#: something. `model` is flow only where the key matters to the flow alone.
MUTATIONS: tuple[Mutation, ...] = (
    M("base-llm", "the tiny config unchanged, --model llm", only=ALL),
    M("base-flow", "the tiny config unchanged, --model flow", model="flow", only=ALL),
    # --- train_conf: deleted keys ---------------------------------------------------------------
    M("del-train_conf", "train_conf deleted", delete(TC)),
    M("del-optim", "train_conf.optim deleted", delete(TC + ("optim",)), only=ALL),
    M("del-optim_conf", "train_conf.optim_conf deleted", delete(TC + ("optim_conf",))),
    M("del-lr", "train_conf.optim_conf.lr deleted (optim_conf is left empty: null)", delete(TC + ("optim_conf", "lr"))),
    M("lr-default", "optim_conf: {} (torch's default lr applies)", set_value(TC + ("optim_conf",), "{}")),
    M("del-scheduler", "train_conf.scheduler deleted", delete(TC + ("scheduler",))),
    M("del-scheduler_conf", "train_conf.scheduler_conf deleted (constantlr)", delete(TC + ("scheduler_conf",))),
    M("del-max_epoch", "train_conf.max_epoch deleted", delete(TC + ("max_epoch",))),
    M("del-grad_clip", "train_conf.grad_clip deleted", delete(TC + ("grad_clip",))),
    M("del-accum_grad", "train_conf.accum_grad deleted", delete(TC + ("accum_grad",))),
    M("del-log_interval", "train_conf.log_interval deleted", delete(TC + ("log_interval",))),
    M("del-save_per_step", "train_conf.save_per_step deleted", delete(TC + ("save_per_step",))),
    # --- train_conf: types, boundaries, past them ------------------------------------------------
    M("max_epoch-0", "max_epoch 0 (boundary: no epoch)", set_value(TC + ("max_epoch",), "0"), only=ALL),
    M("max_epoch-1", "max_epoch 1 (the smallest that trains)", set_value(TC + ("max_epoch",), "1")),
    M("max_epoch-str", "max_epoch '2' (a string)", set_value(TC + ("max_epoch",), "'2'")),
    M("max_epoch-float", "max_epoch 2.0 (a float)", set_value(TC + ("max_epoch",), "2.0")),
    M("accum_grad-0", "accum_grad 0 (past the boundary)", set_value(TC + ("accum_grad",), "0")),
    M("accum_grad-float", "accum_grad 1.0 (a float)", set_value(TC + ("accum_grad",), "1.0")),
    M("accum_grad-big", "accum_grad 64 (more batches than an epoch has)", set_value(TC + ("accum_grad",), "64")),
    M("log_interval-0", "log_interval 0 (past the boundary)", set_value(TC + ("log_interval",), "0")),
    M("log_interval-big", "log_interval 1000 (longer than an epoch)", set_value(TC + ("log_interval",), "1000")),
    M("grad_clip-0", "grad_clip 0 (boundary)", set_value(TC + ("grad_clip",), "0"), only=ALL),
    M("grad_clip-neg", "grad_clip -1 (past the boundary)", set_value(TC + ("grad_clip",), "-1")),
    M("grad_clip-str", "grad_clip '5' (a string)", set_value(TC + ("grad_clip",), "'5'")),
    M("lr-0", "lr 0 (boundary)", set_value(TC + ("optim_conf", "lr"), "0")),
    M("lr-neg", "lr -0.001 (past the boundary)", set_value(TC + ("optim_conf", "lr"), "-0.001")),
    M("lr-str", "lr '0.001' (a string)", set_value(TC + ("optim_conf", "lr"), "'0.001'")),
    M("lr-exp", "lr 1e-3 (exponent notation)", set_value(TC + ("optim_conf", "lr"), "1e-3")),
    M("optim-sgd", "optim sgd (not supported)", set_value(TC + ("optim",), "sgd")),
    M("optim-adamw", "optim adamw", set_value(TC + ("optim",), "adamw")),
    M("scheduler-typo", "scheduler constantLR (wrong case)", set_value(TC + ("scheduler",), "constantLR")),
    M("scheduler-warmuplr", "scheduler warmuplr with scheduler_conf {} (default warmup)",
      set_value(TC + ("scheduler",), "warmuplr")),
    M("scheduler-warmuplr-0", "warmuplr with warmup_steps 0 (boundary)", set_value(TC + ("scheduler",), "warmuplr"),
      set_value(TC + ("scheduler_conf",), "{warmup_steps: 0}")),
    M("scheduler-noam", "scheduler NoamHoldAnnealing with scheduler_conf {}",
      set_value(TC + ("scheduler",), "NoamHoldAnnealing")),
    M("constantlr-conf", "constantlr with scheduler_conf {warmup_steps: 10}",
      set_value(TC + ("scheduler_conf",), "{warmup_steps: 10}")),
    M("save_per_step-1", "save_per_step 1 (a CV pass and a checkpoint after every step)",
      set_value(TC + ("save_per_step",), "1")),
    # --- sections renamed or moved ---------------------------------------------------------------
    M("rename-train_conf", "train_conf renamed trian_conf", rename(TC, "trian_conf")),
    M("rename-accum_grad", "train_conf.accum_grad renamed acum_grad", rename(TC + ("accum_grad",), "acum_grad")),
    M("move-optim_conf-top", "optim_conf moved from train_conf to the top level", move(TC + ("optim_conf",), ())),
    M("move-max_epoch-gan", "max_epoch moved from train_conf into train_conf_gan",
      delete(("train_conf_gan", "max_epoch")), move(TC + ("max_epoch",), ("train_conf_gan",))),
    M("move-filter-params", "filter's token_max_length moved under tokenize",
      move(("filter", "token_max_length"), ("tokenize",))),
    M("move-sampling-top", "llm.sampling moved to the top level", move(("llm", "sampling"), ()), only=ALL),
    # --- top-level keys train.py needs -------------------------------------------------------------
    M("del-hift", "hift deleted (train.py overrides it)", delete(("hift",)), only=ALL),
    M("del-flow-for-llm", "flow deleted, training the llm", delete(("flow",)), only=ALL),
    M("del-qwen_pretrain_path", "qwen_pretrain_path deleted (train.py overrides it)",
      delete(("qwen_pretrain_path",)), replace("token_path: !ref <qwen_pretrain_path>", "token_path: __QWEN_DIR__"),
      replace("pretrain_path: !ref <qwen_pretrain_path>", "pretrain_path: __QWEN_DIR__"), only=ALL),
    M("ref-typo", "a !ref to a missing key", replace("!ref <parquet_opener>", "!ref <parquet_openr>")),
    M("llm_input_size-32", "llm_input_size 32 (the Qwen hidden size is 64)", set_value(("llm_input_size",), "32"), only=ALL),
    # --- data pipeline: stages and their bounds ----------------------------------------------------
    M("drop-filter", "data_pipeline without filter", drop_stage("filter")),
    M("drop-shuffle", "data_pipeline without shuffle", drop_stage("shuffle")),
    M("drop-sort", "data_pipeline without sort", drop_stage("sort")),
    M("drop-resample", "data_pipeline without resample", drop_stage("resample")),
    M("drop-parse_embedding", "data_pipeline without parse_embedding", drop_stage("parse_embedding"), only=ALL),
    M("drop-tokenize", "data_pipeline without tokenize", drop_stage("tokenize")),
    M("swap-sort-batch", "batch before sort", swap_stages("sort", "batch"), only=ALL),
    M("swap-batch-padding", "padding before batch", swap_stages("batch", "padding")),
    M("swap-filter-tokenize", "filter before tokenize", swap_stages("tokenize", "filter")),
    M("token_max_length-0", "filter token_max_length 0 (past the boundary)",
      set_value(("filter", "token_max_length"), "0"), only=ALL),
    M("token_max_length-1", "filter token_max_length 1 (shorter than every transcript)",
      set_value(("filter", "token_max_length"), "1")),
    M("token_min_length-big", "filter token_min_length 1000 (longer than every transcript)",
      set_value(("filter", "token_min_length"), "1000")),
    M("max_length-min", "filter max_length = min_length (boundary)", set_value(("filter", "max_length"), "10")),
    M("min_length-big", "filter min_length 100000 (longer than every utterance)",
      set_value(("filter", "min_length"), "100000")),
    M("max_length-str", "filter max_length '40960' (a string)", set_value(("filter", "max_length"), "'40960'")),
    M("shuffle_size-0", "shuffle_size 0 (past the boundary)", set_value(("shuffle", "shuffle_size"), "0")),
    M("sort_size-0", "sort_size 0 (past the boundary)", set_value(("sort", "sort_size"), "0")),
    M("sort_size-big", "sort_size 1000 > shuffle_size", set_value(("sort", "sort_size"), "1000")),
    M("batch_type-typo", "batch_type dynamc", set_value(("batch", "batch_type"), "'dynamc'")),
    M("batch_type-static", "batch_type static (default batch_size 16)", set_value(("batch", "batch_type"), "'static'")),
    M("mfib-0", "max_frames_in_batch 0 (past the boundary)", set_value(("batch", "max_frames_in_batch"), "0")),
    M("mfib-small", "max_frames_in_batch 100 (shorter than the longest utterance)",
      set_value(("batch", "max_frames_in_batch"), "100"), only=ALL),
    M("mfib-str", "max_frames_in_batch '2000' (a string)", set_value(("batch", "max_frames_in_batch"), "'2000'")),
    # --- flow: features and alignment --------------------------------------------------------------
    M("resample-16k-flow", "resample_rate 16000 (feat_extractor stays 24000), --model flow",
      set_value(("resample", "resample_rate"), "16000"), model="flow", only=ALL),
    M("hop-256-flow", "feat_extractor hop_size 256, --model flow", set_value(("feat_extractor", "hop_size"), "256"),
      model="flow", only=ALL),
    M("token_mel_ratio-3-flow", "token_mel_ratio 3, --model flow", set_value(("token_mel_ratio",), "3"), model="flow", only=ALL),
    M("num_frames-1000-flow", "compute_fbank num_frames 1000, --model flow",
      set_value(("compute_fbank", "num_frames"), "1000"), model="flow", only=(NEW,)),
    M("fbank-old-kwarg", "compute_fbank token_mel_ratio (the 2025 keyword) on the 2026 upstream, --model flow",
      set_value(("compute_fbank", "num_frames"), "!ref <token_mel_ratio>"),
      rename(("compute_fbank", "num_frames"), "token_mel_ratio"), model="flow", only=(NEW,)),
    M("fbank-new-kwarg", "compute_fbank num_frames (the 2026 keyword) on the 2025 upstream, --model flow",
      set_value(("compute_fbank", "token_mel_ratio"), "960"), rename(("compute_fbank", "token_mel_ratio"), "num_frames"),
      model="flow", only=(OLD,)),
    M("cv3-llm-on-2025", "llm class CosyVoice3LM on the 2025 upstream",
      replace("!new:cosyvoice.llm.llm.Qwen2LM", "!new:cosyvoice.llm.llm.CosyVoice3LM"), only=("cosyvoice2@" + OLD,)),
    M("whisper-num_frames-1920-flow", "compute_whisper_fbank num_frames 1920 (compute_fbank pads to 960), --model flow",
      set_value(("compute_whisper_fbank", "num_frames"), "1920"), model="flow", only=(NEW,)),
    M("tokenizer-version-cv2", "get_qwen_tokenizer version cosyvoice2 in the CosyVoice3 config",
      set_value(("get_tokenizer", "version"), "cosyvoice2"), only=("cosyvoice3@" + NEW,)),
    M("static_chunk-36-flow", "estimator static_chunk_size 36, --model flow",
      set_value(("flow", "decoder", "estimator", "static_chunk_size"), "36"), model="flow", only=ALL),
)


def by_id(mutation_id: str) -> Mutation:
    for m in MUTATIONS:
        if m.id == mutation_id:
            return m
    raise KeyError(mutation_id)
