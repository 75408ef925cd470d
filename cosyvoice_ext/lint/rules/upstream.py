"""Lint rules that depend on the model family and the upstream a config targets (see
cosyvoice_ext.lint.target): CX306-CX308 (the 2026 pipeline's mel/token alignment, the flow's
streaming chunk, one family per config) and CX505-CX507 (names the upstream lacks, train.py's
``--onnx_path``, the model keys train.py overrides).

What each rule says upstream does was seen by running ace7c47's own Dataset and models (tiny sizes,
CPU) on the rule's failing config; the docstrings quote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from cosyvoice_ext import family as fam_mod
from cosyvoice_ext.lint import Issue, LintContext, Rule
from cosyvoice_ext.lint.pipeline import find, stages
from cosyvoice_ext.lint.target import NEW_ONLY, OLD_ONLY_KWARGS, fbank_stage, trained_families
from cosyvoice_ext.lint.yamlpos import YMap, YScalar

from .model import _feat, _rate_pair, _val

#: upstream's streaming inference decodes this many tokens per chunk (cli/model.py, both commits:
#: "token_hop_len = 25  # NOTE must matching training static_chunk_size")
TOKEN_HOP_LEN = 25


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _sample_rate(ctx: LintContext) -> float | None:
    feat = _feat(ctx)
    return (_val(ctx, feat.get("sampling_rate")) if feat is not None else None) or ctx.doc.number("sample_rate")


def _num_frames(ctx: LintContext) -> Iterator[Issue]:
    """Since 2026 (ace7c47) compute_fbank pads the audio to a multiple of num_frames samples instead of trimming the
    features; the flow then needs mel frames = token_mel_ratio x tokens, which holds only for num_frames =
    sample_rate / token_frame_rate (960). Seen with the DiT flow: RuntimeError: Sizes of tensors must match
    (dit.py:96) for num_frames 1000 or none; AssertionError in compute_whisper_fbank when its num_frames does not
    divide compute_fbank's.

    ace7c47's compute_fbank zero-pads the audio to a multiple of ``num_frames`` samples and no longer trims, so a
    flow batch lines up only if ``num_frames`` = samples per speech token (sample_rate / token_frame_rate = hop_size
    x token_mel_ratio; 24000 / 25 = 960). Seen with the DiT flow: num_frames 1000 -> ``RuntimeError: Sizes of
    tensors must match ... Expected size 125 but got size 124`` (dit.py:96); no num_frames on audio off the 40 ms
    grid -> the same with 123 vs 124; compute_whisper_fbank num_frames 1920 with compute_fbank's 960 ->
    ``AssertionError: speech length is not aligned with speech_token``."""
    fb = fbank_stage(ctx.doc)
    if fb is None:
        return
    sr, (tfr, _, _, _) = _sample_rate(ctx), _rate_pair(ctx)
    want = sr / tfr if sr and tfr else None
    nf = _int(fb.param(ctx.doc, "num_frames")) if fb.has_param("num_frames") else None
    nf = None if nf == -1 else nf  # upstream's default: no padding
    if nf is not None and want and nf != want:
        yield Issue(f"compute_fbank num_frames is {nf}, but one speech token covers sample_rate / token_frame_rate = "
                    f"{sr:g} / {tfr:g} = {want:g} samples: audio is padded to the wrong grid and the flow's mel frames "
                    "and upsampled tokens differ in length (RuntimeError: Sizes of tensors must match)",
                    at=fb.param_node(ctx.doc, "num_frames"), fix=f"num_frames: {want:g}")
    elif (nf is None and not fb.has_param("token_mel_ratio") and "flow" in ctx.models()
          and ctx.upstream is not None and ctx.upstream.onnx_flag):
        yield Issue("compute_fbank has no num_frames: this upstream's compute_fbank neither pads the audio to whole "
                    "speech tokens nor trims the features, so for audio that is not a whole number of tokens long "
                    "the flow's mel frames and token_mel_ratio x tokens differ (RuntimeError: Sizes of tensors must "
                    f"match) [{ctx.upstream.source}]", at=fb.item,
                    fix=f"add num_frames: {want:g}" if want else "add num_frames: 960 (24 kHz, 25 tokens/s)")
    wh = find(stages(ctx.doc, "data_pipeline"), "compute_whisper_fbank")
    wnf = _int(wh.param(ctx.doc, "num_frames")) if wh is not None and wh.has_param("num_frames") else None
    if wnf is not None and wnf > 0 and (nf is None or nf <= 0 or nf % wnf):
        yield Issue(f"compute_whisper_fbank num_frames {wnf} does not divide compute_fbank's num_frames "
                    f"({nf if nf is not None else 'none'}): it asserts the padded audio is a multiple of {wnf} "
                    "samples and stops training (AssertionError: speech length is not aligned with speech_token)",
                    at=wh.param_node(ctx.doc, "num_frames") if nf and nf > 0 else fb.item,
                    fix=(f"num_frames: {nf} here too (compute_fbank's)" if nf and nf > 0 else
                         f"give compute_fbank num_frames: {f'{want:g}' if want else wnf} (compute_whisper_fbank "
                         "needs the audio padded to whole tokens)"))


def _static_chunk(ctx: LintContext) -> Iterator[Issue]:
    """Upstream's streaming inference decodes 25 tokens per step and its code says this must match the training
    static_chunk_size (mel frames). Training runs either way (seen), so only streaming quality suffers.

    Upstream's streaming inference (cli/model.py) decodes 25 tokens per step and says it "must match training
    static_chunk_size" (in mel frames: 25 x token_mel_ratio = 50). Seen: training with 36 runs normally, so nothing
    but streaming quality shows it."""
    if "flow" not in ctx.models():
        return
    node = ctx.doc.node("flow", "decoder", "estimator", "static_chunk_size")
    v, (_, tmr, _, _) = _int(ctx.doc.value("flow", "decoder", "estimator", "static_chunk_size")), _rate_pair(ctx)
    if node is None or v is None or not tmr:
        return
    want = TOKEN_HOP_LEN * tmr
    if v != want:
        via_chunk = isinstance(node, YScalar) and "<chunk_size>" in node.raw and ctx.doc.node("chunk_size") is not None
        yield Issue(f"the flow estimator's static_chunk_size is {v} mel frames, but upstream's streaming inference "
                    f"decodes {TOKEN_HOP_LEN} tokens at a time = {TOKEN_HOP_LEN} x token_mel_ratio {tmr:g} = {want:g} "
                    "frames: the model is trained on chunks it never sees when streaming", at=node,
                    fix=f"chunk_size: {TOKEN_HOP_LEN} (static_chunk_size is computed from it)" if via_chunk else
                    f"static_chunk_size: {want:g} (e.g. !ref <chunk_size> * <token_mel_ratio> with chunk_size: 25)")


def _family_mix(ctx: LintContext) -> Iterator[Issue]:
    """CosyVoice2 and CosyVoice3 use different speech tokenizers (v2, v3) and text special tokens; a config mixing them
    trains models that do not fit together."""
    cf = ctx.family
    if cf is None or cf.family is None:
        return
    if cf.mixed:
        llm, flow = cf.of("llm"), cf.of("flow")
        yield Issue(f"llm is {cf.classes['llm']} ({llm.name}) but flow is {cf.classes['flow']} ({flow.name}): the "
                    f"two families use different speech tokenizers ({llm.speech_tokenizer} vs {flow.speech_tokenizer}), "
                    "so one model's tokens mean nothing to the other", at=ctx.doc.node("flow") or ctx.doc.root.start,
                    fix="use both models of one family (upstream's cosyvoice2.yaml or cosyvoice3.yaml recipe)")
    gt = ctx.doc.deref(ctx.doc.node("get_tokenizer"))
    call = gt.call if gt is not None else None
    if not (call and call[1].endswith("get_qwen_tokenizer") and isinstance(gt, YMap)):
        return
    version = ctx.doc.value("get_tokenizer", "version", default="cosyvoice2")
    fam = cf.of("llm") or cf.family
    if isinstance(version, str) and version in fam_mod.FAMILIES and version != fam.name:
        yield Issue(f"get_qwen_tokenizer version is {version!r} but the config's models are {fam.name}: text is "
                    f"tokenized with the other family's special tokens (upstream's {fam.name} recipe and inference "
                    f"use version: {fam.name})", at=gt.get("version") or gt, fix=f"version: {fam.name}")


def _symbols(ctx: LintContext) -> Iterator[Issue]:
    """Configs are written for one upstream commit: the 2025 compute_fbank takes token_mel_ratio, the 2026 one
    num_frames; CosyVoice3 classes and compute_whisper_fbank exist only since 2026. With --upstream DIR lint reads
    the tree's sources (ast, never imported) and checks every cosyvoice.* name and keyword.

    With ``--upstream DIR``: every ``cosyvoice.*`` class/function the config names must exist in that tree and
    accept the keywords given (read with ast, never imported). Without it, only what contradicts itself: 2026-only
    names next to the 2025 compute_fbank keyword. Seen at ace7c47: ``TypeError: compute_fbank() got an unexpected
    keyword argument 'token_mel_ratio'``."""
    up = ctx.upstream
    if up is not None and up.symbols is not None:
        yield from _symbols_in_tree(ctx, up)
        return
    new = sorted({n.call[1] for _, n in ctx.doc.nodes() if n.call and n.call[1] in NEW_ONLY})
    if not new:
        return
    fb = fbank_stage(ctx.doc)
    for kw in OLD_ONLY_KWARGS.get("compute_fbank", ()):
        if fb is not None and fb.has_param(kw):
            yield Issue(f"compute_fbank {kw}: the config also names {new[0]}, which exists only in the 2026 upstream, "
                        f"and there compute_fbank takes num_frames, not {kw} (TypeError: compute_fbank() got an "
                        f"unexpected keyword argument '{kw}')",
                        at=fb.target.key_node(kw) if isinstance(fb.target, YMap) else fb.item,
                        fix="replace it by num_frames: 960 (sample_rate / token_frame_rate)")


def _overridden(ctx: LintContext) -> set[str]:
    """Top-level model keys train.py replaces by None before anything under them is built (so a name
    there that the upstream lacks never matters): every model it does not train."""
    trained = set(ctx.models())
    if not trained:
        return set()
    return set(OVERRIDDEN) - trained - ({"hift"} if ctx.model == "hifigan" else set())


def _symbols_in_tree(ctx: LintContext, up: Any) -> Iterator[Issue]:
    seen: set[int] = set()
    skip = _overridden(ctx)
    for path, node in ctx.doc.nodes():
        call = node.call
        if not call or call[0] not in ("new", "name", "apply") or id(node) in seen or (path and path[0] in skip):
            continue
        seen.add(id(node))
        qual = call[1]
        if not qual.startswith("cosyvoice."):
            continue
        defined, sig = up.symbols.lookup(qual)
        if not defined:
            yield Issue(f"{qual} does not exist in the upstream at {up.path} (HyperPyYAML fails to load the config)",
                        at=node, fix="use a config written for this upstream commit (its examples/*/conf), or "
                                     "point --upstream at the tree you train with")
            continue
        if sig is None:
            continue
        if call[0] == "new" and isinstance(node, (YMap, YScalar)):
            given = set(node.keys()) if isinstance(node, YMap) else set()
            missing = [p for p in sig.required if p not in given]
            if missing:
                yield Issue(f"{qual.rsplit('.', 1)[-1]}() in the upstream at {up.path} requires "
                            f"{', '.join(missing)}, which this !new: does not give: TypeError when the config is "
                            "loaded", at=node, fix=f"add {', '.join(f'{m}: ...' for m in missing)} under this key "
                            "(moved elsewhere by mistake?)")
        if not isinstance(node, YMap):
            continue
        for k, _ in node.items:
            if isinstance(k, YScalar) and not sig.accepts(k.raw):
                takes = ", ".join(p for p in sig.params if p not in ("data", "mode")) or "nothing"
                yield Issue(f"{qual.rsplit('.', 1)[-1]}() in the upstream at {up.path} has no argument '{k.raw}' "
                            f"(it takes {takes}): TypeError when it is called", at=k,
                            fix=f"remove or rename {k.raw} (a config for another upstream commit?)")


# --- train.py's config load ---------------------------------------------------------------------

#: train.py (both commits) loads the config with {k: None for k in these if k != args.model}
OVERRIDDEN = ("llm", "flow", "hift", "hifigan")


def _override_keys(ctx: LintContext) -> Iterator[Issue]:
    """train.py loads the config with overrides {k: None} for every model it does not train, and HyperPyYAML's
    load_hyperpyyaml (overrides_must_match=True) raises ``KeyError: "Override 'hift' not found in: ['llm',
    'flow']"`` when the key is absent (seen). Both supported commits do this.

    The 2026 train.py (ace7c47) also overrides ``qwen_pretrain_path`` when it gets ``--qwen_pretrain_path``,
    so a config without that key fails the same way (seen); the 2025 one retries the load without it.
    Checked when lint is told the flag (``--qwen-pretrain-path``)."""
    root = ctx.doc.root
    if not any(root.get(m) is not None for m in ("llm", "flow")):
        return  # not a training config (a fragment, an included file)
    missing = [k for k in OVERRIDDEN if k != ctx.model and root.key_node(k) is None]
    if ctx.model is None:  # the model to train must exist anyway (CX504 when it is named)
        missing = [k for k in missing if k not in ("llm", "flow") or root.key_node(k) is None]
    up = ctx.upstream
    if (ctx.options.get("qwen_pretrain_path") and root.key_node("qwen_pretrain_path") is None
            and up is not None and up.qwen_key_required):
        yield Issue("no top-level qwen_pretrain_path: train.py given --qwen_pretrain_path (as you told lint with "
                    "--qwen-pretrain-path) overrides that key, and HyperPyYAML refuses to override a key the config "
                    f"lacks (KeyError: \"Override 'qwen_pretrain_path' not found\") [{up.source}]", at=root.start,
                    fix="add qwen_pretrain_path: '' at the top level (train.py's flag sets it) and refer to it with "
                        "!ref <qwen_pretrain_path>")
    if missing:
        yield Issue(f"no top-level {', '.join(missing)}: train.py loads the config with overrides "
                    f"{{{', '.join(f'{k}: None' for k in OVERRIDDEN if k != ctx.model)}}} for the models it does not "
                    f"train, and HyperPyYAML refuses to override a key the config lacks (KeyError: \"Override "
                    f"'{missing[0]}' not found in: [...]\")", at=root.start,
                    fix=" and ".join(f"{k}: null" for k in missing) + " (null is enough when you do not train it)")


# --- train.py --onnx_path ----------------------------------------------------------------------

def _model_node(ctx: LintContext):
    for m in ctx.models():
        n = ctx.doc.key(m)
        if n is not None:
            return n
    return ctx.doc.root.start


def _onnx_files(ctx: LintContext) -> tuple[list[str], str]:
    fams = trained_families(ctx.family, ctx.models()) if ctx.family else []
    if not fams:
        return [fam_mod.CAMPPLUS, "speech_tokenizer_v2.batch.onnx (CosyVoice2) or speech_tokenizer_v3.batch.onnx "
                "(CosyVoice3)"], "the model"
    files = [fam_mod.CAMPPLUS, *dict.fromkeys(f.speech_tokenizer_batch for f in fams)]
    return files, " and ".join(f.inference_class for f in fams)


def _onnx_path(ctx: LintContext) -> Iterator[Issue]:
    """The 2026 upstream's train.py stops without --onnx_path. With cosyext's patches, --onnx_path '' trains on the
    data's precomputed speech_token and embeddings (cosyext prepare); --onnx_path DIR loads DIR/campplus.onnx and
    the family's speech_tokenizer_v2/v3.batch.onnx and computes a feature from the audio wherever the data has no
    column for it (slower; tokens need compute_whisper_fbank); columns that are there are used as they are. Info by
    default; an error when --onnx-path names a choice that cannot work (no features in the data, DIR lacking files,
    empty feature columns), a warning when the data forces online extraction.

    At ace7c47 (+ cosyext's patch 0009) ``--onnx_path DIR`` loads DIR/campplus.onnx and the family's batch tokenizer
    and extracts a feature online only where the data lacks its column (upstream: ``if 'speech_token' not in
    batch``); ``--onnx_path ''`` uses the data's features. Seen with precomputed features: no speech_token column ->
    ``KeyError: 'speech_token'`` (filter), no embedding columns -> ``AttributeError: 'NoneType' object has no
    attribute 'inference'``, empty embeddings -> ``mat1 and mat2 shapes cannot be multiplied``, empty tokens -> the
    row is dropped."""
    if ctx.model == "hifigan" or not ctx.models():
        return
    up = ctx.upstream
    given = ctx.options.get("onnx_path")
    feats = ctx.data.features if ctx.data is not None else None
    files, who = _onnx_files(ctx)
    at = _model_node(ctx)
    online_dir = f"--onnx_path DIR with {' + '.join(files)} in DIR"
    prepare = "cosyext prepare --pretrained DIR writes speech_token and embeddings"
    if feats is not None and feats.unusable:  # no --onnx_path choice trains on these rows
        yield Issue(f"the data has feature columns without usable values ({feats.describe()}): with --onnx_path '' "
                    "rows without tokens are dropped and empty embeddings crash, and --onnx_path DIR uses the "
                    "columns as they are (online extraction happens only where a column is absent)",
                    at=at, severity="error" if given is not None else "warning",
                    fix=f"{prepare} (not --no-features), or drop those columns to have them extracted online")
        return
    if up is None or up.onnx_flag is None:
        if given is None and feats is not None and not feats.precomputed:
            yield Issue(f"the data lacks precomputed features ({feats.describe()}): only an upstream with online "
                        f"extraction can train on it (train.py {online_dir}); the 2025 upstream cannot",
                        at=at, severity="warning", fix=f"{prepare}; or lint with --upstream DIR to learn what "
                        "your train.py accepts")
        if given is None:
            return
    if up is not None and up.onnx_flag is False:
        if given is not None:
            yield Issue(f"train.py of this upstream has no --onnx_path ({up.source}): passing it stops train.py "
                        "(argparse: unrecognized arguments)", at=at, severity="error" if up.from_tree else "warning",
                        fix="drop --onnx_path; this upstream always trains on the data's speech_token and embeddings")
        if feats is not None and not feats.precomputed:
            yield Issue(f"this upstream has no online feature extraction and trains only on precomputed features, but "
                        f"the data lacks them ({feats.describe()}) ({up.source})", at=at, severity="error",
                        fix=prepare)
        return
    src = f" [{up.source}]" if up is not None and up.onnx_flag else ""
    unpatched = up is not None and up.empty_means_precomputed is False
    if given is None:
        if feats is not None and not feats.precomputed:
            yield Issue(f"train.py needs --onnx_path here, and the data lacks precomputed features "
                        f"({feats.describe()}): online extraction is required: pass {online_dir} ({who}; absent "
                        f"columns are computed from the audio at every step, which is slower){src}", at=at,
                        severity="warning", fix=f"train.py {online_dir}; or {prepare} and pass --onnx_path ''")
            return
        checked = "the data carries them" if feats is not None else \
            "lint with --data to check the data carries them"
        if unpatched:
            checked += f"; this tree is unpatched: run cosyext apply-patches --upstream {up.path} first, stock " \
                       "upstream treats '' as online too"
        yield Issue(f"train.py needs --onnx_path here (without it it stops with TypeError: str expected, not "
                    f"NoneType): pass --onnx_path '' to train on the data's precomputed speech_token and embeddings "
                    f"({prepare}; {checked}), or {online_dir} to compute them from the audio where the data has no "
                    f"such columns ({who}; slower){src}", at=at,
                    fix="tell lint what you will pass with --onnx-path '' or --onnx-path DIR to have it checked")
        return
    if given == "":
        if unpatched:
            yield Issue(f"--onnx_path '' : this tree's cosyvoice/utils/onnx.py is unpatched and switches online "
                        "features on for any value, so campplus.onnx is looked up in the working directory "
                        f"(onnxruntime NO_SUCHFILE){src}", at=at, severity="error",
                        fix=f"cosyext apply-patches --upstream {up.path}, then --onnx_path ''")
        if feats is not None and not feats.precomputed:
            yield Issue(f"--onnx_path '' trains on the data's precomputed features, but the data lacks them "
                        f"({feats.describe()}): without a speech_token column the filter stops with KeyError, "
                        "without embedding columns parse_embedding stops with AttributeError", at=at,
                        severity="error", fix=f"{prepare}; or train.py {online_dir}")
        return
    d = Path(given).expanduser()
    if not d.is_dir():
        yield Issue(f"--onnx_path {given}: no such directory; online extraction loads {' and '.join(files)} from it",
                    at=at, severity="error", fix=f"a directory holding {', '.join(files)} (a pretrained model dir "
                    "has campplus.onnx; the batch tokenizer is a separate export)")
        return
    missing = [f for f in files if " " not in f and not (d / f).is_file()]
    if missing:
        yield Issue(f"--onnx_path {given} lacks {', '.join(missing)}: online extraction loads "
                    f"{' and '.join(files)} from it at start-up ({who}){src}", at=at, severity="error",
                    fix=f"put {', '.join(missing)} into {given}, or train on precomputed features with --onnx_path ''")
    wh = find(stages(ctx.doc, "data_pipeline"), "compute_whisper_fbank")
    if wh is None and (feats is None or feats.tokens_absent):
        yield Issue("online speech tokens are computed from whisper_feat, which only the compute_whisper_fbank stage "
                    "adds: without it the model reads batch['whisper_feat'] and stops with a KeyError",
                    at=ctx.doc.root.key_node("data_pipeline") or at, severity="error",
                    fix="add !ref <compute_whisper_fbank> after parse_embedding (num_frames as compute_fbank's)")
    if feats is not None and feats.precomputed and not missing:
        yield Issue(f"--onnx_path {given}: the data carries every feature column, so nothing is extracted online "
                    "(upstream computes a feature only where its column is absent); the ONNX models are loaded "
                    "for nothing", at=at, fix="--onnx_path '' (same training, faster start)")


RULES = [
    Rule("CX306", "fbank-num-frames", "error",
         "compute_fbank/compute_whisper_fbank num_frames do not match one speech token of audio (2026 upstream).",
         _num_frames,
         example="compute_fbank: !name:cosyvoice.dataset.processor.compute_fbank\n  feat_extractor: !ref <feat_extractor>"
                 "\n  num_frames: 1000",
         fix="num_frames: 960 (= 24000 / 25) in compute_fbank and compute_whisper_fbank."),
    Rule("CX307", "static-chunk-size", "warning",
         "The flow estimator's static_chunk_size is not 25 tokens x token_mel_ratio.", _static_chunk,
         example="estimator: !new:cosyvoice.flow.DiT.dit.DiT\n  static_chunk_size: 36",
         fix="static_chunk_size: !ref <chunk_size> * <token_mel_ratio> with chunk_size: 25."),
    Rule("CX308", "family-consistency", "warning",
         "llm and flow of different families, or a tokenizer version of the other family.", _family_mix,
         example="llm: !new:cosyvoice.llm.llm.Qwen2LM\nflow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithDiT",
         fix="Both models and get_qwen_tokenizer's version from one family."),
    Rule("CX505", "upstream-symbols", "error",
         "The config names a class, function or argument the targeted upstream does not have.", _symbols,
         example="llm: !new:cosyvoice.llm.llm.CosyVoice3LM\ncompute_fbank: !name:cosyvoice.dataset.processor.compute_fbank"
                 "\n  token_mel_ratio: 2",
         fix="Use the recipe config of the commit you train with (examples/libritts/*/conf)."),
    Rule("CX507", "override-keys", "error", "The config lacks a model key train.py overrides (llm, flow, hift, hifigan).",
         _override_keys,
         example="llm: !new:cosyvoice.llm.llm.Qwen2LM\nflow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithXvec\n"
                 "# no hift:, no hifigan:",
         fix="hift: null and hifigan: null (or the recipe's vocoder sections)."),
    Rule("CX506", "onnx-path", "info",
         "What to pass as train.py --onnx_path (2026 upstream), and whether the data and DIR allow it.", _onnx_path,
         uses_data=True,
         example="# cosyext lint conf.yaml --data data.list --onnx-path ''   (data made with --no-features)",
         fix="--onnx_path '' with prepared data, or --onnx_path DIR holding the family's ONNX files."),
]
