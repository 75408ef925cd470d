"""Data-aware lint (``--data data.list``): what upstream's pipeline will do with *this* data.

Builds a :class:`simulate.Corpus` from header-level lengths (``lengths``) and text-token counts
(``text_tokens``), reads the pipeline's parameters from the config (never executing it), replays
``max_epoch`` epochs with upstream's seeding, and summarises: kept/dropped per reason, batches and
optimizer steps per epoch, total steps vs warmup, oversize utterances, the empty-first-batch trap.

Exactness: batch count and composition equal upstream's for a single process stream
(``--num_workers 0`` or 1 worker per rank), when nothing else draws from Python's global ``random``
between loading the config and iterating (train.py's CV pass with ``--num_workers 0`` does, after
epoch 0: later epochs are then estimates). With several workers, each worker's ``random`` is seeded
by torch, so composition (not the shard partition) is an estimate.
"""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .document import Document, RefError
from .lengths import LengthError, load_shard, read_data_list, save_shard
from .pipeline import DEFAULTS, Stage, stages
from .simulate import DROP_REASONS, Corpus, EpochResult, Unsupported, run_epoch
from .yamlpos import YMap, YSeq

MAX_SIMULATED_SAMPLES = 2_000_000  # samples x epochs replayed before we extrapolate


@dataclass
class EpochStats:
    epoch: int
    batches: int  # per rank (min over ranks: the join stops everyone when one runs out)
    empty_batches: int
    oversize_batches: int
    steps: int
    empty_first: bool


@dataclass
class DataAnalysis:
    data_list: str
    model: str | None
    error: str | None = None
    total: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    epochs: list[EpochStats] = field(default_factory=list)
    oversize: list[tuple[str, int]] = field(default_factory=list)
    max_frames_in_batch: float | None = None
    accum_grad: int = 1
    log_interval: int | None = None
    warmup_steps: float | None = None
    max_epoch: int = 1
    total_steps: int = 0
    extrapolated: bool = False
    seed: int | None = None
    seed_note: str | None = None
    batch_utts: list[list[list[str]]] = field(default_factory=list)  # rank 0's batches, first 10 epochs
    unreadable_shards: list[str] = field(default_factory=list)

    @property
    def steps_per_epoch(self) -> int:
        return self.epochs[0].steps if self.epochs else 0

    @property
    def batches_per_epoch(self) -> int:
        return self.epochs[0].batches if self.epochs else 0

    def summary(self) -> dict[str, Any]:
        if self.error:
            return {"data_list": self.data_list, "error": self.error}
        return {
            "data_list": self.data_list, "model": self.model, "total": self.total, "kept": self.kept,
            "dropped": {DROP_REASONS.get(k, k): v for k, v in self.dropped.items()},
            "epochs": [e.__dict__ for e in self.epochs[:10]], "epochs_simulated": len(self.epochs),
            "accum_grad": self.accum_grad, "max_epoch": self.max_epoch, "total_steps": self.total_steps,
            "extrapolated": self.extrapolated, "warmup_steps": self.warmup_steps,
            "oversize_utterances": len(self.oversize), "max_frames_in_batch": self.max_frames_in_batch,
            "seed": self.seed, "seed_note": self.seed_note, "unreadable_shards": self.unreadable_shards,
        }


def config_seed(doc: Document) -> int | None:
    """The argument of the config's ``!apply:random.seed [N]`` line (HyperPyYAML runs it at load)."""
    root = doc.root
    if root is None:
        return None
    seed = None
    for _, node in root.items:
        if node.call == ("apply", "random.seed"):
            arg = node.items[0] if isinstance(node, YSeq) and node.items else node
            try:
                v = doc.scalar(arg)
            except RefError:
                v = None
            seed = v if isinstance(v, int) and not isinstance(v, bool) else seed
    return seed


def stage_params(doc: Document, st: Stage) -> dict[str, Any]:
    p = dict(DEFAULTS.get(st.func, {}))
    if isinstance(st.target, YMap):
        for k, _ in st.target.items:
            name = getattr(k, "raw", None)
            if name and name in p:
                v = st.param(doc, name)
                if v is not None:
                    p[name] = v
    if st.func == "compute_fbank":
        node = st.target.get("feat_extractor") if isinstance(st.target, YMap) else None
        fe = doc.deref(node) if node is not None else None
        call = fe.call if fe is not None else None
        if not isinstance(fe, YMap) or call is None or not call[1].endswith("mel_spectrogram"):
            raise Unsupported("compute_fbank's feat_extractor is not matcha's mel_spectrogram; cannot count frames")
        for k, default in (("n_fft", None), ("hop_size", None), ("center", False)):
            v = doc.scalar(fe.get(k)) if fe.get(k) is not None else default
            if v is None:
                raise Unsupported(f"feat_extractor lacks {k}")
            p[k] = v
    return p


def _token_path(doc: Document, tokenize: Stage | None, override: str | None) -> str:
    node = tokenize.target.get("get_tokenizer") if tokenize and isinstance(tokenize.target, YMap) else None
    gt = doc.deref(node) if node is not None else doc.deref(doc.node("get_tokenizer"))
    call = gt.call if gt is not None else None
    if call is None or not call[1].endswith("get_qwen_tokenizer") or not isinstance(gt, YMap):
        raise Unsupported("data-aware mode counts text tokens with CosyVoice2's Qwen tokenizer "
                          "(get_tokenizer: !name:...get_qwen_tokenizer); this config uses another tokenizer")
    tp = gt.get("token_path")
    raw = getattr(tp, "raw", "")
    if override and (not raw or "qwen_pretrain_path" in raw):
        return override
    value = doc.value("get_tokenizer", "token_path") if gt is doc.deref(doc.node("get_tokenizer")) else None
    if value is None and tp is not None:
        try:
            value = doc.scalar(tp)
        except RefError:
            value = None
    if not isinstance(value, str) or not value:
        raise Unsupported("the tokenizer path is empty; pass the Qwen directory with --qwen-pretrain-path "
                          "(as you pass --qwen_pretrain_path to train.py)")
    return value


def build_corpus(data_list: Path, token_path: str, use_cache: bool = True) -> tuple[Corpus, list[str]]:
    from .text_tokens import qwen_counter, tokenizer_id

    tid = tokenizer_id(token_path)
    counter = None
    shards, utt, ns, sr, tl, stl, rej = [], [], [], [], [], [], []
    any_reject = False
    unreadable = []
    sources = read_data_list(data_list)
    readable = [s for s in sources if s and Path(s).is_file()]
    # pyarrow releases the GIL while it reads: shards in parallel cut the cold (un-indexed) run
    with ThreadPoolExecutor(max_workers=max(1, min(len(readable), os.cpu_count() or 1, 8))) as pool:
        from tqdm import tqdm  # a bar only on a terminal (disable=None): cold reads of big data take a while

        it = pool.map(lambda s: load_shard(Path(s), use_cache), readable)
        loaded = dict(zip(readable, tqdm(it, total=len(readable), desc="lint: reading shard lengths", unit="shard",
                                         disable=None, leave=False)))
    for src in sources:
        if src not in loaded:
            unreadable.append(src)
            shards.append([])
            continue
        idx = loaded[src]
        if tid not in idx.text_tokens:
            if counter is None:
                if not Path(token_path).expanduser().is_dir():
                    raise Unsupported(f"tokenizer directory {token_path} does not exist")
                counter = qwen_counter(token_path)
            idx.text_tokens[tid] = counter(idx.text)
            if use_cache:
                save_shard(idx)
        base = len(utt)
        shards.append(list(range(base, base + len(idx.utt))))
        utt += idx.utt
        ns += idx.n_samples
        sr += idx.sample_rate
        tl += idx.text_tokens[tid]
        stl += idx.speech_token_len
        any_reject |= idx.reject_len is not None
        rej += idx.reject_len if idx.reject_len is not None else [1] * len(idx.utt)
    return Corpus(shards, utt, ns, sr, tl, stl, rej if any_reject else None), unreadable


def analyse(doc: Document, opts: Any, keep_batches: bool = False) -> DataAnalysis:
    """Never raises for bad data or unsupported configs: the problem goes into ``error`` (rule CX600)."""
    a = DataAnalysis(str(opts.data), opts.model)
    try:
        _analyse(doc, opts, a, keep_batches)
    except (Unsupported, LengthError, RefError, OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        a.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (Unsupported, LengthError)) else str(exc)
    return a


def _analyse(doc: Document, opts: Any, a: DataAnalysis, keep_batches: bool) -> None:
    key = "data_pipeline_gan" if opts.model == "hifigan" else "data_pipeline"
    st = stages(doc, key)
    if not st:
        raise Unsupported(f"the config has no {key} to replay")
    tokenize = next((s for s in st if s.func == "tokenize"), None)
    plan = [(s.func, stage_params(doc, s)) for s in st]
    batch = dict(plan)["batch"] if "batch" in dict(plan) else None
    if batch and batch["batch_type"] == "dynamic":
        a.max_frames_in_batch = batch["max_frames_in_batch"]
    token_path = _token_path(doc, tokenize, getattr(opts, "qwen_pretrain_path", None))
    corpus, a.unreadable_shards = build_corpus(Path(opts.data), token_path, getattr(opts, "use_cache", True))
    a.total = len(corpus.utt)
    acc = doc.value("train_conf", "accum_grad", default=1)
    a.accum_grad = acc if isinstance(acc, int) and not isinstance(acc, bool) and acc >= 1 else 1
    li = doc.value("train_conf", "log_interval")
    a.log_interval = li if isinstance(li, int) and not isinstance(li, bool) and li >= 1 else None
    me = doc.value("train_conf", "max_epoch", default=1)
    a.max_epoch = me if isinstance(me, int) and not isinstance(me, bool) and me >= 1 else 1
    if doc.value("train_conf", "scheduler") in ("warmuplr", "NoamHoldAnnealing"):
        w = doc.value("train_conf", "scheduler_conf", "warmup_steps")
        a.warmup_steps = w if isinstance(w, (int, float)) and not isinstance(w, bool) else None
    a.seed = config_seed(doc)
    if a.seed is None:
        a.seed_note = "no !apply:random.seed line: upstream's sample shuffle is unseeded, composition shown for seed 0"
    world = max(1, int(getattr(opts, "world_size", 1) or 1))
    workers = max(1, int(getattr(opts, "num_workers", 0) or 0))
    if workers > 1:
        a.seed_note = ("with several DataLoader workers torch seeds each worker's random module; batch counts and "
                       "composition are estimates")
    want = getattr(opts, "epochs", None) or a.max_epoch
    n_epochs = max(1, min(want, MAX_SIMULATED_SAMPLES // max(1, a.total)))
    a.extrapolated = n_epochs < want
    rngs = {(r, w): random.Random(a.seed if a.seed is not None else 0) if workers == 1 else
            random.Random((a.seed or 0) * 1000 + r * 100 + w) for r in range(world) for w in range(workers)}
    for epoch in range(n_epochs):
        per_rank = []
        empty = oversize = 0
        empty_first = False
        for r in range(world):
            count = 0
            for w in range(workers):
                res: EpochResult = run_epoch(corpus, plan, epoch, rngs[(r, w)], r, world, w, workers)
                count += len(res.batches)
                empty += sum(1 for b in res.batches if not b)
                empty_first |= bool(res.batches) and not res.batches[0]
                if a.max_frames_in_batch is not None:
                    oversize += sum(1 for b in res.batches if len(b) == 1
                                    and res.frames[b[0]] > a.max_frames_in_batch)  # type: ignore[attr-defined]
                if r == 0 and w == 0 and keep_batches and epoch < 10:
                    a.batch_utts.append([[corpus.utt[g] for g in b] for b in res.batches])
                if epoch == 0:
                    for k, v in res.dropped.items():
                        a.dropped[k] = a.dropped.get(k, 0) + v
                    a.kept += sum(len(b) for b in res.batches)
                    if a.max_frames_in_batch is not None:
                        a.oversize += [(corpus.utt[g], f) for g, f in res.frames.items()  # type: ignore[attr-defined]
                                       if f > a.max_frames_in_batch]
            per_rank.append(count)
        batches = min(per_rank) if world > 1 else per_rank[0]
        a.epochs.append(EpochStats(epoch, batches, empty, oversize, batches // a.accum_grad, empty_first))
    a.total_steps = sum(e.steps for e in a.epochs)
    if a.extrapolated:
        a.total_steps = round(a.total_steps / n_epochs * want)
    if world > 1 and a.kept > a.total:
        a.kept = a.total  # shards replicated across ranks when there are fewer shards than ranks
