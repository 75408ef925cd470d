"""Which model family `prepare` writes data for, and the instruct text CosyVoice3 data carries.

The family decides the speech tokenizer (v2 or v3) and whether rows carry `instruct`; data for the
wrong family trains without an error and is wrong, so an explicit `--family` that contradicts the
pretrained directory is refused, naming the file that says otherwise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import family as fam_mod
from ..errors import UsageError

#: the token CosyVoice3's inference asserts is in its prompt (id 151646 in upstream's llm.py)
END_OF_PROMPT = "<|endofprompt|>"


@dataclasses.dataclass(frozen=True)
class Choice:
    family: fam_mod.Family
    #: how it was chosen, for the summary: "--family", "detected from DIR/cosyvoice3.yaml", "default"
    source: str
    #: the instruct text every row carries (CosyVoice3), else None
    instruct: str | None


def evidence(pretrained: Path) -> tuple[fam_mod.Family | None, str]:
    """The family a pretrained dir belongs to and the file that shows it (its yaml, else its tokenizer)."""
    pretrained = Path(pretrained)
    found = fam_mod.of_pretrained(pretrained)
    if found is not None:
        return found, str(pretrained / found.config_name)
    # stand-ins and trimmed copies may lack the yaml: one family's tokenizer alone decides too
    tokenizers = [f for f in fam_mod.FAMILIES.values() if (pretrained / f.speech_tokenizer).is_file()]
    if len(tokenizers) == 1:
        return tokenizers[0], str(pretrained / tokenizers[0].speech_tokenizer)
    return None, ""


def choose(requested: str | None, pretrained: Path | None, instruct: str | None) -> Choice:
    """The family from `--family`, else detected from `--pretrained`, else CosyVoice2; and its instruct."""
    if requested is not None:
        family = fam_mod.get(requested)
        source = "--family"
        if pretrained is not None:
            seen, where = evidence(pretrained)
            if seen is not None and seen is not family:
                raise UsageError(
                    f"--family {family.name}, but {pretrained} is a {seen.inference_class} model directory "
                    f"(it holds {Path(where).name})",
                    hint=f"drop --family (it is detected from --pretrained), or pass a {family.inference_class} "
                         f"directory (with {family.config_name} and {family.speech_tokenizer})")
    else:
        seen, where = evidence(pretrained) if pretrained is not None else (None, "")
        family, source = (seen, f"detected from {where}") if seen is not None else (fam_mod.COSYVOICE2, "default")
    return Choice(family, source, _instruct(family, instruct))


def _instruct(family: fam_mod.Family, instruct: str | None) -> str | None:
    if not family.default_instruct:
        if instruct is not None:
            raise UsageError(f"--instruct is for CosyVoice3 data; {family.inference_class} samples carry no "
                             "instruct text",
                             hint="drop --instruct, or prepare for --family cosyvoice3")
        return None
    text = family.default_instruct if instruct is None else instruct
    if END_OF_PROMPT not in text:
        raise UsageError(f"--instruct {instruct!r} lacks {END_OF_PROMPT}: {family.inference_class} inference refuses "
                         "prompts without it, so the model must be trained with it",
                         hint=f"--instruct {family.default_instruct!r}  (the default)")
    return text
