"""`speaker_config.json`: the voices a `cosyext serve` process speaks with (pure Python, no torch).

The format TTS servers already read (DESIGN.md 13), plus `"type": "merged"` entries::

    {"default_speaker": "alice",
     "pretrained_dir": "pretrained_models/CosyVoice2-0.5B",        # optional: the base of "lora" voices
     "speakers": {
       "alice": {"type": "lora", "llm_lora_model_path": "exp/alice/llm", "flow_lora_model_path": "exp/alice/flow",
                 "spk_embedding_path": "voices/alice.pt", "description": "...", "active": true},
       "bob":   {"type": "merged", "model_dir": "serve/bob", "spk_id": "bob", "description": "...", "active": true}}}

Paths are relative to the config file. A `lora` voice is a pretrained dir (its entry's
`pretrained_dir`, else the file's, else `cosyext serve --pretrained`) plus a training run's LoRA
adapters (a run dir or one `epoch_N_whole.pt`; either may be null) and a speaker embedding; a
`merged` voice is a directory `cosyext export --serve` wrote, speaking as `spk_id` (default: the
voice's name) of its spk2info.pt, or as `spk_embedding_path` when given.

The list form older `cosyext export --serve` wrote (``"speakers": [{"name": ..., "model_dir": ...}]``)
is read and migrated (:func:`normalise`). An entry that cannot be used does not stop the others:
it is kept with the reason (:attr:`ServeConfig.problems`); `--strict` turns reasons into refusal.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..safe_paths import at_or_inside

TYPES = ("lora", "merged")
COMMON_KEYS = ("type", "description", "active", "family", "spk_embedding_path")
LORA_KEYS = (*COMMON_KEYS, "llm_lora_model_path", "flow_lora_model_path", "pretrained_dir")
MERGED_KEYS = (*COMMON_KEYS, "model_dir", "spk_id", "merged")
#: keys of the list form's entries (older `cosyext export --serve`), dropped or renamed by the migration
_LIST_FORM_KEYS = ("name", "spk_id", "model_dir", "description", "family", "llm", "flow")
_HINT = "fix the entry in the config (docs/serve.md describes the format), then POST /v1/reload"


class OutsideRoot(UsageError):
    """A path the config names resolves outside `--root`."""


@dataclass(frozen=True)
class VoiceSpec:
    """One entry, its paths resolved (symlinks too) against the config file's directory."""

    name: str
    type: str
    #: the pretrained dir ("lora") or the exported serve dir ("merged")
    model_dir: Path
    llm: Path | None = None
    flow: Path | None = None
    embedding: Path | None = None
    spk_id: str | None = None
    description: str = ""
    active: bool = True
    family: str | None = None

    def adapters(self) -> dict[str, Path]:
        return {m: p for m, p in (("llm", self.llm), ("flow", self.flow)) if p is not None}

    def paths(self) -> list[Path]:
        return [p for p in (self.model_dir, self.llm, self.flow, self.embedding) if p is not None]

    def fingerprint(self) -> tuple:
        """Identity for reloads: the entry and the size/mtime of every file it names (a changed file reloads)."""
        return (self, tuple(_stamp(p) for p in self.paths()))


@dataclass(frozen=True)
class ServeConfig:
    path: Path
    default_speaker: str | None
    #: usable entries by name, active or not
    voices: dict[str, VoiceSpec]
    #: entries that cannot be used, with the reason
    problems: dict[str, str] = field(default_factory=dict)
    #: the file was in the old list form (read as the keyed form)
    migrated: bool = False


def read_json(path: Path) -> Any:
    """The config file's JSON; UsageError (never a traceback) when it cannot be read."""
    hint = f"check {path} (docs/serve.md describes the format)"
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config {path} does not exist",
                         hint="write one (docs/serve.md), or use the speaker_config.json 'cosyext export --serve' "
                              "wrote") from None
    except IsADirectoryError:
        raise UsageError(f"config {path} is a directory", hint="pass the speaker_config.json file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config {path}: {exc}", hint=hint) from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"config {path} is not valid JSON: {exc}", hint=hint) from exc


def normalise(doc: Any, config_dir: Path, where: str) -> tuple[dict, bool]:
    """The keyed form of a config document, and whether it was migrated from the list form.

    UsageError for anything that is neither form: a file is never replaced by a guess.
    """
    if isinstance(doc, dict) and "speakers" not in doc:
        doc = {**doc, "speakers": {}}
    speakers = doc.get("speakers") if isinstance(doc, dict) else None
    if isinstance(speakers, dict) and all(isinstance(s, dict) for s in speakers.values()):
        default = doc.get("default_speaker")
        if default is not None and not isinstance(default, str):
            raise UsageError(f"{where}: default_speaker must be a voice name, got {default!r}", hint=_HINT)
        return doc, False
    if isinstance(speakers, list) and all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in speakers):
        return _migrate(doc, config_dir), True
    raise UsageError(f"{where} is not a speaker config: expected {{\"speakers\": {{NAME: {{...}}}}, "
                     f"\"default_speaker\": NAME}} (or the older {{\"speakers\": [{{\"name\": ...}}]}})",
                     hint=f"move it aside (mv {where} {where}.bak) and run again: the speaker's entry is written anew")


def _migrate(doc: dict, config_dir: Path) -> dict:
    """List form -> keyed form: each entry is a merged serve dir (what the old export wrote)."""
    out = {k: v for k, v in doc.items() if k != "speakers"}
    speakers: dict[str, dict] = {}
    for old in doc["speakers"]:
        entry: dict[str, Any] = {"type": "merged", "model_dir": relative_to(old.get("model_dir", "."), config_dir),
                                 "spk_id": old.get("spk_id", old["name"]), "description": old.get("description", ""),
                                 "active": bool(old.get("active", True))}
        if old.get("family"):
            entry["family"] = old["family"]
        entry.update({k: v for k, v in old.items() if k not in _LIST_FORM_KEYS and k not in entry})
        speakers[old["name"]] = entry
    out["speakers"] = speakers
    if not isinstance(out.get("default_speaker"), str) and speakers:
        out["default_speaker"] = next(iter(speakers))
    return out


def relative_to(path: str | os.PathLike, config_dir: Path) -> str:
    """`path` as the config stores it: relative to the config's directory when inside it, else absolute."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    base = Path(os.path.realpath(config_dir))
    real = Path(os.path.realpath(p))
    if at_or_inside(real, base):
        return real.relative_to(base).as_posix() or "."
    return str(p)


def load(path: str | os.PathLike, *, root: Path | None = None, pretrained: Path | None = None) -> ServeConfig:
    """Read and check the config (files are checked for existence and `root`, not opened)."""
    path = Path(path).expanduser().absolute()
    if root is not None:
        confine(path, root, "the config file")
    doc, migrated = normalise(read_json(path), path.parent, str(path))
    return parse(doc, path, root=root, pretrained=pretrained, migrated=migrated)


def parse(doc: dict, path: Path, *, root: Path | None = None, pretrained: Path | None = None,
          migrated: bool = False) -> ServeConfig:
    config_dir = path.parent
    top_pre = doc.get("pretrained_dir")
    voices: dict[str, VoiceSpec] = {}
    problems: dict[str, str] = {}
    for name, entry in doc.get("speakers", {}).items():
        try:
            voices[name] = _entry(name, entry, config_dir, root, top_pre, pretrained)
        except UsageError as exc:
            problems[name] = str(exc)
    default = doc.get("default_speaker")
    return ServeConfig(path, default, voices, problems, migrated)


def _entry(name: str, entry: dict, config_dir: Path, root: Path | None, top_pre: Any,
           cli_pre: Path | None) -> VoiceSpec:
    if not name.strip():
        raise UsageError("an empty voice name")
    kind = entry.get("type", "lora")
    if kind not in TYPES:
        raise UsageError(f"type {kind!r} is not one of {', '.join(TYPES)}")
    known = LORA_KEYS if kind == "lora" else MERGED_KEYS
    for key in entry:
        if key not in known:
            close = difflib.get_close_matches(key, LORA_KEYS + MERGED_KEYS, n=1, cutoff=0.75)
            if close:
                raise UsageError(f"unknown key {key!r}; did you mean {close[0]!r}?")
    for key in ("description",):
        if not isinstance(entry.get(key, ""), str):
            raise UsageError(f"{key} must be a string")
    active = entry.get("active", True)
    if not isinstance(active, bool):
        raise UsageError(f"active must be true or false, got {active!r}")
    family = entry.get("family")
    if family is not None and family not in ("cosyvoice2", "cosyvoice3"):
        raise UsageError(f"family {family!r} is not cosyvoice2 or cosyvoice3")

    def path_of(key: str, value: Any = None, *, required: bool = False) -> Path | None:
        value = entry.get(key) if value is None else value
        if value is None or value == "":
            if required:
                raise UsageError(f"{key} is missing")
            return None
        if not isinstance(value, str):
            raise UsageError(f"{key} must be a path (a string), got {value!r}")
        p = Path(value).expanduser()
        p = p if p.is_absolute() else config_dir / p
        real = Path(os.path.realpath(p))
        if root is not None:
            confine(real, root, f"{key} {value}")
        if not real.exists():
            raise UsageError(f"{key} {value} does not exist ({real})")
        return real

    embedding = path_of("spk_embedding_path")
    common = dict(name=name, type=kind, embedding=embedding, description=entry.get("description", ""),
                  active=active, family=family)
    if kind == "merged":
        model_dir = path_of("model_dir", required=True)
        spk_id = entry.get("spk_id", name)
        if not isinstance(spk_id, str) or not spk_id:
            raise UsageError(f"spk_id must be a speaker name, got {spk_id!r}")
        return VoiceSpec(model_dir=model_dir, spk_id=None if embedding else spk_id, **common)
    if embedding is None:
        raise UsageError("spk_embedding_path is missing: a lora voice speaks prompt-free with that embedding")
    if entry.get("pretrained_dir") is not None:
        model_dir = path_of("pretrained_dir")
    elif top_pre is not None:
        model_dir = path_of("pretrained_dir", top_pre)
    elif cli_pre is not None:
        model_dir = path_of("pretrained_dir", str(Path(cli_pre).expanduser().absolute()))
    else:
        raise UsageError("no base model for this lora voice: set pretrained_dir in the entry or at the top of the "
                         "config, or pass cosyext serve --pretrained DIR")
    llm, flow = path_of("llm_lora_model_path"), path_of("flow_lora_model_path")
    return VoiceSpec(model_dir=model_dir, llm=llm, flow=flow, **common)


def refusal(path: Path, problems: dict[str, str]) -> UsageError:
    """What --strict says instead of starting (or reloading) with broken entries."""
    listed = "\n".join(f"  {name}: {why}" for name, why in problems.items())
    return UsageError(f"--strict: {len(problems)} problem(s) in {path}:\n{listed}",
                      hint="fix them, or serve without --strict (broken voices are skipped)")


def confine(path: Path, root: Path, what: str) -> Path:
    """`path` with symlinks resolved; OutsideRoot unless it is inside `root`."""
    real = Path(os.path.realpath(path))
    top = Path(os.path.realpath(root))
    if not at_or_inside(real, top):
        raise OutsideRoot(f"{what} resolves to {real}, outside --root {top}",
                          hint=f"move the file under {top}, or serve without --root")
    return real


def confine_tree(directory: Path, root: Path, what: str) -> None:
    """Every entry under `directory` (links followed, as upstream's loaders would) resolves inside `root`.

    Only names are read (lstat, readlink), so nothing outside `root` is opened to find out.
    """
    seen: set[Path] = set()
    stack = [confine(directory, root, what)]
    while stack:
        d = stack.pop()
        if d in seen:
            continue
        seen.add(d)
        for child in os.scandir(d):
            real = confine(Path(child.path), root, f"{what}: {child.path}")
            if real.is_dir():
                stack.append(real)


def _stamp(path: Path) -> tuple:
    """(mtime_ns, size) of a file, or of every top-level entry of a directory (a run dir's new epochs)."""
    try:
        if path.is_dir():
            return tuple(sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(path)
                                if e.is_file()))
        st = path.stat()
        return (st.st_mtime_ns, st.st_size)
    except OSError:
        return ()
