"""`cosyext rebase`: replay the newest patch series onto a new upstream commit (maintainers)."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  cosyext rebase --onto main --source ~/mirror/CosyVoice.bundle        # newest series onto upstream main
  cosyext rebase --continue                                            # after resolving a conflict
  cosyext rebase --abort                                               # give up; nothing else was written
  cosyext rebase --from 2025-06-29 --onto ace7c47 --source ~/mirror --last-update 2026-12-01

On success the series is written to patches/<NAME>/ (NAME: the commit's date unless --name) and the commit
is added to vendor.lock; commit both. Conflicts you resolve are recorded in patches/<NAME>/resolutions/,
so running the same rebase again gives byte-identical patches.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rebase", help="maintainers: replay the patch series onto a new upstream commit (3-way)",
                       description="Replay a supported commit's patch series onto another upstream commit with 3-way "
                       "merges in a private git work tree, stop at the first conflict (naming the patch, file and "
                       "hunk), and write the refreshed series and its lock entry.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onto", metavar="REV", help="the new upstream commit (hash, tag or branch of --source)")
    p.add_argument("--source", help="git bundle, git mirror, mirror folder or URL holding both commits "
                   "(default: $COSYEXT_UPSTREAM_MIRROR, else github)")
    p.add_argument("--from", dest="from_rev", metavar="REV", help="supported commit whose series is replayed "
                   "(default: the newest)")
    p.add_argument("--name", help="readable name of the new commit and its patches/ folder (default: its date)")
    p.add_argument("--last-update", metavar="YYYY-MM-DD", help="DEP-3 Last-Update of the refreshed patches "
                   "(default: $SOURCE_DATE_EPOCH or today)")
    p.add_argument("--matcha-source", help="Matcha-TTS bundle or mirror, if the submodule commit moved")
    p.add_argument("--workdir", type=Path, default=Path(".cosyext-rebase"),
                   help="private work tree (default: ./.cosyext-rebase; removed when the rebase ends)")
    p.add_argument("--patches", type=Path, metavar="DIR", help="patches folder to read and write "
                   "(default: this checkout's patches/)")
    p.add_argument("--lock", type=Path, metavar="FILE", help="lock file to update (default: this checkout's vendor.lock)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--continue", dest="cont", action="store_true", help="go on after resolving a conflict")
    g.add_argument("--abort", action="store_true", help="stop and remove the work dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import re

    from ..errors import UsageError
    from ..upstream import lockfile, mirror, patching, rebase

    workdir = args.workdir.expanduser().resolve()
    if args.abort:
        print(rebase.abort(workdir))
        return 0
    if args.cont:
        result = rebase.resume(workdir)
    else:
        if not args.onto:
            raise UsageError("--onto REV is required to start a rebase",
                             hint="cosyext rebase --onto main --source PATH/CosyVoice.bundle")
        if args.last_update and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", args.last_update):
            raise UsageError(f"--last-update takes YYYY-MM-DD, got {args.last_update!r}")
        lock_path = (args.lock or lockfile.default_lock_path()).resolve()
        patches_root = (args.patches or patching.patches_root()).resolve()
        source = args.source or os.environ.get(mirror.MIRROR_ENV, "").strip() or mirror.GITHUB
        result = rebase.start(lockfile.load(lock_path), lock_path, patches_root, workdir, onto=args.onto,
                              source=source, from_rev=args.from_rev, name=args.name, last_update=args.last_update,
                              matcha=args.matcha_source)
    c = result.commit
    for note in result.notes:
        print(f"note: {note}")
    how = f"rebased from {c.rebased_from}" if c.rebased_from else "refreshed"
    print(f"{len(c.series)} patches for upstream {c.label} ({', '.join(c.families)}), {how}: wrote "
          f"{result.written} and its entry in the lock")
    print(f"next: review 'git diff -- {result.written}', run the tests, and commit patches/ with vendor.lock")
    return 0
