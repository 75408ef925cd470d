"""`cosyext apply-patches`, `cosyext status`, `cosyext revert`: a supported commit's patch series on an
upstream tree. Which series applies is decided by recognising the tree's commit by content.

Each command holds the tree's lock (a second one waits) and first recovers a command that a crash
interrupted, saying whether it rolled it forward or back (docs/patching.md)."""

from __future__ import annotations

import argparse
import json

from ._common import add_upstream_arg, upstream_root


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("apply-patches", help="apply the versioned patch series (atomic, idempotent, verified)",
                       description="Recognise which supported upstream commit the tree is at (by content), verify "
                       "every locked file, then apply that commit's patch series in order, all or nothing: every file is "
                       "replaced in one journaled transaction, so even a crash leaves nothing half done (the next run "
                       "finishes it). Running it again says 'already applied'.",
                       epilog="example:\n  cosyext apply-patches --upstream ~/CosyVoice\n"
                       "  cosyext apply-patches --upstream ~/CosyVoice --check   # dry run", formatter_class=fmt)
    add_upstream_arg(p)
    p.add_argument("--check", action="store_true", help="only verify that the series applies and the tree is writable; change nothing (an "
                        "interrupted earlier command is still recovered first)")
    p.add_argument("--allow-drift", action="store_true",
                   help="proceed when locked files the patches do not touch differ (they are listed)")
    p.set_defaults(func=run_apply)

    s = sub.add_parser("status", help="which supported commit a tree is at, and each locked file's state",
                       epilog="example:\n  cosyext status --upstream ~/CosyVoice --all", formatter_class=fmt)
    add_upstream_arg(s)
    s.add_argument("--all", action="store_true", help="list every locked file, not only patched and drifted ones")
    s.add_argument("--format", choices=["text", "json"], default="text")
    s.set_defaults(func=run_status)

    r = sub.add_parser("revert", help="restore pristine upstream (refuses if a patched file was edited)",
                       epilog="example:\n  cosyext revert --upstream ~/CosyVoice", formatter_class=fmt)
    add_upstream_arg(r)
    r.set_defaults(func=run_revert)


def _load(args):
    from ..upstream import lockfile

    return upstream_root(args), lockfile.load(args.lock)


def run_apply(args: argparse.Namespace) -> int:
    from ..upstream import patching

    root, lock = _load(args)
    with patching.session(root, "apply-patches") as recovered:
        if recovered:
            print(recovered)
        t = patching.target(root, lock, allow_drift=args.allow_drift)
        print(f"upstream: {root} ({t.recognition.origin()})")
        out = patching.apply_series(root, lock, check=args.check, allow_drift=args.allow_drift, t=t)
    print(out.message)
    for name in out.changed:
        print(f"  patched {name}")
    return 0


def run_revert(args: argparse.Namespace) -> int:
    from ..upstream import patching

    root, lock = _load(args)
    with patching.session(root, "revert") as recovered:
        if recovered:
            print(recovered)
        print(patching.revert_series(root, lock).message)
    return 0


def run_status(args: argparse.Namespace) -> int:
    from ..upstream import applied, patching
    from ..upstream.tree import State, differing, recognise, unsupported_error

    root, lock = _load(args)
    with patching.session(root, "status") as recovered:
        if recovered and args.format == "text":
            print(recovered)
        rec = recognise(root, lock, applied.read(root))
    commit = rec.commit or rec.nearest
    states = rec.states
    counts = {s.value: sum(1 for x in states if x.state is s) for s in State}
    supported = rec.commit is not None
    if args.format == "json":
        print(json.dumps({"upstream": str(root), "origin": rec.origin(), "supported": supported,
                          "commit": rec.commit.commit if supported else None,
                          "name": rec.commit.name if supported else None,
                          "nearest": {"name": rec.nearest.name, "commit": rec.nearest.commit,
                                      "differing": len(differing(states))},
                          "head": rec.head, "counts": counts, "recovered": recovered,
                          "files": {x.path: x.state.value for x in states}}, indent=2))
    else:
        print(f"upstream: {root} ({rec.origin()})")
        if not supported:
            print(f"file states against the nearest supported commit {commit.label}:")
        for x in states:
            if args.all or x.state is not State.PRISTINE:
                print(f"  {x.state.value:9} {x.path}")
        print(", ".join(f"{n} {k}" for k, n in counts.items()))
        if not supported:
            print(str(unsupported_error(rec, lock)))
        elif counts["drifted"] or counts["missing"]:
            print(f"drifted files were edited since upstream {commit.label}: apply-patches refuses to touch the "
                  "tree until they match" + (f" ('git -C {root} diff' shows how)" if rec.by == "git" else ""))
        elif counts["patched-older"]:
            print(f"patched by an older cosyvoice-ext series; next: cosyext apply-patches --upstream {root} (upgrades it)")
        elif counts["patched"]:
            series = patching.series_for(commit)
            touched = patching.touched_files(series)
            done = [x.path for x in states if x.state is State.PATCHED]
            if sorted(done) != touched:
                print(f"PARTLY patched: {len(done)} of the {len(touched)} files the series touches; next: "
                      f"cosyext apply-patches --upstream {root} (finishes it) or cosyext revert --upstream {root}")
                return 1
            print(f"patch series applied ({len(series)} patches for {commit.label})")
        else:
            print(f"pristine upstream {commit.label}; next: cosyext apply-patches --upstream {root}")
    return 1 if not supported or counts["drifted"] or counts["missing"] else 0
