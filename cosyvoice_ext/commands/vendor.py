"""`cosyext vendor DEST`: upstream at the pinned commit, verified file by file."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  cosyext vendor ~/CosyVoice                       # clone GitHub at the pin, with the Matcha-TTS submodule
  cosyext vendor ~/CosyVoice --source pypi         # offline from PyPI: the wheel that carries the same bytes
  cosyext vendor ~/CosyVoice --source /mirror/CosyVoice.git --matcha-source /mirror/Matcha-TTS.git
  cosyext vendor ~/CosyVoice --source ~/Downloads/cosyvoice_minicpmo-0.1.0-py3-none-any.whl
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vendor", help="get upstream CosyVoice at the pinned commit, verified against vendor.lock",
                       description="Put upstream CosyVoice at the pinned commit into DEST. The source is staged and "
                       "every locked file is checked against vendor.lock before DEST is written; on any failure DEST "
                       "is left as it was.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", type=Path, metavar="DEST", help="new (or empty) directory to create")
    p.add_argument("--source", default="github",
                   help="'github' (default), 'pypi', a .whl file, a local git mirror, a plain directory, or a git URL")
    p.add_argument("--rev", help="commit to check out from a git source (default: the pinned commit)")
    p.add_argument("--matcha-source", help="git URL or local mirror for the third_party/Matcha-TTS submodule")
    p.add_argument("--lock", metavar="FILE", type=Path, help="vendor.lock to use (default: the installed one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import lockfile, sources

    lock = lockfile.load(args.lock)
    print(sources.vendor(args.dest.expanduser(), args.source, lock, rev=args.rev, matcha=args.matcha_source))
    print(f"next: cosyext apply-patches --upstream {args.dest}")
    return 0
