"""`cosyext vendor DEST`: upstream at a supported commit, verified file by file."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  cosyext vendor ~/CosyVoice                       # GitHub, newest supported commit, with the Matcha-TTS submodule
  cosyext vendor ~/CosyVoice --rev 2025-06-29      # an older supported commit (name or hash prefix: --rev 44316c34)
  cosyext vendor ~/CosyVoice --source ~/mirror/CosyVoice.bundle   # offline from a git bundle (Matcha-TTS.bundle beside it)
  cosyext vendor ~/CosyVoice --source ~/mirror     # a folder holding CosyVoice.bundle/.git and Matcha-TTS.bundle/.git
  cosyext vendor ~/CosyVoice --rev 2025-06-29 --source pypi   # offline from PyPI, for commits a wheel carries
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vendor", help="get upstream CosyVoice at a supported commit, verified against vendor.lock",
                       description="Put upstream CosyVoice at a supported commit (default: the newest) into DEST. "
                       "The source is staged and every locked file is checked against vendor.lock before DEST is "
                       "written; on any failure DEST is left as it was.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", type=Path, metavar="DEST", nargs="?", help="new (or empty) directory to create")
    p.add_argument("--source", default=None,
                   help="'github', 'pypi', a .whl file, a git bundle, a git mirror or a folder of them, a plain "
                        "directory, or a git URL (default: $COSYEXT_UPSTREAM_MIRROR if set, else github)")
    p.add_argument("--rev", help="supported commit: readable name or hash prefix (default: the newest; "
                                 "'cosyext vendor --list' shows them)")
    p.add_argument("--matcha-source", help="git URL, bundle or local mirror for the third_party/Matcha-TTS submodule")
    p.add_argument("--lock", metavar="FILE", type=Path, help="vendor.lock to use (default: the installed one)")
    p.add_argument("--list", action="store_true", help="list the supported upstream commits and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from ..upstream import lockfile, mirror, sources

    lock = lockfile.load(args.lock)
    if args.list:
        for c in reversed(lock.commits):
            newest = "  (default)" if c is lock.newest else ""
            wheel = f", also on PyPI as {c.pypi['name']}=={c.pypi['version']}" if c.pypi else ""
            print(f"{c.name}  {c.commit}  {', '.join(c.families)}{wheel}{newest}")
        return 0
    if args.dest is None:
        from ..errors import UsageError

        raise UsageError("DEST is required (the new directory to put upstream in)", hint="cosyext vendor ~/CosyVoice")
    source = args.source or os.environ.get(mirror.MIRROR_ENV, "").strip() or mirror.GITHUB
    print(sources.vendor(args.dest.expanduser(), source, lock, rev=args.rev, matcha=args.matcha_source))
    print(f"next: cosyext apply-patches --upstream {args.dest}")
    return 0
