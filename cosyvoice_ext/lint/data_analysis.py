"""Data-aware lint (``--data data.list``): what upstream's pipeline will do with *this* data.

Builds a :class:`simulate.Corpus` from header-level lengths (``lengths``) and text-token counts
(``text_tokens``), reads the pipeline's parameters from the config (never executing it), replays
``max_epoch`` epochs with upstream's seeding, and summarises: kept/dropped per reason, batches and
optimizer steps per epoch, total steps vs warmup, oversize utterances, the empty-first-batch trap.
Also which features the rows carry (precomputed speech tokens, speaker embeddings, CosyVoice3's
``instruct``: :class:`FeatureStats`) and, for a ``num_frames`` compute_fbank (the 2026 upstream),
whether precomputed token counts line up with the padded mel frames (:class:`Alignment`).

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
WARMUPLR_DEFAULT = 25000  # cosyvoice.utils.scheduler.WarmupLR(warmup_steps=25000), both supported commits


@dataclass
class EpochStats:
    epoch: int
    batches: int  # per rank (min over ranks: the join stops everyone when one runs out)
    empty_batches: int
    oversize_batches: int
    steps: int
    empty_first: bool


@dataclass
class FeatureStats:
    """Which training features the rows carry, over every readable shard.

    Upstream (2026) extracts a feature online only for rows whose shard LACKS its column (``'speech_token'
    not in batch``, ``'utt_embedding' not in sample``); a column that is there is used as it is, empty or
    zero. So "absent" and "empty" rows mean different things for ``--onnx_path DIR``."""

    rows: int = 0
    shards: int = 0
    no_token_column: list[str] = field(default_factory=list)  # shard paths
    tokens_absent: int = 0  # rows in shards without a speech_token column
    tokens_empty: int = 0  # rows whose speech_token list is empty
    no_embedding_columns: list[str] = field(default_factory=list)
    embeddings_absent: int = 0
    embeddings_empty: int = 0  # empty utt/spk_embedding lists
    embeddings_zero: int = 0  # all-zero utt_embedding (`cosyext prepare --no-features`)
    no_instruct_column: list[str] = field(default_factory=list)
    rows_without_instruct: int = 0  # null or '' (or no column)
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few utt ids per problem

    @property
    def unusable(self) -> int:
        """Rows whose feature columns are there but hold nothing usable (no choice of --onnx_path helps)."""
        return self.tokens_empty + self.embeddings_empty + self.embeddings_zero

    @property
    def precomputed(self) -> bool:
        """Everything `--onnx_path ''` (training on the data's features) needs."""
        return self.rows > 0 and not (self.tokens_absent or self.embeddings_absent or self.unusable)

    @property
    def online_usable(self) -> bool:
        """`--onnx_path DIR` computes absent columns online, but uses present ones as they are."""
        return self.rows > 0 and not self.unusable

    def describe(self) -> str:
        """'speech_token: no column in 2 of 2 shards (12 rows); ...' for messages."""
        parts = []
        if self.tokens_absent:
            parts.append(f"speech_token: no column in {len(self.no_token_column)} of {self.shards} shard(s) "
                         f"({self.tokens_absent} rows)")
        if self.tokens_empty:
            parts.append(f"speech_token: empty in {self.tokens_empty} rows")
        if self.embeddings_absent:
            parts.append(f"utt/spk_embedding: no columns in {len(self.no_embedding_columns)} of {self.shards} "
                         f"shard(s) ({self.embeddings_absent} rows)")
        if self.embeddings_empty:
            parts.append(f"utt/spk_embedding: empty in {self.embeddings_empty} rows")
        if self.embeddings_zero:
            parts.append(f"utt_embedding: all zeros in {self.embeddings_zero} rows (cosyext prepare --no-features)")
        return "; ".join(parts) + f" (of {self.rows} rows)"

    def add(self, idx: Any) -> None:
        n = len(idx.utt)
        self.rows += n
        self.shards += 1
        empty = [u for u, k in zip(idx.utt, idx.speech_token_len) if k == 0]
        if idx.token_column:
            self.tokens_empty += len(empty)
        else:
            self.no_token_column.append(idx.path)
            self.tokens_absent += n
            empty = []
        if idx.embedding_columns:
            self.embeddings_empty += idx.embedding_missing
            self.embeddings_zero += idx.embedding_zero
        else:
            self.no_embedding_columns.append(idx.path)
            self.embeddings_absent += n
        if not idx.instruct_column:
            self.no_instruct_column.append(idx.path)
        self.rows_without_instruct += idx.instruct_missing
        examples = {"speech_token": empty, "embedding": idx.examples.get("embedding", []) if idx.embedding_columns
                    else [], "instruct": idx.examples.get("instruct", [])}
        for key, utts in examples.items():
            have = self.examples.setdefault(key, [])
            have.extend(utts[:3 - len(have)])

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "shards": self.shards,
                "speech_token": {"rows_without_column": self.tokens_absent, "rows_empty": self.tokens_empty},
                "embedding": {"rows_without_columns": self.embeddings_absent, "rows_empty": self.embeddings_empty,
                              "rows_zero": self.embeddings_zero},
                "instruct": {"rows_missing": self.rows_without_instruct,
                             "shards_without_column": len(self.no_instruct_column)}}


@dataclass
class Alignment:
    """Precomputed speech tokens vs mel frames after a ``num_frames`` compute_fbank (first epoch).

    The 2026 upstream pads audio to a multiple of ``num_frames`` instead of trimming features, so a
    row lines up only if its token count x the flow's token_mel_ratio equals its mel frames; the
    flow crashes on a batch whose longest row does not (sizes of h and feat differ). Batches with a
    row from a shard without speech_token get online tokens and are not counted."""

    num_frames: int
    token_mel_ratio: int
    rows: int = 0
    misaligned: int = 0
    examples: list[tuple[str, int, int]] = field(default_factory=list)  # (utt, tokens, mel frames)
    batches: int = 0
    crashing_batches: int = 0

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "examples"} | {
            "examples": [list(e) for e in self.examples]}


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
    features: FeatureStats | None = None  # set as soon as the shards are read (even if the replay fails)
    alignment: Alignment | None = None  # a num_frames compute_fbank with precomputed tokens
    online: bool = False  # replayed as online feature extraction (--onnx-path DIR): empty tokens are kept
    entries: int = 0  # non-blank lines of the data list
    readable_shards: int = 0
    cv_list: str | None = None  # --cv-data: train.py's CV pass after each epoch, replayed too
    cv_total: int = 0
    cv_empty_first: list[int] = field(default_factory=list)  # epochs after which the CV pass's first batch is empty

    def no_utterances(self) -> str | None:
        """Why the data list yields no utterance at all (None when it yields some, or was not read)."""
        if self.error or self.total:
            return None
        if not self.entries:
            return "it lists no shards"
        if not self.readable_shards:
            return f"none of its {self.entries} entries can be opened (e.g. {self.unreadable_shards[:2]})"
        return f"its {self.readable_shards} readable shard(s) hold zero rows"

    @property
    def steps_per_epoch(self) -> int:
        return self.epochs[0].steps if self.epochs else 0

    @property
    def batches_per_epoch(self) -> int:
        return self.epochs[0].batches if self.epochs else 0

    def summary(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.features is not None:
            extra["features"] = self.features.summary()
        if self.alignment is not None:
            extra["token_alignment"] = self.alignment.summary()
        if self.error:
            return {"data_list": self.data_list, "error": self.error, **extra}
        return {**extra, "online_features": self.online,
            "data_list": self.data_list, "model": self.model, "total": self.total, "kept": self.kept,
            "dropped": {DROP_REASONS.get(k, k): v for k, v in self.dropped.items()},
            "epochs": [e.__dict__ for e in self.epochs[:10]], "epochs_simulated": len(self.epochs),
            "accum_grad": self.accum_grad, "max_epoch": self.max_epoch, "total_steps": self.total_steps,
            "extrapolated": self.extrapolated, "warmup_steps": self.warmup_steps,
            "oversize_utterances": len(self.oversize), "max_frames_in_batch": self.max_frames_in_batch,
            "seed": self.seed, "seed_note": self.seed_note, "unreadable_shards": self.unreadable_shards,
            **({"cv": {"data_list": self.cv_list, "total": self.cv_total, "empty_first_batch_after_epochs":
                       self.cv_empty_first}} if self.cv_list else {}),
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


def read_shards(data_list: Path, use_cache: bool = True) -> tuple[list[str], dict[str, Any]]:
    """(data.list entries, {readable entry: ShardIndex}), shards read in parallel."""
    sources = read_data_list(data_list)
    readable = [s for s in sources if s and Path(s).is_file()]
    # pyarrow releases the GIL while it reads: shards in parallel cut the cold (un-indexed) run
    with ThreadPoolExecutor(max_workers=max(1, min(len(readable), os.cpu_count() or 1, 8))) as pool:
        from tqdm import tqdm  # a bar only on a terminal (disable=None): cold reads of big data take a while

        it = pool.map(lambda s: load_shard(Path(s), use_cache), readable)
        loaded = dict(zip(readable, tqdm(it, total=len(readable), desc="lint: reading shard lengths", unit="shard",
                                         disable=None, leave=False)))
    return sources, loaded


def features_of(loaded: dict[str, Any]) -> FeatureStats:
    fs = FeatureStats()
    for idx in loaded.values():
        fs.add(idx)
    return fs


def build_corpus(data_list: Path, token_path: str, use_cache: bool = True,
                 shards_read: tuple[list[str], dict[str, Any]] | None = None) -> tuple[Corpus, list[str]]:
    from .text_tokens import qwen_counter, tokenizer_id

    tid = tokenizer_id(token_path)
    counter = None
    shards, utt, ns, sr, tl, stl, rej = [], [], [], [], [], [], []
    any_reject = False
    unreadable = []
    sources, loaded = shards_read or read_shards(data_list, use_cache)
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
    no_col = frozenset(g for src, ids in zip(sources, shards) if src in loaded and not loaded[src].token_column
                       for g in ids)
    return Corpus(shards, utt, ns, sr, tl, stl, rej if any_reject else None, no_col), unreadable


def analyse(doc: Document, opts: Any, keep_batches: bool = False, upstream: Any = None) -> DataAnalysis:
    """Never raises for bad data or unsupported configs: the problem goes into ``error`` (rule CX600).

    ``upstream`` (a :class:`target.Upstream`) picks the pipeline generation to replay; by default it is
    inferred from the config."""
    from .target import config_family, infer_upstream

    a = DataAnalysis(str(opts.data), opts.model)
    if upstream is None:
        upstream = infer_upstream(doc, config_family(doc))
    try:
        _analyse(doc, opts, a, keep_batches, upstream.keeps_half, bool(upstream.onnx_flag))
    except (Unsupported, LengthError, RefError, OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        a.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (Unsupported, LengthError)) else str(exc)
    return a


def _check_alignment(al: Alignment, corpus: Corpus, res: EpochResult) -> None:
    frames = res.frames  # type: ignore[attr-defined]
    tokens = corpus.speech_token_len
    for b in res.batches:
        if not b or any(g in corpus.no_token_column for g in b):
            continue  # upstream's padding adds speech_token only if every row has it: online tokens for this batch
        al.batches += 1
        for g in b:
            al.rows += 1
            if frames[g] != al.token_mel_ratio * tokens[g]:
                al.misaligned += 1
                if len(al.examples) < 3:
                    al.examples.append((corpus.utt[g], tokens[g], frames[g]))
        # the flow pads tokens and mels separately: only the longest of each must line up
        if max(frames[g] for g in b) != al.token_mel_ratio * max(tokens[g] for g in b):
            al.crashing_batches += 1


def _flow_ratio(doc: Document) -> int | None:
    from .target import flow_frames_per_token

    return flow_frames_per_token(doc)


def _cv_first_batch_empty(cv: Corpus, plan: list, epoch: int, rngs: dict, world: int, workers: int,
                          online: bool) -> bool:
    """train.py's CV pass at the end of `epoch`: every rank reads the whole CV list in order
    (``shuffle=False, partition=False``) through the same pipeline. With ``--num_workers 0`` its shuffle
    draws from the same global random state as training (so the next epoch's replay sees those draws
    too); with workers, from each worker's own (an estimate)."""
    empty = False
    for r in range(world):
        for w in range(workers):
            rng = rngs[(r, w)] if workers == 1 else random.Random(epoch * 1000 + r * 100 + w)
            res = run_epoch(cv, plan, epoch, rng, r, world, w, workers, online=online, shuffle_shards=False,
                            partition=False)
            empty |= bool(res.batches) and not res.batches[0]
    return empty


def _whole(v: Any) -> int | None:
    """An integer >= 1, also when written as a whole float (upstream's modulo treats 2.0 like 2)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 1 or not float(v).is_integer():
        return None
    return int(v)


def _analyse(doc: Document, opts: Any, a: DataAnalysis, keep_batches: bool, keep_half: bool = False,
             can_go_online: bool = False) -> None:
    use_cache = getattr(opts, "use_cache", True)
    shards_read = read_shards(Path(opts.data), use_cache)
    a.features = features_of(shards_read[1])  # feature checks work even if the replay below cannot run
    given = getattr(opts, "onnx_path", None)
    # --onnx_path DIR, or (not said) data without a speech_token column on an upstream that can extract online:
    # then online is the only way it trains (CX506 says so), and that is what the replay shows
    a.online = bool(given) or (given is None and can_go_online and a.features.tokens_absent > 0)
    key = "data_pipeline_gan" if opts.model == "hifigan" else "data_pipeline"
    st = stages(doc, key)
    if not st:
        raise Unsupported(f"the config has no {key} to replay")
    tokenize = next((s for s in st if s.func == "tokenize"), None)
    plan = [(s.func, stage_params(doc, s)) for s in st]
    for func, p in plan:
        if func == "shuffle":
            p["keep_half"] = keep_half
    batch = dict(plan)["batch"] if "batch" in dict(plan) else None
    if batch and batch["batch_type"] == "dynamic":
        a.max_frames_in_batch = batch["max_frames_in_batch"]
    token_path = _token_path(doc, tokenize, getattr(opts, "qwen_pretrain_path", None))
    corpus, a.unreadable_shards = build_corpus(Path(opts.data), token_path, use_cache, shards_read)
    nf, ratio = dict(plan).get("compute_fbank", {}).get("num_frames", -1), _flow_ratio(doc)
    if isinstance(nf, int) and nf > 0 and ratio and len(corpus.no_token_column) < len(corpus.utt):
        a.alignment = Alignment(nf, ratio)  # the data's own tokens are used (with --onnx_path DIR too)
    a.total = len(corpus.utt)
    a.entries = sum(1 for src in shards_read[0] if src)
    a.readable_shards = len(shards_read[1])
    a.accum_grad = _whole(doc.value("train_conf", "accum_grad", default=1)) or 1  # 2.0 steps like 2 upstream
    a.log_interval = _whole(doc.value("train_conf", "log_interval"))
    me = doc.value("train_conf", "max_epoch", default=1)
    a.max_epoch = me if isinstance(me, int) and not isinstance(me, bool) and me >= 1 else 1
    if doc.value("train_conf", "scheduler") in ("warmuplr", "NoamHoldAnnealing"):
        w = doc.value("train_conf", "scheduler_conf", "warmup_steps")
        if w is None and doc.value("train_conf", "scheduler") == "warmuplr":
            w = WARMUPLR_DEFAULT  # WarmupLR's own default when scheduler_conf leaves it out
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
    cv = None
    if getattr(opts, "cv_data", None) is not None:
        a.cv_list = str(opts.cv_data)
        cv, _ = build_corpus(Path(opts.cv_data), token_path, use_cache)
        a.cv_total = len(cv.utt)
    for epoch in range(n_epochs):
        per_rank = []
        empty = oversize = 0
        empty_first = False
        for r in range(world):
            count = 0
            for w in range(workers):
                res: EpochResult = run_epoch(corpus, plan, epoch, rngs[(r, w)], r, world, w, workers, online=a.online)
                if epoch == 0 and a.alignment is not None:
                    _check_alignment(a.alignment, corpus, res)
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
        if cv is not None and _cv_first_batch_empty(cv, plan, epoch, rngs, world, workers, a.online):
            a.cv_empty_first.append(epoch)
    a.total_steps = sum(e.steps for e in a.epochs)
    if a.extrapolated:
        a.total_steps = round(a.total_steps / n_epochs * want)
    if world > 1 and a.kept > a.total:
        a.kept = a.total  # shards replicated across ranks when there are fewer shards than ranks
