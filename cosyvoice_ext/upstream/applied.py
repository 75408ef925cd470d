"""The record of what `apply-patches` applied to a tree (like quilt's .pc/): copies of the patches
and the hashes they produced. It lets a newer cosyvoice-ext recognise a tree patched by an older
series and upgrade or revert it, instead of calling it drifted."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import pin

RECORD_DIR = Path(".cosyext") / "applied"


@dataclass(frozen=True)
class Record:
    names: list[str]
    paths: list[Path]
    patched: dict[str, str]  # file -> sha256 of the patched result
    commit: str = ""  # the upstream commit the series was applied to


def read(root: Path) -> Record | None:
    d = root / RECORD_DIR
    try:
        doc = json.loads((d / "state.json").read_text(encoding="utf-8"))
        names = [p["name"] for p in doc["patches"]]
        paths = [d / n for n in names]
        if not all(p.is_file() and pin.sha256(p.read_bytes()) == e["sha256"] for p, e in zip(paths, doc["patches"])):
            return None
        return Record(names, paths, dict(doc["patched"]), str(doc.get("upstream_commit", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build(into: Path, patches: list, results: dict[str, bytes], upstream_commit: str) -> None:
    """Write a complete record into the new directory `into`; the journal renames it into place, so
    the record always describes a whole series (see `journal`)."""
    from .. import __version__

    into.mkdir()
    for p in patches:
        shutil.copyfile(p.path, into / p.name)
    (into / "state.json").write_text(json.dumps({
        "cosyvoice_ext": __version__,
        "upstream_commit": upstream_commit,
        "patches": [{"name": p.name, "sha256": p.sha256} for p in patches],
        "patched": {f: pin.sha256(data) for f, data in sorted(results.items())},
    }, indent=2) + "\n", encoding="utf-8")


def remove(root: Path) -> None:
    """Drop a stale record (the files are pristine already); `.cosyext/` goes when it is empty."""
    shutil.rmtree(root / RECORD_DIR, ignore_errors=True)
    try:
        (root / RECORD_DIR.parent).rmdir()
    except OSError:
        pass
