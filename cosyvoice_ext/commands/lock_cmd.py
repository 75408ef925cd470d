"""`cosyext lock`: regenerate vendor.lock (maintainers), or check that it is current."""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lock", help="regenerate vendor.lock from a pristine upstream tree and patches/",
                       description="Recompute the patch hashes and the expected patched-file hashes (and, with "
                       "--pin-table, the upstream file hashes). Maintainers run this after editing patches/.",
                       epilog="examples:\n  cosyext lock --upstream /tmp/pristine-CosyVoice\n"
                       "  cosyext lock --check          # exit 1 if vendor.lock is stale (uses PyPI offline source)\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", type=Path, metavar="DIR", help="pristine upstream tree (default: assemble from PyPI)")
    p.add_argument("--pin-table", type=Path, metavar="TSV", help="take [files] from a pin table instead of the lock")
    p.add_argument("--lock", type=Path, metavar="FILE", help="lock file to read and write (default: the installed one)")
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if the lock is stale")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import lockfile, lockgen, patching, sources

    path = (args.lock or lockfile.default_lock_path())
    base = lockfile.load(path)
    files = lockfile.files_from_pin_table(args.pin_table) if args.pin_table else None
    patches = patching.read_series()
    if args.upstream:
        new = lockgen.regenerate(base, args.upstream.resolve(), patches, files)
    else:
        with tempfile.TemporaryDirectory(prefix="cosyext-lock-") as tmp:
            root = Path(tmp) / "upstream"
            sources.vendor(root, "pypi", base if files is None else lockfile.Lock(**{**base.__dict__, "files": files}))
            new = lockgen.regenerate(base, root, patches, files)
    old_text, new_text = path.read_text(encoding="utf-8"), new.to_toml()
    if old_text == new_text:
        print(f"{path} is up to date ({len(new.files)} files, {len(new.patches)} patches)")
        return 0
    if args.check:
        sys.stdout.writelines(difflib.unified_diff(old_text.splitlines(True), new_text.splitlines(True),
                                                   str(path), "regenerated", n=1))
        print(f"{path} is stale", file=sys.stderr)
        print("  next: cosyext lock  (then commit vendor.lock with the patches)", file=sys.stderr)
        return 1
    new.write(path)
    print(f"wrote {path} ({len(new.files)} files, {len(new.patches)} patches)")
    return 0
