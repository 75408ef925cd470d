"""Text-token counts exactly as upstream's ``tokenize`` stage produces them for CosyVoice2.

Upstream's QwenTokenizer loads ``AutoTokenizer.from_pretrained(token_path)``, adds CosyVoice2's
markup tokens as special tokens, and encodes each transcript alone; the filter compares
``len(text_token)``. We do the same with our own code (never importing what the config names).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

# The markup CosyVoice2's QwenTokenizer registers as special tokens (one token each).
SPECIAL_TOKENS = {
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "additional_special_tokens": [
        "<|im_start|>", "<|im_end|>", "<|endofprompt|>", "[breath]", "<strong>", "</strong>", "[noise]",
        "[laughter]", "[cough]", "[clucking]", "[accent]", "[quick_breath]", "<laughter>", "</laughter>",
        "[hissing]", "[sigh]", "[vocalized-noise]", "[lipsmack]", "[mn]",
    ],
}
_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
          "added_tokens.json")


def tokenizer_id(token_path: str | Path) -> str:
    """Identity of a tokenizer directory (file names, sizes, mtimes) for the length-index cache."""
    p = Path(token_path).expanduser().resolve()
    h = hashlib.sha256(b"qwen-cv2\0" + str(p).encode())
    for name in _FILES:
        f = p / name
        if f.is_file():
            st = f.stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:24]


def qwen_counter(token_path: str | Path, via_transformers: bool = False) -> Callable[[list[str]], list[int]]:
    """Count tokens per transcript. Uses the Rust ``tokenizers`` library on ``tokenizer.json`` (what
    transformers' fast tokenizer runs underneath; no multi-second transformers import) unless asked
    to go through ``AutoTokenizer`` like upstream does; tests check both agree."""
    path = Path(token_path).expanduser()
    if not via_transformers and (path / "tokenizer.json").is_file():
        from tokenizers import AddedToken, Tokenizer

        rust = Tokenizer.from_file(str(path / "tokenizer.json"))
        specials = [SPECIAL_TOKENS["eos_token"], *SPECIAL_TOKENS["additional_special_tokens"]]
        rust.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])

        def count_rust(texts: list[str]) -> list[int]:
            return [len(e.ids) for e in rust.encode_batch(list(texts), add_special_tokens=True)] if texts else []

        return count_rust

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    tok.add_special_tokens(SPECIAL_TOKENS)

    def count(texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in tok(list(texts))["input_ids"]]

    return count
