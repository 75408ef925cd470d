"""Tiny training data in upstream CosyVoice's parquet format, generated in milliseconds.

Each utterance is a sentence in the made-up language of `tiny.qwen.LEXICON`. Every word lasts a
fixed number of speech tokens (the last one may be cut short), is sung as a sine at a word- and
speaker-specific pitch, and maps to its own block of speech-token ids. So the text predicts the speech tokens (the LLM can learn) and
the speech tokens predict the mel frames (the flow can learn), yet nothing is stored in the repo.

Every utterance lasts a whole number of speech tokens (960 samples each at 24 kHz): upstream trees
with CosyVoice3 pad speech up to the token grid and then need exactly ceil(samples / 960) tokens, or
the flow dies on a size mismatch. CosyVoice3 rows carry the `instruct` text; rows for online feature
extraction leave out the embedding and token columns, which is how upstream knows to compute them.
"""

from __future__ import annotations

import io
import math
import random
import wave
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cosyvoice_ext.family import Family
from cosyvoice_ext.family import get as get_family
from cosyvoice_ext.tiny.qwen import LEXICON

TOKEN_RATE = 25  # speech tokens per second (CosyVoice2's token_frame_rate)
SPEECH_TOKEN_VOCAB = 6561
EMBED_DIM = 192
TOKENS_PER_WORD = 6  # 0.24 s per word
#: columns upstream computes itself (speaker embedding, speech tokens) when online features are on
FEATURE_COLUMNS = ("utt_embedding", "spk_embedding", "speech_token")

TextFn = Callable[[int], str]


def _word_id(word: str) -> int:
    """Stable id for any word: lexicon position, or a CRC for words a `text_fn` made up."""
    try:
        return LEXICON.index(word)
    except ValueError:
        return len(LEXICON) + zlib.crc32(word.encode("utf-8")) % 64


def _speech_tokens(words: list[str], n_tokens: int) -> list[int]:
    """A word's i-th token is a fixed id, so the tokens follow from the text alone (like CosyVoice2's
    semantic tokens, they carry content, not the speaker; the speaker only shows in the audio)."""
    out = []
    for t in range(n_tokens):
        word = words[min(t // TOKENS_PER_WORD, len(words) - 1)]
        block = _word_id(word) * 31 * TOKENS_PER_WORD
        out.append((block + t % TOKENS_PER_WORD) % SPEECH_TOKEN_VOCAB)
    return out


def _synthesize(words: list[str], n_tokens: int, speaker: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A sine per word (pitch from word and speaker), short fades against clicks, a little noise."""
    per_token = sample_rate // TOKEN_RATE
    base = 110.0 * 2 ** (3 * speaker / 12)
    pieces = []
    phase = 0.0
    for w in range(-(-n_tokens // TOKENS_PER_WORD)):
        n = min(TOKENS_PER_WORD, n_tokens - w * TOKENS_PER_WORD) * per_token
        word = words[min(w, len(words) - 1)]
        freq = base * 2 ** ((_word_id(word) % 24) / 12)
        angle = phase + 2 * np.pi * freq * np.arange(n) / sample_rate
        phase = float((phase + 2 * np.pi * freq * n / sample_rate) % (2 * np.pi))
        fade = min(n // 4, sample_rate // 100)
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))
        env = np.ones(n)
        env[:fade] = ramp
        env[n - fade:] = ramp[::-1]
        pieces.append(0.4 * env * (np.sin(angle) + 0.3 * np.sin(2 * angle)))
    audio = np.concatenate(pieces) + rng.normal(0.0, 0.005, n_tokens * per_token)
    return np.clip(audio, -1.0, 1.0)


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono PCM16 WAV, the format upstream's data preparation stores in `audio_data`."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes((audio * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=EMBED_DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _sentence(n_words: int, rng: random.Random) -> list[str]:
    return [rng.choice(LEXICON) for _ in range(n_words)]


def _rows(n_utts: int, *, seed: int, min_sec: float, max_sec: float, sample_rate: int, speakers: int,
          text_fn: TextFn | None, utt_prefix: str) -> list[dict]:
    if n_utts < 0 or speakers < 1 or min_sec <= 0 or max_sec < min_sec:
        raise ValueError(f"bad tiny-data request: n_utts={n_utts} speakers={speakers} min_sec={min_sec} max_sec={max_sec}")
    if sample_rate % TOKEN_RATE:
        raise ValueError(f"sample_rate {sample_rate} is not a multiple of the token rate {TOKEN_RATE}")
    pyrng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    spk_emb = [_unit(np.random.default_rng([seed, 1000 + s])) for s in range(speakers)]
    lo = max(1, math.ceil(min_sec * TOKEN_RATE - 1e-9))
    hi = max(lo, math.floor(max_sec * TOKEN_RATE + 1e-9))
    rows = []
    for i in range(n_utts):
        s = i % speakers
        n_tokens = pyrng.randint(lo, hi)  # durations land on the 40 ms token grid, inside [min_sec, max_sec]
        n_words = -(-n_tokens // TOKENS_PER_WORD)
        text = text_fn(i) if text_fn else " ".join(_sentence(n_words, pyrng))
        words = text.split() or [LEXICON[0]]
        audio = _synthesize(words, n_tokens, s, sample_rate, nprng)
        assert len(audio) == n_tokens * (sample_rate // TOKEN_RATE), "audio must end on the token grid"
        utt_emb = spk_emb[s] + 0.05 * _unit(nprng)
        spk = f"spk{s:02d}"
        utt = f"{utt_prefix}_{spk}_{i:05d}"
        rows.append({
            "utt": utt,
            "wav": f"wavs/{utt}.wav",
            "audio_data": wav_bytes(audio, sample_rate),
            "text": text,
            "spk": spk,
            "utt_embedding": (utt_emb / np.linalg.norm(utt_emb)).astype(np.float32).tolist(),
            "spk_embedding": spk_emb[s].tolist(),
            "speech_token": _speech_tokens(words, n_tokens),
        })
    return rows


def _split(n_utts: int, shards: int, shard_sizes: list[int] | None) -> list[int]:
    if shard_sizes is not None:
        if sum(shard_sizes) != n_utts or any(k < 0 for k in shard_sizes):
            raise ValueError(f"shard_sizes {shard_sizes} must be non-negative and sum to n_utts={n_utts}")
        return list(shard_sizes)
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return [n_utts // shards + (1 if k < n_utts % shards else 0) for k in range(shards)]


def write_parquet_dataset(dest: Path, n_utts: int, *, shards: int = 1, seed: int = 0, min_sec: float = 1.0,
                          max_sec: float = 3.0, sample_rate: int = 24000, speakers: int = 1,
                          text_fn: TextFn | None = None, shard_sizes: list[int] | None = None,
                          utt_prefix: str = "tiny", family: str | Family = "cosyvoice2",
                          online_features: bool = False) -> Path:
    """Write parquet shards plus `data.list` (absolute shard paths) under `dest`; return the data.list path.

    `shard_sizes` (summing to `n_utts`) makes deliberately uneven shards: upstream partitions whole
    shards across ranks. `text_fn(i)` replaces utterance i's transcript (its words still set pitch and
    tokens). `family` 'cosyvoice3' adds the `instruct` column (the family's default instruct text).
    `online_features` leaves out `FEATURE_COLUMNS`, as data for upstream's online extraction has them
    (upstream computes a feature only when its column is absent). Same arguments, same bytes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..prepare.shards import INSTRUCT
    from ..prepare.shards import schema as upstream_schema

    fam = family if isinstance(family, Family) else get_family(family)
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    sizes = _split(n_utts, shards, shard_sizes)
    rows = _rows(n_utts, seed=seed, min_sec=min_sec, max_sec=max_sec, sample_rate=sample_rate,
                 speakers=speakers, text_fn=text_fn, utt_prefix=utt_prefix)
    instruct = bool(fam.default_instruct)
    for row in rows if instruct else ():
        row[INSTRUCT] = fam.default_instruct
    paths, start = [], 0
    for k, size in enumerate(sizes):
        chunk = rows[start:start + size]
        start += size
        table = pa.Table.from_pylist(chunk, schema=upstream_schema(instruct=instruct))
        if online_features:
            table = table.drop_columns(list(FEATURE_COLUMNS))
        path = dest / f"{utt_prefix}_{k:04d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    data_list = dest / "data.list"
    data_list.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
    return data_list


def write_train_cv(dest: Path, n_train: int, n_cv: int, **kw) -> tuple[Path, Path]:
    """Train and CV sets under `dest/train` and `dest/cv` with distinct utterance ids and audio.

    `kw` goes to `write_parquet_dataset` for both; `shards`/`shard_sizes` shape the train set only.
    """
    dest = Path(dest)
    seed = kw.pop("seed", 0)
    train = write_parquet_dataset(dest / "train", n_train, seed=seed, utt_prefix="train", **kw)
    cv_kw = {k: v for k, v in kw.items() if k not in ("shard_sizes", "shards")}
    cv = write_parquet_dataset(dest / "cv", n_cv, seed=seed + 7919, utt_prefix="cv", **cv_kw)
    return train, cv


def write_recordings(dest: Path, n_utts: int, *, seed: int = 0, min_sec: float = 1.0, max_sec: float = 3.0,
                     sample_rate: int = 24000, speaker: str = "voice") -> Path:
    """A folder of NAME.wav + NAME.txt pairs, as a user's recordings look before `cosyext prepare`."""
    dest = Path(dest).resolve() / speaker
    dest.mkdir(parents=True, exist_ok=True)
    for row in _rows(n_utts, seed=seed, min_sec=min_sec, max_sec=max_sec, sample_rate=sample_rate, speakers=1,
                     text_fn=None, utt_prefix="rec"):
        stem = row["utt"].replace("rec_spk00_", "clip_")
        (dest / f"{stem}.wav").write_bytes(row["audio_data"])
        (dest / f"{stem}.txt").write_text(row["text"] + "\n", encoding="utf-8")
    return dest.parent
