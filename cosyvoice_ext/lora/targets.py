"""Turn the configured targets into the exact module names of a real model, or say what is wrong.

We resolve names ourselves (instead of letting peft match silently) so a typo fails at config time
with the closest real module names, and so peft gets an exact list.
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable

from torch import nn

from .config import SECTION, LoraConfigError, LoraSettings


def _matches(name: str, entry: str) -> bool:
    """peft's name rule for a list entry: the full name or a dotted suffix of it."""
    return name == entry or name.endswith("." + entry)


def resolve_targets(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Full names of the Linear modules LoRA goes into, in module order."""
    key = f"{SECTION}.{settings.model}.target_modules"
    linear = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = [name for name, _ in model.named_modules()]
    regex = settings.target_regex
    if regex is not None:
        found = [n for n in names if re.fullmatch(regex, n)]
        if not found:
            raise LoraConfigError(key, f"{settings.target_modules!r} matches no module of the {settings.model} model; "
                                  f"examples of its Linear modules: {_examples(linear)}")
    else:
        found = []
        for entry in settings.target_modules:
            hits = [n for n in names if _matches(n, entry)]
            if not hits:
                raise LoraConfigError(key, f"'{entry}' matches no module of the {settings.model} model"
                                      f"{_closest(entry, names)}")
            found.extend(h for h in hits if h not in found)
        found.sort(key=names.index)
    bad = [n for n in found if n not in linear]
    if bad:
        kind = type(model.get_submodule(bad[0])).__name__
        raise LoraConfigError(key, f"'{bad[0]}' is a {kind}; LoRA targets must be Linear layers "
                              f"({len(bad)} non-Linear match(es))")
    return found


def resolve_modules_to_save(model: nn.Module, settings: LoraSettings, targets: Iterable[str]) -> list[str]:
    """Full names of the modules trained fully; they must not overlap the LoRA targets."""
    key = f"{SECTION}.{settings.model}.modules_to_save"
    names = [name for name, _ in model.named_modules() if name]
    out: list[str] = []
    for entry in settings.modules_to_save:
        hits = [n for n in names if _matches(n, entry)]
        if not hits:
            raise LoraConfigError(key, f"'{entry}' matches no module of the {settings.model} model{_closest(entry, names)}")
        out.extend(h for h in hits if h not in out)
    targets = list(targets)
    for m in out:
        for t in targets:
            if t == m or t.startswith(m + ".") or m.startswith(t + "."):
                raise LoraConfigError(key, f"'{m}' overlaps the LoRA target '{t}': a module is either "
                                      "LoRA-adapted or trained fully, not both")
    # drop modules nested in another listed one: their tensors are saved with the parent
    return [m for m in out if not any(m.startswith(o + ".") for o in out)]


def _closest(entry: str, names: list[str]) -> str:
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    close = difflib.get_close_matches(entry, names, n=3, cutoff=0.6) or \
        difflib.get_close_matches(entry.rsplit(".", 1)[-1], leaves, n=3, cutoff=0.6)
    return f"; closest: {', '.join(close)}" if close else ""


def _examples(names: set[str], n: int = 4) -> str:
    return ", ".join(sorted(names)[:n]) or "(none)"
