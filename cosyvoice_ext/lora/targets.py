"""Turn the configured targets into the exact module names of a real model, or say what is wrong.

We resolve names ourselves (instead of letting peft match silently) so a typo fails at config time
with the model class and real module names, and so peft gets an exact list. Preset names resolve
here, against the family of the built model (CosyVoice2 and CosyVoice3 share config keys but not
module trees), so parsing the config stays model-free.
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable

from torch import nn

from .. import family as families
from .config import DEFAULT_FAMILY, SECTION, LoraConfigError, LoraSettings


def _matches(name: str, entry: str) -> bool:
    """peft's name rule for a list entry: the full name or a dotted suffix of it."""
    return name == entry or name.endswith("." + entry)


def model_family(model: nn.Module) -> families.Family | None:
    """The family of a built model by its class or the nearest known base class (a user's subclass counts)."""
    for cls in type(model).__mro__:
        fam = families.of_class(f"{cls.__module__}.{cls.__qualname__}")
        if fam is not None:
            return fam
    return None


def model_class(model: nn.Module) -> str:
    """The dotted class name of a model (as a config's ``!new:`` tag spells it); recorded in adapters."""
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def describe_model(model: nn.Module) -> str:
    """``CosyVoice3LM (cosyvoice3)``: the class a message names, with the family its presets come from."""
    fam = model_family(model)
    return f"{type(model).__name__} ({fam.name if fam else f'no known family; {DEFAULT_FAMILY} presets'})"


def resolve_targets(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Full names of the Linear modules LoRA goes into, in module order.

    A preset name means that preset of the model's family (``default``: the class's default set).
    """
    key = f"{SECTION}.{settings.model}.target_modules"
    linear_names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    linear = set(linear_names)
    names = [name for name, _ in model.named_modules()]
    fam = model_family(model)
    regex = settings.target_regex(fam.name if fam else None)
    where = f"the {settings.model} model {describe_model(model)}"
    if regex is not None:
        found = [n for n in names if re.fullmatch(regex, n)]
        if not found:
            raise LoraConfigError(key, f"{settings.target_modules!r} matches no module of {where}; "
                                  f"{_examples(linear_names)}", hint=_hint(settings))
    else:
        found = []
        for entry in settings.target_modules:
            hits = [n for n in names if _matches(n, entry)]
            if not hits:
                raise LoraConfigError(key, f"'{entry}' matches no module of {where}{_closest(entry, names)}; "
                                      f"{_examples(linear_names)}", hint=_hint(settings))
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


def _examples(linear: list[str], n: int = 8) -> str:
    """A few real Linear module names, one per kind, the kinds repeated in blocks first (likely targets)."""
    if not linear:
        return "it has no Linear modules"
    kinds: dict[str, list[str]] = {}
    for name in linear:
        kinds.setdefault(re.sub(r"\.\d+(?=\.|$)", ".N", name), []).append(name)
    order = {k: i for i, k in enumerate(kinds)}
    picked = sorted(sorted(kinds, key=lambda k: (-len(kinds[k]), order[k]))[:n], key=order.get)
    more = f", ... ({len(linear)} Linear modules in all)" if len(linear) > len(picked) else ""
    return "some of its Linear modules: " + ", ".join(kinds[k][0] for k in picked) + more


def _hint(settings: LoraSettings) -> str:
    return (f"fix {SECTION}.{settings.model}.target_modules: a preset (or leave it out for the model's default), a "
            "regex over full module names, or a list of names/suffixes of the Linear modules listed; see docs/lora.md")
