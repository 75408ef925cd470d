"""A tiny Qwen2 directory (weights + tokenizer) that upstream's `Qwen2Encoder` and `get_qwen_tokenizer` load.

The real CosyVoice2 and CosyVoice3 LLMs wrap a 0.5B Qwen2 checkpoint. Tests cannot download it, so
this builds a 2-layer, 64-wide Qwen2 and a byte-level BPE tokenizer trained on a built-in corpus,
entirely offline.
The corpus is the made-up language of `LEXICON`, which `tiny.data` also speaks, so every word of
the generated transcripts is a single text token and the text predicts the speech tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..family import Family
from ..family import get as get_family

# The made-up language of the tiny data: each word gets its own pitch and speech-token block.
LEXICON: tuple[str, ...] = (
    "ba", "be", "bi", "bo", "bu", "da", "de", "di",
    "do", "du", "ka", "ke", "ki", "ko", "ku", "la",
    "le", "li", "lo", "lu", "ma", "me", "mi", "mo",
)

# A little ordinary text so user-written transcripts (text_fn, README demo) tokenize sensibly too.
_PROSE = (
    "the quick brown fox jumps over the lazy dog",
    "a tiny voice model learns to speak from a few short sentences",
    "hello world this is a test of the speech synthesis pipeline",
    "one two three four five six seven eight nine ten",
    "she sells sea shells by the sea shore",
    "training on the cpu is slow but it works for small models",
)

EOS_TOKEN = "<|endoftext|>"
# Upstream's tokenizers add special tokens on load and the embedding table must cover them:
# CosyVoice2Tokenizer ~20, CosyVoice3Tokenizer 280 (phonemes). Per family, so the CosyVoice2 Qwen
# stays byte-identical to the one earlier releases generated.
_SPECIAL_TOKEN_HEADROOM = {"cosyvoice2": 64, "cosyvoice3": 320}


def _corpus() -> list[str]:
    """Deterministic training text: every lexicon word many times, in varied neighbourhoods, plus prose."""
    lines = []
    n = len(LEXICON)
    for stride in (1, 5, 7, 11):
        for start in range(n):
            lines.append(" ".join(LEXICON[(start + k * stride) % n] for k in range(8)))
    lines.extend(_PROSE * 4)
    return lines


def _train_tokenizer(vocab_size: int):
    """Byte-level BPE like Qwen2's, so any UTF-8 text encodes without unknown tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def make_tiny_qwen(dest: Path, seed: int = 0, *, bpe_vocab_size: int = 400,
                   family: str | Family = "cosyvoice2") -> Path:
    """Write a Qwen2ForCausalLM + Qwen2TokenizerFast directory to `dest` and return it.

    `family` sizes the vocabulary so that every special token that family's upstream tokenizer
    adds gets an id below vocab_size. Same seed, same bytes. Works with HF_HUB_OFFLINE=1.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2TokenizerFast

    headroom = _SPECIAL_TOKEN_HEADROOM[family.name if isinstance(family, Family) else get_family(family).name]

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    fast = Qwen2TokenizerFast(
        tokenizer_object=_train_tokenizer(bpe_vocab_size),
        unk_token=None,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    fast.save_pretrained(str(dest))
    _force_tokenizer_class(dest / "tokenizer_config.json")

    vocab_size = -(-(len(fast) + headroom) // 64) * 64
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        sliding_window=None,  # unused (use_sliding_window is off); None keeps transformers quiet
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=fast.convert_tokens_to_ids(EOS_TOKEN),
        torch_dtype="float32",
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(str(dest), safe_serialization=True)
    return dest


def _force_tokenizer_class(path: Path) -> None:
    """AutoTokenizer picks the class from here (there is no hub lookup offline)."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
