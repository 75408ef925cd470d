"""The one unknown-key check the whole ``cosyext:`` section uses, so every level suggests the same way.

Core refuses a top-level key no plugin registered; each plugin's parser refuses unknown keys of its
own section with :func:`reject_unknown_keys`. Errors it raises are marked (:func:`is_unknown_key`)
so lint reports them as unknown keys (CX402) rather than bad values (CX401).
"""

from __future__ import annotations

import difflib
from typing import Callable, Iterable

SECTION = "cosyext"
_UNKNOWN = "cosyext_unknown_key"


def unknown_key_message(key: object, valid: Iterable[str]) -> str:
    """'unknown key; did you mean X? valid keys: ...' (the closest valid key only when one is close)."""
    valid = list(valid)
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    guess = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key; {guess}valid keys: {', '.join(valid) or '(none)'}"


def reject_unknown_keys(value: Iterable, schema: Iterable[str], prefix: str,
                        error: Callable[[str, str], Exception]) -> None:
    """Raise ``error(dotted_key, message)`` for the first key of ``value`` not in ``schema``."""
    valid = list(schema)
    for key in value:
        if key not in valid:
            raise mark_unknown(error(f"{prefix}.{key}", unknown_key_message(key, valid)))


def mark_unknown(exc: Exception) -> Exception:
    """Mark ``exc`` as an unknown-key error (see :func:`is_unknown_key`) and return it."""
    setattr(exc, _UNKNOWN, True)
    return exc


def is_unknown_key(exc: BaseException) -> bool:
    """Whether a ConfigError came from :func:`reject_unknown_keys` (the key itself is wrong, not its value)."""
    return bool(getattr(exc, _UNKNOWN, False))
