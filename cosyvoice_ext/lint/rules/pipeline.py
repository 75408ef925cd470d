"""Lint rules CX1xx: the data pipeline (filter bounds, stage order, shuffle/sort/batch sizes, memory)."""

from __future__ import annotations

from typing import Iterator

from cosyvoice_ext.lint import Issue, LintContext, Rule
from cosyvoice_ext.lint.pipeline import Stage, find, stages

REQUIRED = ("parquet_opener", "tokenize", "filter", "compute_fbank", "parse_embedding", "batch", "padding")
# (earlier, later): upstream's stages read fields the earlier one creates
ORDER = (
    ("parquet_opener", "tokenize"), ("tokenize", "filter"), ("filter", "resample"), ("resample", "compute_fbank"),
    ("compute_fbank", "sort"), ("compute_fbank", "batch"), ("shuffle", "sort"), ("sort", "batch"),
    ("parse_embedding", "padding"), ("batch", "padding"), ("compute_fbank", "compute_f0"),
    # 2026: compute_whisper_fbank checks the audio compute_fbank padded, and sort/batch need its output
    ("compute_fbank", "compute_whisper_fbank"), ("compute_whisper_fbank", "batch"),
)


def _num(v) -> float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _at(ctx: LintContext, st: Stage, name: str):
    return st.param_node(ctx.doc, name) or st.item


def _pipelines(ctx: LintContext) -> list[tuple[str, list[Stage]]]:
    out = []
    for key in ("data_pipeline", "data_pipeline_gan"):
        if ctx.model and (key == "data_pipeline_gan") != (ctx.model == "hifigan"):
            continue
        st = stages(ctx.doc, key)
        if st is not None:
            out.append((key, st))
    return out


def _stage(ctx: LintContext, func: str) -> Stage | None:
    for _, st in _pipelines(ctx):
        s = find(st, func)
        if s is not None:
            return s
    return None


def _token_bounds(ctx: LintContext) -> Iterator[Issue]:
    """filter() compares the number of TEXT tokens (from the Qwen tokenizer) with token_min_length/token_max_length.
    With token_max_length: 0 nothing survives, an epoch is one empty step and no loss is ever printed: the seed's
    lost days."""
    st = _stage(ctx, "filter")
    if st is None:
        return
    yield from _not_numbers(ctx, st, ("token_max_length", "token_min_length"))
    hi, lo = _num(st.param(ctx.doc, "token_max_length")), _num(st.param(ctx.doc, "token_min_length"))
    if hi is not None and hi <= 0:
        yield Issue(f"filter token_max_length is {hi}: every sample has at least one text token, so the filter "
                    "drops ALL of them (one epoch becomes a single empty step)", at=_at(ctx, st, "token_max_length"),
                    fix="set token_max_length to the longest transcript in text tokens, e.g. 200-400")
    elif hi is not None and lo is not None and hi < lo:
        yield Issue(f"filter token_max_length ({hi}) < token_min_length ({lo}): no transcript length passes",
                    at=_at(ctx, st, "token_max_length"), fix="make token_max_length >= token_min_length")


def _not_numbers(ctx: LintContext, st: Stage, names: tuple[str, ...]) -> Iterator[Issue]:
    for name in names:
        if st.has_param(name) and _num(st.param(ctx.doc, name)) is None:
            yield Issue(f"filter {name} is {st.param(ctx.doc, name)!r}, not a number: filter() compares every "
                        "utterance with it (TypeError in the data loader)", at=_at(ctx, st, name),
                        fix=f"{name}: a number, unquoted")


def _frame_bounds(ctx: LintContext) -> Iterator[Issue]:
    """max_length/min_length are in 10 ms frames; if max <= min (or the ratio bounds cross) no utterance passes."""
    st = _stage(ctx, "filter")
    if st is None:
        return
    yield from _not_numbers(ctx, st, ("max_length", "min_length", "min_output_input_ratio", "max_output_input_ratio"))
    hi, lo = _num(st.param(ctx.doc, "max_length")), _num(st.param(ctx.doc, "min_length"))
    if hi is not None and (hi <= 0 or (lo is not None and hi <= lo)):
        fix = ("max_length: 40960 (~410 s)" + (f", above min_length {lo:g}" if lo is not None else "")
               if lo is None or lo < 40960 else f"min_length: 100 (1 s), below max_length {hi:g}")
        yield Issue(f"filter max_length ({hi}) <= min_length ({lo}) (both in 10 ms frames): every utterance is dropped",
                    at=_at(ctx, st, "max_length"), fix=fix)
    rlo, rhi = _num(st.param(ctx.doc, "min_output_input_ratio")), _num(st.param(ctx.doc, "max_output_input_ratio"))
    if rlo is not None and rhi is not None and rhi <= rlo:
        lo_d, hi_d = 0.0005, 1  # upstream's defaults
        change = [f"{k}: {d:g}" for k, d, v in (("min_output_input_ratio", lo_d, rlo), ("max_output_input_ratio", hi_d, rhi))
                  if d != v]  # only what differs: a fix never repeats the value already set
        yield Issue(f"filter max_output_input_ratio ({rhi}) <= min_output_input_ratio ({rlo}): every utterance is dropped",
                    at=_at(ctx, st, "max_output_input_ratio"), fix=f"{' and '.join(change)} (upstream's defaults)")


def _sort_shuffle(ctx: LintContext) -> Iterator[Issue]:
    """sort() should work inside one shuffle buffer (upstream's own comment); larger sort buffers make batch
    composition less random."""
    sh, so = _stage(ctx, "shuffle"), _stage(ctx, "sort")
    if sh is None or so is None:
        return
    a, b = _num(so.param(ctx.doc, "sort_size")), _num(sh.param(ctx.doc, "shuffle_size"))
    if a is not None and b is not None and a > b:
        yield Issue(f"sort_size ({a}) > shuffle_size ({b}): sort buffers span several shuffle buffers, so "
                    "batches mix less randomly than intended", at=_at(ctx, so, "sort_size"),
                    fix=f"use sort_size <= shuffle_size (e.g. sort_size: {int(b)})")
    for st, name in ((sh, "shuffle_size"), (so, "sort_size")):
        v = _num(st.param(ctx.doc, name))
        if v is not None and v < 1:
            yield Issue(f"{name} is {v}; it must be >= 1", at=_at(ctx, st, name), fix=f"set {name} to e.g. 500")


def _order(ctx: LintContext) -> Iterator[Issue]:
    """Each processor reads fields an earlier one adds (filter needs text_token from tokenize, sort and batch need
    speech_feat from compute_fbank); padding must be last because Dataset binds gan/dpo to the last entry. Out of
    order it fails with a KeyError or AssertionError inside the data loader."""
    for key, st in _pipelines(ctx):
        names = [s.func for s in st]
        for i, s in enumerate(st):
            if s.func == "padding" and i != len(st) - 1:
                yield Issue(f"{key}: padding must be the last stage (Dataset binds gan/dpo to the last entry)",
                            at=s.item, fix="move padding to the end")
        if st and st[0].func and st[0].func != "parquet_opener":
            yield Issue(f"{key}: the first stage must be parquet_opener (it turns data.list entries into samples), "
                        f"got {st[0].func}", at=st[0].item, fix="start the pipeline with !ref <parquet_opener>")
        for early, late in ORDER:
            if early in names and late in names and names.index(early) > names.index(late):
                s = st[names.index(late)]
                yield Issue(f"{key}: {late} comes before {early}, but it needs what {early} produces",
                            at=s.item, fix=f"put {early} before {late} (upstream order: parquet_opener, tokenize, "
                            "filter, resample, compute_fbank, parse_embedding, shuffle, sort, batch, padding)")


def _batch(ctx: LintContext) -> Iterator[Issue]:
    """An unknown batch_type makes upstream's batch() return None (a crash inside the DataLoader); max_frames_in_batch
    <= 0 puts every utterance in its own batch after an empty one."""
    st = _stage(ctx, "batch")
    if st is None:
        return
    bt = st.param(ctx.doc, "batch_type")
    if bt not in ("static", "dynamic"):
        yield Issue(f"batch_type {bt!r} is not 'static' or 'dynamic': upstream logs a fatal message and the "
                    "pipeline yields nothing", at=_at(ctx, st, "batch_type"), fix="batch_type: 'dynamic'")
        return
    name = "max_frames_in_batch" if bt == "dynamic" else "batch_size"
    v = st.param(ctx.doc, name)
    if _num(v) is None or v <= 0:
        quoted = isinstance(v, str) and v.strip().lstrip("+").replace(".", "", 1).isdigit() and float(v) > 0
        yield Issue(f"{name} is {v!r}; it must be a positive number", at=_at(ctx, st, name),
                    fix="remove the quotes (a number, not a string)" if quoted
                    else f"{name}: {2500 if bt == 'dynamic' else 16}")


def _memory(ctx: LintContext) -> Iterator[Issue]:
    """An out-of-memory error shows up only at the longest batch, possibly hours into the run. The model is measured on
    CosyVoice2-0.5B (the LLM is the same Qwen2 in CosyVoice3); for CosyVoice3's DiT flow lint says it cannot check
    (info)."""
    if not ctx.gpu_memory:
        return
    st = _stage(ctx, "batch")
    if st is None or st.param(ctx.doc, "batch_type") != "dynamic":
        return
    frames = _num(st.param(ctx.doc, "max_frames_in_batch"))
    if frames is None or frames <= 0:
        return
    from cosyvoice_ext.errors import ConfigError
    from cosyvoice_ext.memory.config import parse_memory_section
    from cosyvoice_ext.memory.model import estimate_peak_gib, max_frames_fitting

    try:  # the levers the run will use change the estimate (measured model, BENCHMARKS.md)
        mem = parse_memory_section({"cosyext": {"memory": ctx.doc.value("cosyext", "memory", default=None)}})
        levers = dict(gradient_checkpointing=mem.gradient_checkpointing, autocast=mem.autocast,
                      skip_unused_logits=mem.skip_unused_logits)
    except (ConfigError, TypeError, ValueError):
        levers = {}
    for model in ctx.models() or ("llm",):
        fam = ctx.family.of(model) if ctx.family is not None else None
        if model == "flow" and fam is not None and fam.name != "cosyvoice2":
            # the model is fitted to CosyVoice2-0.5B runs; CosyVoice3's DiT flow (332M parameters) is another shape
            yield Issue(f"no measured memory model for the {fam.name} flow ({ctx.family.classes['flow']}) yet: "
                        "--gpu-memory is not checked for it", at=_at(ctx, st, "max_frames_in_batch"),
                        severity="info", fix="measure one step (benchmarks/bench_train_memory.py)")
            continue
        lora = ctx.doc.node("cosyext", model) is not None
        est = estimate_peak_gib(model, frames, lora=lora, **levers)
        if est > ctx.gpu_memory:
            fit = max_frames_fitting(model, ctx.gpu_memory, lora=lora, **levers)
            on = [k for k, v in levers.items() if v and v != "off"]
            yield Issue(f"max_frames_in_batch {frames:g} needs roughly {est:.1f} GiB for {model}"
                        f"{' (LoRA)' if lora else ''} training{' with ' + ', '.join(on) if on else ''}, "
                        f"more than --gpu-memory {ctx.gpu_memory:g} GiB",
                        at=_at(ctx, st, "max_frames_in_batch"),
                        fix=(f"try max_frames_in_batch <= {fit}, or enable cosyext.memory levers "
                             "(measured model, see BENCHMARKS.md)" if fit
                             else "this card is too small for this model even at tiny batches"))


def _required(ctx: LintContext) -> Iterator[Issue]:
    """Without parquet_opener/tokenize/filter/compute_fbank/parse_embedding/batch/padding the model's forward gets
    samples without the fields it reads."""
    if ctx.model == "hifigan" or not ctx.models():
        return
    root = ctx.doc.root
    st = stages(ctx.doc, "data_pipeline")
    if st is None:
        yield Issue("no data_pipeline list: upstream's Dataset needs one", at=root.key_node("data_pipeline") or root.start,
                    fix="add data_pipeline: [!ref <parquet_opener>, !ref <tokenize>, ...]")
        return
    for s in st:
        if not s.func:
            yield Issue("data_pipeline entry is not a processor function (expected a !ref to a "
                        "!name:cosyvoice.dataset.processor.* key)", at=s.item, fix="reference a processor key")
    names = {s.func for s in st}
    missing = [f for f in REQUIRED if f not in names]
    if missing:
        yield Issue(f"data_pipeline lacks {', '.join(missing)}", at=root.key_node("data_pipeline"),
                    fix="use upstream's pipeline: parquet_opener, tokenize, filter, resample, compute_fbank, "
                        "parse_embedding, shuffle, sort, batch, padding")


RULES = [
    Rule("CX101", "token-filter-bounds", "error", "The filter's text-token bounds drop every sample.", _token_bounds,
         example="filter: !name:cosyvoice.dataset.processor.filter\n  token_max_length: 0",
         fix="token_max_length: 400 and token_min_length: 1 (measure your transcripts with --data)."),
    Rule("CX102", "frame-filter-bounds", "error", "The filter's length or ratio bounds drop every sample.", _frame_bounds,
         example="filter: !name:cosyvoice.dataset.processor.filter\n  max_length: 100\n  min_length: 100",
         fix="min_length: 100, max_length: 40960."),
    Rule("CX103", "sort-vs-shuffle", "warning", "sort_size larger than shuffle_size (or a size < 1).", _sort_shuffle,
         example="shuffle: !name:cosyvoice.dataset.processor.shuffle\n  shuffle_size: 100\n"
                 "sort: !name:cosyvoice.dataset.processor.sort\n  sort_size: 500",
         fix="sort_size <= shuffle_size."),
    Rule("CX104", "pipeline-order", "error", "Pipeline stages are out of order.", _order,
         example="data_pipeline: [!ref <parquet_opener>, !ref <tokenize>, !ref <filter>, !ref <resample>, "
                 "!ref <compute_fbank>, !ref <parse_embedding>, !ref <shuffle>, !ref <batch>, !ref <sort>, !ref <padding>]",
         fix="Use upstream's order."),
    Rule("CX105", "batch-settings", "error", "batch_type unknown or a non-positive batch size.", _batch,
         example="batch: !name:cosyvoice.dataset.processor.batch\n  batch_type: dynamc",
         fix="batch_type: 'dynamic' with max_frames_in_batch: 2500 (or 'static' with batch_size)."),
    Rule("CX106", "batch-vs-gpu-memory", "warning", "max_frames_in_batch likely does not fit --gpu-memory.", _memory,
         example="# cosyext lint --gpu-memory 16\nbatch: !name:cosyvoice.dataset.processor.batch\n"
                 "  batch_type: dynamic\n  max_frames_in_batch: 6000",
         fix="Lower max_frames_in_batch to the suggested value (rough linear model, see docs/lint.md)."),
    Rule("CX107", "pipeline-stages", "error", "data_pipeline is missing or lacks a required stage.", _required,
         example="data_pipeline: [!ref <parquet_opener>, !ref <tokenize>, !ref <batch>, !ref <padding>]",
         fix="Use upstream's full pipeline."),
]
