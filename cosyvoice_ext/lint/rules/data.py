"""Lint rules CX6xx: data-aware checks (``cosyext lint --data data.list``), from a replay of
upstream's pipeline on header-level lengths (see cosyvoice_ext.lint.data_analysis)."""

from __future__ import annotations

from typing import Iterator

from cosyvoice_ext.lint import Issue, LintContext, Rule
from cosyvoice_ext.lint.pipeline import find, stages
from cosyvoice_ext.lint.simulate import DROP_REASONS


def _batch_node(ctx: LintContext):
    st = find(stages(ctx.doc, "data_pipeline"), "batch")
    return (st.param_node(ctx.doc, "max_frames_in_batch") or st.item) if st else None


def _failed(ctx: LintContext) -> Iterator[Issue]:
    """Without lengths and token counts the CX6xx checks cannot say anything."""
    d = ctx.data
    empty = d.no_utterances()
    if d.error:
        yield Issue(f"data-aware analysis of {d.data_list} not possible: {d.error}", at=None,
                    fix="fix the data list / tokenizer path, or lint without --data")
    elif empty:
        yield Issue(f"the data list {d.data_list} yields no utterances: {empty}; train.py would start, read nothing "
                    "and train on zero samples", at=None,
                    fix="point --data (and train.py's --train_data) at a data.list of parquet shards with rows, "
                        "e.g. the one cosyext prepare writes")
    elif d.unreadable_shards:
        yield Issue(f"{len(d.unreadable_shards)} data.list entr{'y' if len(d.unreadable_shards) == 1 else 'ies'} "
                    f"cannot be opened (upstream logs a warning and skips them): {d.unreadable_shards[:3]}",
                    at=None, severity="warning", fix="fix or remove those lines")


def _drops(ctx: LintContext) -> Iterator[Issue]:
    """Drops are silent upstream; a run on 0 kept samples 'trains' for hours doing nothing."""
    d = ctx.data
    if d.error or not d.total:
        return
    dropped = sum(d.dropped.values())
    if not dropped:
        return
    top = max(d.dropped, key=d.dropped.get)
    st = find(stages(ctx.doc, "data_pipeline"), "filter")
    param = top if top in ("min_length", "max_length", "token_min_length", "token_max_length",
                           "min_output_input_ratio", "max_output_input_ratio") else None
    at = (st.param_node(ctx.doc, param) if st and param else None) or (st.item if st else None)
    reasons = "; ".join(f"{n} {DROP_REASONS.get(k, k)}" for k, n in sorted(d.dropped.items(), key=lambda kv: -kv[1]))
    if d.kept == 0:
        yield Issue(f"the pipeline drops ALL {d.total} utterances ({reasons}): every epoch is empty", at=at,
                    severity="error", fix=f"relax filter {param or 'bounds'}")
    elif dropped * 2 > d.total:
        yield Issue(f"the pipeline drops {dropped} of {d.total} utterances ({reasons})", at=at,
                    fix=f"check filter {param or 'bounds'} against your data")
    else:
        yield Issue(f"{dropped} of {d.total} utterances are dropped ({reasons})", at=at, severity="info")


def _warmup(ctx: LintContext) -> Iterator[Issue]:
    """The learning rate is still ramping up when training ends."""
    d = ctx.data
    if d.error or d.warmup_steps is None or not d.epochs or not d.total_steps:
        return  # no step at all: CX600/CX601/CX606 say why
    if d.warmup_steps >= d.total_steps:
        yield Issue(f"warmup_steps {d.warmup_steps:g} >= the {d.total_steps} optimizer steps of the whole run "
                    f"({d.steps_per_epoch} per epoch x {d.max_epoch} epochs): the learning rate never reaches its peak",
                    at=(ctx.doc.node("train_conf", "scheduler_conf", "warmup_steps")
                        or ctx.doc.node("train_conf", "scheduler")),
                    fix=_warmup_fix(d.warmup_steps, d.total_steps))


def _warmup_fix(warmup: float, total: int) -> str:
    want = max(1, total // 10)
    if want < warmup:
        return f"warmup_steps: {want} (about 10% of the run)"
    return (f"the run has only {total} optimizer step(s), too few for any warmup: add data or epochs, lower "
            "accum_grad, or use scheduler: constantlr")


def _log(ctx: LintContext) -> Iterator[Issue]:
    """Loss is printed every log_interval batches, counted from 0 each epoch: with fewer batches you never see a loss
    line (the seed's 'loss never printed')."""
    d = ctx.data
    if d.error or d.log_interval is None or not d.epochs or not d.batches_per_epoch:
        return  # no batch at all: CX600/CX601 say why
    if d.batches_per_epoch < d.log_interval:
        yield Issue(f"log_interval {d.log_interval} > the {d.batches_per_epoch} batches of an epoch: no TRAIN "
                    "loss line is ever printed", at=ctx.doc.node("train_conf", "log_interval"),
                    fix=f"log_interval: {max(1, d.batches_per_epoch // 5)}")


def _oversize(ctx: LintContext) -> Iterator[Issue]:
    """dynamic_batch puts each of them alone in a batch that exceeds the memory budget you planned for."""
    d = ctx.data
    if d.error or not d.oversize:
        return
    worst = max(d.oversize, key=lambda x: x[1])
    yield Issue(f"{len(d.oversize)} utterance(s) exceed max_frames_in_batch {d.max_frames_in_batch:g} mel frames "
                f"(longest {worst[0]}: {worst[1]} frames); each becomes its own over-budget batch",
                at=_batch_node(ctx), fix=f"raise max_frames_in_batch to >= {worst[1]} or lower filter max_length")


def _empty_first(ctx: LintContext) -> Iterator[Issue]:
    """If the first sample after shuffle+sort is already over max_frames_in_batch, dynamic_batch yields its empty
    buffer first; padding then fails on an empty list (seen: ``RuntimeError: received an empty list of
    sequences``). train.py's CV pass after each epoch runs the same pipeline over ``--cv_data``, read in
    list order: with ``--cv-data LIST`` lint replays it too (its first sample is the shortest of the
    first sort buffer, so a CV set whose utterances are all over the limit crashes it for certain)."""
    d = ctx.data
    if d.error:
        return
    bad = [e.epoch for e in d.epochs if e.empty_first]
    if d.cv_empty_first:
        yield Issue(f"train.py's CV pass ({d.cv_list}) after epoch(s) {d.cv_empty_first[:5]} starts with a sample "
                    "longer than max_frames_in_batch, so dynamic_batch yields an EMPTY first batch and padding "
                    "crashes (RuntimeError: received an empty list of sequences)", at=_batch_node(ctx),
                    fix="raise max_frames_in_batch above the CV set's longest utterances, or filter long ones out")
    if bad:
        yield Issue(f"in epoch(s) {bad[:5]} the first sample after sorting exceeds max_frames_in_batch, so upstream's "
                    "dynamic_batch yields an EMPTY first batch and padding crashes (torch.stack of an empty list)",
                    at=_batch_node(ctx), fix="raise max_frames_in_batch above the longest utterance "
                    f"({max(f for _, f in d.oversize) if d.oversize else '?'} frames) or filter long utterances out")


def _steps(ctx: LintContext) -> Iterator[Issue]:
    """Optimizer steps = batches // accum_grad; with tiny data or huge batches a run does almost nothing."""
    d = ctx.data
    if d.error or not d.epochs or d.kept == 0:
        return
    s, b = d.steps_per_epoch, d.batches_per_epoch
    at = ctx.doc.node("train_conf", "accum_grad") or _batch_node(ctx)
    if s == 0:
        yield Issue(f"{b} batch(es) per epoch < accum_grad {d.accum_grad}: no optimizer step ever happens",
                    at=at, severity="error", fix=f"accum_grad: {b} or less, or smaller batches" if 0 < b < d.accum_grad
                    else "more data or smaller batches (max_frames_in_batch)")
    elif s == 1:
        yield Issue(f"one optimizer step per epoch ({b} batches, accum_grad {d.accum_grad}): "
                    f"{d.total_steps} steps in the whole run", at=at,
                    fix="lower max_frames_in_batch or accum_grad, or add data")


def _stats(ctx: LintContext) -> Iterator[Issue]:
    """The numbers behind the CX6xx checks, for your own sanity check."""
    d = ctx.data
    if d.error or not d.epochs or not d.total:
        return  # "0/0 kept" would read like a result; CX600 reports the empty data list
    yield Issue(f"{d.kept}/{d.total} utterances kept, {d.batches_per_epoch} batches and {d.steps_per_epoch} optimizer "
                f"steps per epoch, {d.total_steps} steps over {d.max_epoch} epoch(s)"
                + (f" (warmup {d.warmup_steps:g})" if d.warmup_steps is not None else ""),
                at=ctx.doc.key("train_conf") or None, fix="")


def _instruct(ctx: LintContext) -> Iterator[Issue]:
    """CosyVoice3LM conditions every sample on its instruct text (the recipe: 'You are a helpful
    assistant.<|endofprompt|>'); upstream's padding only adds instruct_token when every sample of a batch has one,
    and the LLM then fails with KeyError: 'instruct_token' (seen). Error with --model llm, a warning when lint does
    not know which model is trained; the flow ignores instruct.

    Seen at ace7c47 with a tiny CosyVoice3LM: no instruct column -> ``KeyError: 'instruct_token'`` (llm.py:388); a
    null instruct -> ValueError in the tokenizer; '' -> RuntimeError in the embedding."""
    d, cf = ctx.data, ctx.family
    fs = d.features if d is not None else None
    if fs is None or not fs.rows or cf is None or "llm" not in ctx.models():
        return
    fam = cf.of("llm")
    if fam is None or not fam.default_instruct or not fs.rows_without_instruct:
        return
    shards = f"; {len(fs.no_instruct_column)} of {fs.shards} shard(s) have no instruct column" if fs.no_instruct_column else ""
    eg = fs.examples.get("instruct") or []
    yield Issue(f"{fs.rows_without_instruct} of {fs.rows} rows have no instruct text{shards} (e.g. {', '.join(eg)}): "
                f"{cf.classes['llm'].rsplit('.', 1)[-1]} reads every batch's instruct_token and training stops "
                "(KeyError: 'instruct_token'; a null instruct fails in the tokenizer, an empty one in the embedding)",
                at=ctx.doc.key("llm") or None, severity="error" if ctx.model == "llm" else "warning",
                fix=f"cosyext prepare --family {fam.name} writes instruct (default {fam.default_instruct!r})")


def _token_alignment(ctx: LintContext) -> Iterator[Issue]:
    """With num_frames, compute_fbank pads the audio to whole tokens and no longer trims features to the tokens, so
    each row needs len(speech_token) x token_mel_ratio == mel frames; tokens extracted from unpadded audio are often
    one short. The flow crashes on a batch whose longest row is off (seen: RuntimeError: Sizes of tensors must
    match) and silently misaligns the others. Online extraction computes tokens from the padded audio and lines up,
    but only for data without a speech_token column: upstream uses a column that is there, even with --onnx_path
    DIR.

    Seen at ace7c47 with the DiT flow: precomputed tokens one short of ceil(samples / 960) -> ``RuntimeError: Sizes
    of tensors must match ... Expected size 124 but got size 122`` (dit.py:96)."""
    d = ctx.data
    al = d.alignment if d is not None else None
    if al is None or d.error or "flow" not in ctx.models() or not al.misaligned:
        return
    eg = "; ".join(f"{u}: {t} tokens x {al.token_mel_ratio} != {f} mel frames" for u, t, f in al.examples)
    st = find(stages(ctx.doc, "data_pipeline"), "compute_fbank")
    at = (st.param_node(ctx.doc, "num_frames") if st else None) or (st.item if st else None)
    fix = (f"re-extract the tokens from audio zero-padded to a multiple of {al.num_frames} samples (cosyext prepare "
           "does), or drop the speech_token column and train with --onnx_path DIR (online tokens line up)")
    if al.crashing_batches:
        yield Issue(f"{al.misaligned} of {al.rows} rows have precomputed speech_token counts that do not match their "
                    f"mel frames after compute_fbank pads to {al.num_frames} samples ({eg}); {al.crashing_batches} of "
                    f"{al.batches} first-epoch batches have such a row as their longest, and there the flow stops "
                    "(RuntimeError: Sizes of tensors must match)", at=at, severity="error", fix=fix)
    else:
        yield Issue(f"{al.misaligned} of {al.rows} rows have precomputed speech_token counts that do not match their "
                    f"mel frames ({eg}); none is the longest of its batch in the first epoch, so training runs, but "
                    "on misaligned tokens and mels (and a later shuffle may crash it)", at=at, severity="warning",
                    fix=fix)


RULES = [
    Rule("CX600", "data-analysis", "error", "The data-aware analysis could not run (or some shards are unreadable).",
         _failed, needs_data=True,
         example="cosyext lint conf.yaml --data missing.list", fix="Fix the data list or the tokenizer path."),
    Rule("CX601", "filter-drops", "warning", "The filter drops all (error) or most (warning) utterances.", _drops,
         needs_data=True,
         example="filter: ... token_max_length: 5   # transcripts are 20-60 Qwen tokens",
         fix="Relax the bound named in the message."),
    Rule("CX602", "warmup-vs-run", "warning", "warmup_steps exceeds the run's total optimizer steps.", _warmup,
         needs_data=True,
         example="train_conf:\n  scheduler: warmuplr\n  scheduler_conf:\n    warmup_steps: 25000   # run has 400 steps",
         fix="About 10% of the total steps."),
    Rule("CX603", "log-interval-vs-epoch", "warning", "log_interval is larger than the batches of an epoch.", _log,
         needs_data=True,
         example="train_conf:\n  log_interval: 100   # 40 batches per epoch", fix="log_interval: batches / 5."),
    Rule("CX604", "oversize-utterances", "warning", "Utterances longer than max_frames_in_batch.", _oversize,
         needs_data=True,
         example="batch: ... max_frames_in_batch: 400   # a 10 s utterance has 500 frames",
         fix="Raise max_frames_in_batch or lower filter max_length."),
    Rule("CX605", "empty-first-batch", "error", "The first batch of an epoch is empty (padding crashes).", _empty_first,
         needs_data=True,
         example="batch: ... max_frames_in_batch: 100", fix="max_frames_in_batch above the longest utterance."),
    Rule("CX606", "steps-per-epoch", "warning", "Zero (error) or one optimizer step per epoch.", _steps,
         needs_data=True,
         example="train_conf:\n  accum_grad: 8   # 5 batches per epoch", fix="Lower accum_grad or max_frames_in_batch."),
    Rule("CX607", "data-statistics", "info", "Summary of the data-aware replay (kept, batches, steps).", _stats,
         needs_data=True, example="cosyext lint conf.yaml --data data.list", fix="Nothing to fix."),
    Rule("CX608", "instruct-missing", "error", "CosyVoice3 LLM training on rows without an instruct text.", _instruct,
         needs_data=True,
         example="cosyext lint cosyvoice3.yaml --data data.list --model llm   # data from a CosyVoice2 prepare",
         fix="cosyext prepare --family cosyvoice3 (or add an instruct column to every shard)."),
    Rule("CX609", "token-mel-alignment-data", "error",
         "Precomputed speech_token counts do not match the padded mel frames (2026 upstream flow).",
         _token_alignment, needs_data=True,
         example="cosyext lint cosyvoice3.yaml --data data.list --model flow --onnx-path ''",
         fix="Tokens extracted from audio padded to a multiple of num_frames, or no speech_token column and "
             "--onnx_path DIR."),
]
