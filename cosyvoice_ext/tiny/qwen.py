"""A tiny Qwen2 directory (weights + tokenizer) that upstream's `Qwen2Encoder` and `get_qwen_tokenizer` load.

The real CosyVoice2 and CosyVoice3 LLMs wrap a 0.5B Qwen2 checkpoint. Tests cannot download it, so
this builds a 2-layer, 64-wide Qwen2 and a byte-level BPE tokenizer trained on a built-in corpus,
entirely offline.
The corpus is the made-up language of `LEXICON`, which `tiny.data` also speaks, so every word of
the generated transcripts is a single text token and the text predicts the speech tokens.

`qwen2_ids=True` lays the vocabulary out as the real Qwen2's: upstream's inference hard-codes token ids
of it (`CosyVoice3LM.inference` asserts id 151646, `<|endofprompt|>`, the first token upstream's
tokenizer adds after Qwen2's own specials at 151643..151645). The BPE tokens are padded with filler
tokens that no text encodes to, and the embedding table has Qwen2's 151,936 rows (tied with the
output layer, as in Qwen2-0.5B): ~9.7M parameters at hidden 64, 39 MB, ~2 s to make.
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
#: the real Qwen2 tokenizer's own special tokens and their ids; upstream adds its specials after them
QWEN2_SPECIAL_IDS = {EOS_TOKEN: 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
#: rows of the real Qwen2 embedding table (Qwen2-0.5B, CosyVoice-BlankEN)
QWEN2_VOCAB_SIZE = 151936


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


def _qwen2_id_layout(tok):
    """The trained BPE with Qwen2's id layout: filler up to 151643, then Qwen2's specials (module docstring)."""
    from tokenizers import Tokenizer

    doc = json.loads(tok.to_str())
    first_special = min(QWEN2_SPECIAL_IDS.values())
    # the trainer put <|endoftext|> at id 0: renumber the BPE tokens densely (merges name tokens, not ids)
    ordered = sorted((i, t) for t, i in doc["model"]["vocab"].items() if t not in QWEN2_SPECIAL_IDS)
    vocab = doc["model"]["vocab"] = {t: k for k, (_, t) in enumerate(ordered)}
    if len(vocab) > first_special:
        raise ValueError(f"bpe_vocab_size {len(vocab)} reaches Qwen2's special token ids ({first_special})")
    # no merge produces these, so no text encodes to them (their only job is to occupy ids)
    vocab.update({f"<|cosyext_filler_{i}|>": i for i in range(len(vocab), first_special)})
    vocab.update(QWEN2_SPECIAL_IDS)
    doc["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": True} for c, i in QWEN2_SPECIAL_IDS.items()]
    return Tokenizer.from_str(json.dumps(doc))


def make_tiny_qwen(dest: Path, seed: int = 0, *, bpe_vocab_size: int = 400,
                   family: str | Family = "cosyvoice2", qwen2_ids: bool = False) -> Path:
    """Write a Qwen2ForCausalLM + Qwen2TokenizerFast directory to `dest` and return it.

    `family` sizes the vocabulary so that every special token that family's upstream tokenizer
    adds gets an id below vocab_size. `qwen2_ids` gives the real Qwen2's token ids and table size
    instead (what upstream's CosyVoice3 inference needs; see the module docstring). Same seed, same
    bytes. Works with HF_HUB_OFFLINE=1.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2TokenizerFast

    headroom = _SPECIAL_TOKEN_HEADROOM[family.name if isinstance(family, Family) else get_family(family).name]

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    tok = _train_tokenizer(bpe_vocab_size)
    fast = Qwen2TokenizerFast(
        tokenizer_object=_qwen2_id_layout(tok) if qwen2_ids else tok,
        unk_token=None,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )
    fast.save_pretrained(str(dest))
    _force_tokenizer_class(dest / "tokenizer_config.json")

    vocab_size = QWEN2_VOCAB_SIZE if qwen2_ids else -(-(len(fast) + headroom) // 64) * 64
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        sliding_window=None,  # unused (use_sliding_window is off); None keeps transformers quiet
        tie_word_embeddings=qwen2_ids,
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
