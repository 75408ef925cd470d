"""The one unknown-key check every `cosyext:` sub-section uses, so all of them suggest the same way."""

from __future__ import annotations

import difflib
from typing import Callable, Iterable


def reject_unknown_keys(value: Iterable, schema: Iterable[str], prefix: str,
                        error: Callable[[str, str], Exception]) -> None:
    """Raise ``error(dotted_key, message)`` for the first key of ``value`` not in ``schema``.

    The message names the closest valid key (if any is close) and lists the valid ones.
    """
    valid = list(schema)
    for key in value:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            guess = f"did you mean '{close[0]}'? " if close else ""
            raise error(f"{prefix}.{key}", f"unknown key; {guess}valid keys: {', '.join(valid)}")
