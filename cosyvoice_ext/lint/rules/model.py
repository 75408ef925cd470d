"""Lint rules CX3xx (model/feature alignment) and CX4xx (the ``cosyext:`` LoRA section).

Both families: the flow's token_frame_rate/token_mel_ratio keys are the same for CosyVoice2's
CausalMaskedDiffWithXvec and CosyVoice3's DiT flow; LoRA target names are checked against the
family the config's classes name."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Iterator

from cosyvoice_ext.lint import Issue, LintContext, Rule
from cosyvoice_ext.lint.document import RefError
from cosyvoice_ext.lint.pipeline import find, stages
from cosyvoice_ext.lint.target import fbank_trims, flow_frames_per_token
from cosyvoice_ext.lint.yamlpos import YMap, YNode, YScalar
from cosyvoice_ext.config_keys import is_unknown_key, unknown_key_message
from cosyvoice_ext.errors import ConfigError
from cosyvoice_ext.lora.config import MODELS, PRESETS

# Representative module names of CosyVoice2's models (DESIGN.md §7), for a static sanity check of
# target_modules; `cosyext` resolves targets against the real model at train time.
_LLM_LEAVES = [f"self_attn.{x}_proj" for x in "qkvo"] + [f"mlp.{x}_proj" for x in ("gate", "up", "down")]
_FLOW_ENC = [f"encoder.{b}.0.self_attn.linear_{x}" for b in ("encoders", "up_encoders") for x in ("q", "k", "v", "out")]
_FLOW_EST = [f"decoder.estimator.{b}_blocks.0.1.0.attn1.{x}" for b in ("down", "mid", "up")
             for x in ("to_q", "to_k", "to_v", "to_out.0")] + ["decoder.estimator.down_blocks.0.1.0.ff.net.2"]
SAMPLE_MODULES = {
    "llm": [f"llm.model.model.layers.0.{leaf}" for leaf in _LLM_LEAVES],
    "flow": _FLOW_ENC + _FLOW_EST,
}
# CosyVoice3 (DESIGN.md §11a): the same Qwen2 LLM names; the flow's estimator is a DiT (no encoder).
_DIT = [f"decoder.estimator.transformer_blocks.0.{x}" for x in
        ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.ff.0.0", "ff.ff.2", "attn_norm.linear")]
FAMILY_SAMPLE_MODULES = {
    "cosyvoice2": SAMPLE_MODULES,
    "cosyvoice3": {"llm": SAMPLE_MODULES["llm"], "flow": _DIT + ["decoder.estimator.input_embed.proj",
                                                             "decoder.estimator.proj_out"]},
}


def _family_name(ctx: LintContext, model: str) -> str:
    f = ctx.family.of(model) if ctx.family is not None else None
    return f.name if f is not None else "cosyvoice2"


def _presets(model: str, family: str) -> dict[str, str]:
    """The LoRA presets of a family (lora.config.presets_for when the installed cosyext has it)."""
    from cosyvoice_ext.lora import config as lora_config

    by_family = getattr(lora_config, "presets_for", None)
    return by_family(family, model) if by_family is not None else PRESETS[model]


def _feat(ctx: LintContext) -> YNode | None:
    st = find(stages(ctx.doc, "data_pipeline"), "compute_fbank")
    node = st.param_node(ctx.doc, "feat_extractor") if st else None
    try:
        node = ctx.doc.deref(node) if node is not None else ctx.doc.deref(ctx.doc.node("feat_extractor"))
    except RefError:
        return None
    return node if isinstance(node, YMap) else None


def _val(ctx: LintContext, node: YNode | None) -> Any:
    if node is None:
        return None
    try:
        v = ctx.doc.scalar(node)
    except RefError:
        return None
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _rate_pair(ctx: LintContext) -> tuple[Any, Any, YNode | None, YNode | None]:
    tfr_node = ctx.doc.node("flow", "input_frame_rate") or ctx.doc.node("token_frame_rate")
    tmr_node = ctx.doc.node("flow", "token_mel_ratio") or ctx.doc.node("token_mel_ratio")
    return _val(ctx, tfr_node), _val(ctx, tmr_node), tfr_node, tmr_node


def _misaligned(ctx: LintContext) -> str:
    """Severity of a mel/token mismatch: it stops the flow (a size mismatch in the first batch, seen at
    ace7c47) unless compute_fbank trims mels and tokens to each other (the 2025 token_mel_ratio
    keyword): then the flow trains, on targets that do not line up (seen at 44316c34)."""
    return "warning" if fbank_trims(ctx.doc) else "error"


def _alignment(ctx: LintContext) -> Iterator[Issue]:
    """The flow turns each speech token into a fixed number of mel frames (CosyVoice2: the encoder's
    Upsample1D, 2; CosyVoice3's DiT: token_mel_ratio), so the feature extractor must produce
    token_frame_rate x that many frames per second: sample_rate / hop_size (24000/480 = 50 = 25 x 2).
    Otherwise the mels and the upsampled tokens differ in length: an error where that stops the flow
    (the 2026 compute_fbank pads and trims nothing: ``RuntimeError: Sizes of tensors must match``,
    seen with hop_size 256), a warning where compute_fbank's token_mel_ratio trims both to each other
    (44316c34: the flow trains, on misaligned targets, seen)."""
    if "flow" not in ctx.models():
        return
    feat = _feat(ctx)
    if feat is None:
        return
    sr, hop = _val(ctx, feat.get("sampling_rate")), _val(ctx, feat.get("hop_size"))
    tfr = _rate_pair(ctx)[0]
    per_token = flow_frames_per_token(ctx.doc)
    if not (sr and hop and tfr and per_token):
        return
    if abs(sr / hop - tfr * per_token) > 1e-9:
        yield Issue(f"mel frame rate {sr:g}/{hop:g} = {sr / hop:g} Hz but the flow makes {per_token} mel frames of "
                    f"each of token_frame_rate {tfr:g} tokens per second = {tfr * per_token:g} Hz: mel targets and "
                    "upsampled tokens differ in length" + (" (compute_fbank's token_mel_ratio trims them to each "
                    "other, so it trains, misaligned)" if fbank_trims(ctx.doc) else
                    " and the flow stops at its first batch (RuntimeError: Sizes of tensors must match)"),
                    at=feat.get("hop_size") or feat, severity=_misaligned(ctx),
                    fix=f"hop_size: {sr / (tfr * per_token):g} (CosyVoice2: 24000/480 = 25 x 2)")


def _same_ref_fix(node: YNode | None, key: str, fix: str, other_side: str) -> str:
    """`fix` (point this value at `key`), unless it already is `!ref <key>`: then the other side is wrong."""
    already = isinstance(node, YScalar) and node.tag in ("!ref", "!copy") and node.raw.strip() == f"<{key}>"
    return other_side if already else fix


def _resample(ctx: LintContext) -> Iterator[Issue]:
    """Audio is resampled to resample_rate and then analysed as if it were at the feature extractor's
    rate: the mel frame rate becomes resample_rate / hop_size. Only the flow reads the mels: an error
    where that stops it (ace7c47: ``RuntimeError: Sizes of tensors must match``, seen with 16000 vs
    24000), a warning where compute_fbank's token_mel_ratio trims mels and tokens to each other and it
    trains on the wrong features (44316c34, seen); nothing for the LLM, which never sees them."""
    st = find(stages(ctx.doc, "data_pipeline"), "resample")
    feat = _feat(ctx)
    if st is None or feat is None:
        return
    rate = st.param(ctx.doc, "resample_rate")
    fsr = _val(ctx, feat.get("sampling_rate"))
    if isinstance(rate, (int, float)) and fsr and rate != fsr and "flow" in ctx.models():
        yield Issue(f"resample_rate {rate:g} differs from feat_extractor sampling_rate {fsr:g}: mels are computed "
                    "with the wrong filterbank and frame rate" + (", and the flow trains on them (compute_fbank's "
                    "token_mel_ratio trims mels and tokens to each other)" if fbank_trims(ctx.doc) else
                    ", so they no longer line up with the speech tokens and the flow stops at its first batch "
                    "(RuntimeError: Sizes of tensors must match)"), severity=_misaligned(ctx),
                    at=st.param_node(ctx.doc, "resample_rate") or st.item,
                    fix=_same_ref_fix(st.param_node(ctx.doc, "resample_rate"), "sample_rate",
                                      f"resample_rate: !ref <sample_rate> (= {fsr:g})",
                                      f"feat_extractor sampling_rate: !ref <sample_rate> (= {rate:g})"))


def _fbank_ratio(ctx: LintContext) -> Iterator[Issue]:
    """The 2025 compute_fbank trims mels to token_mel_ratio x tokens (and tokens to mels / ratio); the flow
    then needs exactly that many frames per token: CosyVoice2's encoder makes 2 of each token whatever
    the config's token_mel_ratio says, CosyVoice3's DiT token_mel_ratio. Seen at 44316c34 with
    token_mel_ratio 3 throughout: ``RuntimeError: Sizes of tensors must match`` at the first batch."""
    st = find(stages(ctx.doc, "data_pipeline"), "compute_fbank")
    if st is None or not st.has_param("token_mel_ratio"):
        return
    r = st.param(ctx.doc, "token_mel_ratio")
    per_token = flow_frames_per_token(ctx.doc)
    if isinstance(r, (int, float)) and r and per_token and r != per_token and "flow" in ctx.models():
        yield Issue(f"compute_fbank token_mel_ratio {r:g}, but the flow makes {per_token} mel frames of each token: "
                    "features are trimmed to the wrong length and the flow stops at its first batch (RuntimeError: "
                    "Sizes of tensors must match)", at=st.param_node(ctx.doc, "token_mel_ratio"),
                    fix=_same_ref_fix(st.param_node(ctx.doc, "token_mel_ratio"), "token_mel_ratio",
                                      "token_mel_ratio: !ref <token_mel_ratio>",
                                      "flow token_mel_ratio: !ref <token_mel_ratio>, the same value for both"))


def _truncate(ctx: LintContext) -> Iterator[Issue]:
    """Upstream's own comment: truncated audio must cover whole mel frames."""
    st = find(stages(ctx.doc, "data_pipeline_gan"), "truncate") or find(stages(ctx.doc, "data_pipeline"), "truncate")
    feat = _feat(ctx)
    if st is None or feat is None:
        return
    n, hop = st.param(ctx.doc, "truncate_length"), _val(ctx, feat.get("hop_size"))
    if isinstance(n, int) and hop and n % hop:
        yield Issue(f"truncate_length {n} is not a multiple of hop_size {hop:g}", at=st.param_node(ctx.doc, "truncate_length")
                    or st.item, fix=f"truncate_length: {int(n // hop * hop)}")


def _hidden(ctx: LintContext) -> Iterator[Issue]:
    """Qwen2LM projects between the Qwen hidden states and its own embeddings with these sizes; a mismatch fails with a
    shape error at the first batch."""
    if "llm" not in ctx.models():
        return
    qwen = ctx.options.get("qwen_pretrain_path") or ctx.doc.value("qwen_pretrain_path")
    if not isinstance(qwen, str) or not qwen:
        return
    cfg = Path(qwen).expanduser() / "config.json"
    if not cfg.is_file() and not Path(qwen).is_absolute():
        cfg = ctx.doc.dir / qwen / "config.json"
    try:
        hidden = json.loads(cfg.read_text(encoding="utf-8")).get("hidden_size")
    except (OSError, ValueError, AttributeError):
        return
    for key in ("llm_input_size", "llm_output_size"):
        node = ctx.doc.node("llm", key)
        v = _val(ctx, node)
        if isinstance(hidden, int) and v is not None and v != hidden:
            yield Issue(f"llm.{key} is {v:g} but the Qwen model in {qwen} has hidden_size {hidden}", at=node,
                        fix=f"{key}: {hidden}")


def _section(ctx: LintContext) -> YMap | None:
    n = ctx.doc.deref(ctx.doc.node("cosyext"))
    return n if isinstance(n, YMap) else None


def _node_for(ctx: LintContext, dotted: str, *, key: bool = False, exact: bool = False) -> YNode | None:
    """The node a ConfigError's dotted key names (``cosyext.llm.target_modules[1]``): the key itself when
    ``key`` (an unknown key), else its value; the nearest existing parent when it has neither (None when
    ``exact``)."""
    parts: list[Any] = []
    for p in dotted.split("."):
        m = re.match(r"^(.*?)((\[\d+\])*)$", p)
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    while parts:
        n = ctx.doc.key(*parts) if key and isinstance(parts[-1], str) else None
        n = n or ctx.doc.node(*parts)
        if n is not None or exact:
            return n
        parts.pop()
    return None


def _section_errors(ctx: LintContext, sec: YMap) -> Iterator[tuple[ConfigError, bool]]:
    """Every ``cosyext:`` key through the parser its plugin registered: the very function training start-up
    calls (:func:`cosyvoice_ext.plugins.check_config`). Yields (error, is it an unknown key); after an
    unknown key the parse goes on without it, so one run reports each unknown key and the first bad value."""
    from cosyvoice_ext.plugins import hooks, parse_section

    sections = hooks().register_config_sections()
    seen: set[str] = set()
    for k, _ in sec.items:
        if not isinstance(k, YScalar) or k.raw in seen:
            continue
        seen.add(k.raw)
        owner = sections.get(k.raw)
        if owner is None:
            yield ConfigError(unknown_key_message(k.raw, sorted(sections)), key=f"cosyext.{k.raw}"), True
            continue
        value = ctx.doc.value("cosyext", k.raw)
        dropped = False
        for _ in range(len(value) + 1 if isinstance(value, dict) else 1):
            try:
                parse_section(owner, value)
                break
            except ConfigError as exc:
                unknown = is_unknown_key(exc)
                if not unknown and dropped and _node_for(ctx, exc.key or "", exact=True) is None:
                    break  # a required key missing: most likely the misspelled one just reported
                yield exc, unknown
                parent, _, bad = (exc.key or "").rpartition(".")
                if not (unknown and parent == f"cosyext.{k.raw}" and isinstance(value, dict)):
                    break
                value, dropped = {kk: vv for kk, vv in value.items() if kk != bad}, True


def _schema(ctx: LintContext) -> Iterator[Issue]:
    """Each ``cosyext:`` key is checked by the parser its plugin registered, the same function training start-up
    calls: a value train.py would refuse is an error here, at its line, before you book a GPU."""
    root_node = ctx.doc.node("cosyext")
    if root_node is None or (isinstance(ctx.doc.deref(root_node), YScalar) and ctx.doc.value("cosyext") is None):
        return  # absent or empty: training ignores it too
    sec = _section(ctx)
    if sec is None:
        yield Issue("cosyext: must be a mapping of plugin sections (llm:, flow:, early_stop:, memory:, lint:, ...)",
                    at=root_node, fix="cosyext:\n  llm:\n    r: 16")
        return
    for exc, unknown in _section_errors(ctx, sec):
        if not unknown:
            yield Issue(str(exc), at=_node_for(ctx, exc.key or "cosyext"), fix=exc.hint or None)


def _unknown(ctx: LintContext) -> Iterator[Issue]:
    """A key no plugin registered (``early_stopp:``), or one its section does not have (``rank:``,
    ``gradient_checkpointng:``), is refused by training start-up with the closest valid key."""
    sec = _section(ctx)
    if sec is None:
        return
    for exc, unknown in _section_errors(ctx, sec):
        if unknown:
            yield Issue(str(exc), at=_node_for(ctx, exc.key or "cosyext", key=True), fix=exc.hint or None)


def _targets(ctx: LintContext) -> Iterator[Issue]:
    """A regex must match the full module name; a list entry must be a module name or dotted suffix. cosyext checks
    against the real model at train time; lint checks typical names early."""
    sec = _section(ctx)
    if sec is None:
        return
    for model in MODELS:
        node = ctx.doc.node("cosyext", model, "target_modules")
        if node is None:
            continue
        v = ctx.doc.value("cosyext", model, "target_modules")
        family = _family_name(ctx, model)
        samples = FAMILY_SAMPLE_MODULES[family][model]
        if isinstance(v, str) and v.strip():
            presets = _presets(model, family)
            regex = presets.get(v, v)
            try:
                hit = any(re.fullmatch(regex, s) for s in samples)
            except re.error:
                continue  # CX401 reports it
            if not hit:
                yield Issue(f"target_modules regex {v!r} matches none of the usual {family} {model} Linear "
                            f"modules (it must match the FULL module name, e.g. {samples[0]})", at=node,
                            fix=f"use a preset ({', '.join(presets)}) or a list of module-name suffixes")
        elif isinstance(v, list):
            items = ctx.doc.deref(node)
            for i, entry in enumerate(v):
                if isinstance(entry, str) and not any(s == entry or s.endswith("." + entry) for s in samples):
                    leaves = sorted({s.rsplit(".", 1)[-1] for s in samples})
                    close = difflib.get_close_matches(entry.rsplit(".", 1)[-1], leaves, n=1, cutoff=0.5)
                    yield Issue(f"target_modules entry '{entry}' is not a known {family} {model} Linear module name"
                                + (f"; did you mean '{close[0]}'?" if close else ""),
                                at=items.items[i] if hasattr(items, "items") and i < len(items.items) else node,
                                fix=f"{model} targets: {', '.join(leaves)}")


RULES = [
    Rule("CX301", "mel-token-alignment", "error", "Mel frame rate != token_frame_rate x token_mel_ratio (flow).",
         _alignment,
         example="feat_extractor: !name:matcha.utils.audio.mel_spectrogram\n  sampling_rate: 24000\n  hop_size: 256",
         fix="hop_size = sample_rate / (token_frame_rate x token_mel_ratio)."),
    Rule("CX302", "resample-vs-feature-rate", "error", "resample_rate differs from feat_extractor's sampling_rate.",
         _resample,
         example="resample: !name:cosyvoice.dataset.processor.resample\n  resample_rate: 22050",
         fix="resample_rate: !ref <sample_rate>."),
    Rule("CX303", "fbank-token-ratio", "error", "compute_fbank token_mel_ratio differs from the model's.", _fbank_ratio,
         example="compute_fbank: !name:cosyvoice.dataset.processor.compute_fbank\n  token_mel_ratio: 3",
         fix="token_mel_ratio: !ref <token_mel_ratio>."),
    Rule("CX304", "truncate-hop", "warning", "truncate_length is not a multiple of hop_size.", _truncate,
         example="truncate: !name:cosyvoice.dataset.processor.truncate\n  truncate_length: 24100",
         fix="Round truncate_length down to a multiple of hop_size."),
    Rule("CX305", "llm-hidden-size", "error", "llm_input_size/llm_output_size differ from the Qwen model's hidden size.",
         _hidden,
         example="llm: !new:cosyvoice.llm.llm.Qwen2LM\n  llm_input_size: 1024   # Qwen2-0.5B has 896",
         fix="Set both to the Qwen config.json hidden_size."),
    Rule("CX401", "cosyext-schema", "error", "A value in the cosyext: section has the wrong type or range.", _schema,
         example="cosyext:\n  llm:\n    r: 0\n    dropout: 1.5", fix="Use a value the key's plugin accepts (the "
         "message says which; docs/lora.md, docs/memory.md, docs/plugins.md)."),
    Rule("CX402", "cosyext-unknown-key", "error", "An unknown key in the cosyext: section (with a suggestion).", _unknown,
         example="cosyext:\n  llm:\n    rank: 16", fix="Use the suggested key."),
    Rule("CX403", "cosyext-targets", "warning", "target_modules names no usual Linear module of the model.", _targets,
         example="cosyext:\n  llm:\n    target_modules: [q_prj]", fix="Use a preset or the suggested name."),
]
