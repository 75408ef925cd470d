"""`cosyext lock`: regenerate vendor.lock's entries (maintainers), or check that they are current."""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lock", help="regenerate vendor.lock from pristine upstream trees and patches/",
                       description="Recompute each supported commit's patch hashes and expected patched-file hashes "
                       "(and, with --pin-table, its upstream file hashes). Maintainers run this after editing "
                       "patches/; 'cosyext rebase' adds new commits.",
                       epilog="examples:\n  cosyext lock                              # every commit, pristine trees "
                       "from $COSYEXT_UPSTREAM_MIRROR / PyPI\n"
                       "  cosyext lock --commit 2025-06-29 --upstream /tmp/pristine-CosyVoice\n"
                       "  cosyext lock --check                      # exit 1 if vendor.lock is stale\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--commit", metavar="REV", help="only this supported commit (name or hash prefix)")
    p.add_argument("--upstream", type=Path, metavar="DIR", help="pristine upstream tree at that commit "
                   "(needs --commit; default: vendor one from --source)")
    p.add_argument("--source", help="where pristine trees come from (see 'cosyext vendor --help'; default: "
                   "$COSYEXT_UPSTREAM_MIRROR or the development checkout's mirror, else PyPI/GitHub)")
    p.add_argument("--pin-table", type=Path, metavar="TSV", help="take the commit's [files] from a pin table (needs --commit)")
    p.add_argument("--add-files", nargs="+", metavar="PATH", help="lock these upstream files too (needs --commit); "
                   "they are hashed from the pristine tree")
    p.add_argument("--part", choices=["train", "inference"], default="train",
                   help="with --add-files: 'inference' files may be absent from a training-only tree (default: train)")
    p.add_argument("--lock", type=Path, metavar="FILE", help="lock file to read and write (default: the installed one)")
    p.add_argument("--patches", type=Path, metavar="DIR", help="patches folder (default: the installed one)")
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if the lock is stale")
    p.set_defaults(func=run)


def _source(args, commit) -> str:
    from ..upstream import mirror

    if args.source:
        return args.source
    default = mirror.default_source()
    if default != mirror.GITHUB:
        return default
    return "pypi" if commit.pypi else mirror.GITHUB


def _added(args, root: Path, files: dict) -> dict:
    """`files` plus the --add-files hashed from the pristine tree at `root`."""
    from ..errors import UsageError
    from ..upstream.lockfile import FileHash

    out = dict(files)
    for rel in args.add_files or ():
        f = root / rel
        if not f.is_file():
            raise UsageError(f"--add-files {rel}: no such file in the pristine tree of that commit",
                             hint="give paths relative to the upstream root, e.g. cosyvoice/cli/cosyvoice.py")
        out[rel] = FileHash.of(f.read_bytes(), part=args.part)
    return out


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..upstream import lockfile, lockgen, patching, sources

    path = args.lock or lockfile.default_lock_path()
    lock = lockfile.load(path)
    if (args.upstream or args.pin_table or args.add_files) and not args.commit:
        raise UsageError("--upstream, --pin-table and --add-files describe one commit: also pass --commit REV",
                         hint=f"supported commits: {lock.names()}")
    todo = [lock.resolve(args.commit)] if args.commit else list(lock.commits)
    for commit in todo:
        files = lockfile.files_from_pin_table(args.pin_table) if args.pin_table else None
        patches = patching.series_for(commit, args.patches)
        if args.upstream:
            root = args.upstream.resolve()
            new = lockgen.regenerate(commit, root, patches, _added(args, root, files or commit.files))
        else:
            with tempfile.TemporaryDirectory(prefix="cosyext-lock-") as tmp:
                root = Path(tmp) / "upstream"
                probe = commit if files is None else lockfile.Commit(**{**commit.__dict__, "files": files})
                single = lockfile.Lock(lock.upstream_url, lock.submodule_urls, [probe])
                sources.vendor(root, _source(args, commit), single, rev=commit.commit)
                new = lockgen.regenerate(commit, root, patches, _added(args, root, files or commit.files))
        lock.replace_commit(new)
    old_text, new_text = path.read_text(encoding="utf-8"), lock.to_toml()
    if old_text == new_text:
        print(f"{path} is up to date ({len(lock.commits)} supported commits: {lock.names()})")
        return 0
    if args.check:
        sys.stdout.writelines(difflib.unified_diff(old_text.splitlines(True), new_text.splitlines(True),
                                                   str(path), "regenerated", n=1))
        print(f"{path} is stale", file=sys.stderr)
        print("  next: cosyext lock  (then commit vendor.lock with the patches)", file=sys.stderr)
        return 1
    lock.write(path)
    print(f"wrote {path} ({len(lock.commits)} supported commits: {lock.names()})")
    return 0
