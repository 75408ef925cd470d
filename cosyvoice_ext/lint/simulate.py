"""Upstream's training data pipeline replayed on lengths only: same shard shuffle, same filter
decisions, same sample shuffle (same random-number draws), same stable sort, same batching.

Upstream (cosyvoice/dataset/dataset.py, processor.py at the 2025 pin; the 2026 upstream's differences,
``num_frames`` padding, the half-buffer shuffle and keeping rows without tokens under online features,
are options): ``DistributedSampler`` shuffles the shard list with ``random.Random(epoch)``;
``shuffle``/``truncate`` draw from the *global*
``random`` state (seeded by the config's ``!apply:random.seed`` line, and carried across epochs);
``sort`` orders each buffer by mel frames; ``dynamic_batch`` pads to the longest sample and emits the
buffer when the next sample would overflow - so an oversize first sample yields an EMPTY batch.
A sample here is ``[id, n_samples, sample_rate, speech_tokens, mel_frames]``.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

Sample = list  # [gid, n_samples, sample_rate, speech_token_len, frames]

DROP_REASONS = {
    "min_length": "audio shorter than filter min_length",
    "max_length": "audio longer than filter max_length",
    "token_min_length": "fewer text tokens than filter token_min_length",
    "token_max_length": "more text tokens than filter token_max_length",
    "speech_token": "no speech tokens",
    "reject_speech_token": "empty reject_speech_token",
    "min_output_input_ratio": "text tokens per frame below min_output_input_ratio",
    "max_output_input_ratio": "text tokens per frame above max_output_input_ratio",
    "min_sample_rate": "sample rate below resample min_sample_rate",
}


class Unsupported(Exception):
    """A pipeline stage we cannot replay from lengths."""


@dataclass
class Corpus:
    """All samples of the data list, by shard, as plain per-sample arrays indexed by global id."""

    shards: list[list[int]]  # data.list order -> global ids in row order
    utt: list[str]
    n_samples: list[int]
    sample_rate: list[int]
    text_len: list[int]
    speech_token_len: list[int]
    reject_len: list[int] | None
    #: rows of shards without a speech_token column (online extraction computes their tokens)
    no_token_column: frozenset[int] = frozenset()


@dataclass
class EpochResult:
    batches: list[list[int]]  # global ids per batch, in yield order (empty list = the empty-batch trap)
    dropped: dict[str, int] = field(default_factory=dict)


def mel_frames(n: int, n_fft: int, hop: int, center: bool) -> int:
    """Frames of matcha's mel_spectrogram: reflect-pad (n_fft-hop)/2 each side, then an STFT."""
    pad = int((n_fft - hop) / 2)
    length = n + 2 * pad + (2 * (n_fft // 2) if center else 0)
    return (length - n_fft) // hop + 1 if length >= n_fft else 0


def _filter(src: Iterable[Sample], c: Corpus, p: dict[str, Any], dropped: dict[str, int],
            online: bool = False) -> Iterator[Sample]:
    """With online features (2026 upstream, --onnx_path DIR) rows without speech tokens are kept."""
    for s in src:
        g = s[0]
        num_frames = s[1] / s[2] * 100
        t = c.text_len[g]
        reason = None
        if num_frames < p["min_length"]:
            reason = "min_length"
        elif num_frames > p["max_length"]:
            reason = "max_length"
        elif t < p["token_min_length"]:
            reason = "token_min_length"
        elif t > p["token_max_length"]:
            reason = "token_max_length"
        elif s[3] == 0 and not online:
            reason = "speech_token"
        elif c.reject_len is not None and c.reject_len[g] == 0 and not online:
            reason = "reject_speech_token"
        elif num_frames != 0 and t / num_frames < p["min_output_input_ratio"]:
            reason = "min_output_input_ratio"
        elif num_frames != 0 and t / num_frames > p["max_output_input_ratio"]:
            reason = "max_output_input_ratio"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        yield s


def _resample(src: Iterable[Sample], p: dict[str, Any], dropped: dict[str, int]) -> Iterator[Sample]:
    new = p["resample_rate"]
    for s in src:
        if s[2] != new:
            if s[2] < p["min_sample_rate"]:
                dropped["min_sample_rate"] = dropped.get("min_sample_rate", 0) + 1
                continue
            g = math.gcd(int(s[2]), int(new))  # torchaudio: ceil(float32(new/g * n / (orig/g)))
            s[1] = int(math.ceil(_f32(int(new) // g * s[1] / (int(s[2]) // g))))
            s[2] = new
        yield s


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def _truncate(src: Iterable[Sample], p: dict[str, Any], rng: random.Random) -> Iterator[Sample]:
    n = p["truncate_length"]
    for s in src:
        if s[1] > n:
            rng.randint(0, s[1] - n)  # same draw as upstream, result irrelevant to lengths
        s[1] = n
        yield s


def _fbank(src: Iterable[Sample], p: dict[str, Any]) -> Iterator[Sample]:
    """2025: features trimmed to token_mel_ratio x tokens; 2026: audio zero-padded to a multiple of num_frames."""
    ratio = p.get("token_mel_ratio") or 0
    nf = p.get("num_frames", -1)
    for s in src:
        if isinstance(nf, int) and nf > 0:
            s[1] = math.ceil(s[1] / nf) * nf
        frames = mel_frames(s[1], p["n_fft"], p["hop_size"], p["center"])
        if ratio != 0:
            token_len = int(min(frames / ratio, s[3]))
            frames = min(frames, ratio * token_len)
            s[3] = token_len
        s[4] = frames
        yield s


def _shuffle(src: Iterable[Sample], size: int, rng: random.Random, keep_half: bool = False) -> Iterator[Sample]:
    """A full buffer is shuffled and yielded whole (2025), or its first int(size / 2) are yielded and the
    rest stays in the buffer (the 2026 upstream)."""
    buf: list[Sample] = []
    half = int(size / 2)
    for s in src:
        buf.append(s)
        if len(buf) >= size:
            rng.shuffle(buf)
            if keep_half:
                yield from buf[:half]
                buf = buf[half:]
            else:
                yield from buf
                buf = []
    rng.shuffle(buf)
    yield from buf


def _sort(src: Iterable[Sample], size: int) -> Iterator[Sample]:
    buf: list[Sample] = []
    key: Callable[[Sample], int] = lambda s: s[4]  # noqa: E731
    for s in src:
        buf.append(s)
        if len(buf) >= size:
            buf.sort(key=key)
            yield from buf
            buf = []
    buf.sort(key=key)
    yield from buf


def _dynamic(src: Iterable[Sample], max_frames: float) -> Iterator[list[Sample]]:
    buf: list[Sample] = []
    longest = 0
    for s in src:
        longest = max(longest, s[4])
        if longest * (len(buf) + 1) > max_frames:
            yield buf
            buf = [s]
            longest = s[4]
        else:
            buf.append(s)
    if buf:
        yield buf


def _static(src: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    buf: list[Sample] = []
    for s in src:
        buf.append(s)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def shard_order(n_shards: int, epoch: int, rank: int = 0, world_size: int = 1, worker: int = 0,
                num_workers: int = 1, shuffle: bool = True, partition: bool = True) -> list[int]:
    """DistributedSampler.sample, reproduced."""
    data = list(range(n_shards))
    if partition:
        if shuffle:
            random.Random(epoch).shuffle(data)
        if len(data) < world_size:
            data = (data * math.ceil(world_size / len(data)))[:world_size] if data else data
        data = data[rank::world_size]
    if len(data) < num_workers:
        data = (data * math.ceil(num_workers / len(data)))[:num_workers] if data else data
    return data[worker::num_workers]


def run_epoch(c: Corpus, stages: list[tuple[str, dict[str, Any]]], epoch: int, rng: random.Random,
              rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1,
              online: bool = False, shuffle_shards: bool = True, partition: bool = True) -> EpochResult:
    """One pass of one (rank, worker) stream through the pipeline; ``rng`` is the global random state.
    The CV set is read with ``shuffle_shards=False, partition=False`` (train_utils' cv_dataset)."""
    dropped: dict[str, int] = {}
    order = shard_order(len(c.shards), epoch, rank, world_size, worker, num_workers, shuffle_shards, partition)
    stream: Iterable[Any] = ([g, c.n_samples[g], c.sample_rate[g], c.speech_token_len[g], 0]
                             for i in order for g in c.shards[i])
    batched = False
    for func, p in stages:
        if func in ("parquet_opener", "tokenize", "parse_embedding", "compute_f0", "compute_whisper_fbank"):
            continue
        if batched and func != "padding":
            raise Unsupported(f"stage {func} after batch cannot be replayed")
        if func == "filter":
            stream = _filter(stream, c, p, dropped, online)
        elif func == "resample":
            stream = _resample(stream, p, dropped)
        elif func == "truncate":
            stream = _truncate(stream, p, rng)
        elif func == "compute_fbank":
            stream = _fbank(stream, p)
        elif func == "shuffle":
            stream = _shuffle(stream, p["shuffle_size"], rng, bool(p.get("keep_half")))
        elif func == "sort":
            stream = _sort(stream, p["sort_size"])
        elif func == "batch":
            stream = (_dynamic(stream, p["max_frames_in_batch"]) if p["batch_type"] == "dynamic"
                      else _static(stream, p["batch_size"]))
            batched = True
        elif func == "padding":
            continue
        else:
            raise Unsupported(f"unknown pipeline stage '{func}'")
    if not batched:
        raise Unsupported("the pipeline has no batch stage")
    frames: dict[int, int] = {}
    batches = []
    for b in stream:
        batches.append([s[0] for s in b])
        for s in b:
            frames[s[0]] = s[4]
    result = EpochResult(batches, dropped)
    result.frames = frames  # type: ignore[attr-defined]
    return result
