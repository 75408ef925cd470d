"""Argument helpers shared by the upstream-tree commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UsageError

UPSTREAM_ENV = "COSYEXT_UPSTREAM"


def add_upstream_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--upstream", metavar="DIR", type=Path,
                   help=f"upstream CosyVoice root (default: ${UPSTREAM_ENV}, else the current directory)")
    p.add_argument("--lock", metavar="FILE", type=Path, help="vendor.lock to use (default: the installed one)")


def upstream_root(args: argparse.Namespace) -> Path:
    root = args.upstream or Path(os.environ.get(UPSTREAM_ENV, "."))
    root = root.expanduser().resolve()
    if not root.is_dir():
        raise UsageError(f"upstream directory {root} does not exist", hint="cosyext vendor DIR  (then pass --upstream DIR)")
    if not (root / "cosyvoice").is_dir():
        raise UsageError(f"{root} does not look like an upstream CosyVoice checkout (no cosyvoice/ directory)",
                         hint="pass --upstream DIR, or get one with 'cosyext vendor DIR'")
    return root
