"""`cosyext apply-patches`, `cosyext status`, `cosyext revert`: the patch series on an upstream tree."""

from __future__ import annotations

import argparse
import json

from ._common import add_upstream_arg, upstream_root


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("apply-patches", help="apply the versioned patch series (atomic, idempotent, verified)",
                       description="Verify every locked upstream file, then apply patches/series in order, all or "
                       "nothing. Running it again says 'already applied'.",
                       epilog="example:\n  cosyext apply-patches --upstream ~/CosyVoice\n"
                       "  cosyext apply-patches --upstream ~/CosyVoice --check   # dry run", formatter_class=fmt)
    add_upstream_arg(p)
    p.add_argument("--check", action="store_true", help="only verify that the series applies; change nothing")
    p.add_argument("--allow-drift", action="store_true",
                   help="proceed when locked files the patches do not touch differ from the pin (they are listed)")
    p.set_defaults(func=run_apply)

    s = sub.add_parser("status", help="pristine / patched / drifted state of each locked upstream file",
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
    from .. import lockfile, patching

    return upstream_root(args), lockfile.load(args.lock), patching.read_series()


def run_apply(args: argparse.Namespace) -> int:
    from .. import patching
    from ..tree import describe_origin

    root, lock, patches = _load(args)
    print(f"upstream: {root} ({describe_origin(root, lock)})")
    out = patching.apply_series(root, lock, patches, check=args.check, allow_drift=args.allow_drift)
    print(out.message)
    for name in out.changed:
        print(f"  patched {name}")
    return 0


def run_revert(args: argparse.Namespace) -> int:
    from .. import patching

    root, lock, patches = _load(args)
    out = patching.revert_series(root, lock, patches)
    print(out.message)
    return 0


def run_status(args: argparse.Namespace) -> int:
    from .. import applied
    from ..tree import State, classify, describe_origin

    root, lock, patches = _load(args)
    states = classify(root, lock, applied.read(root))
    counts = {s.value: sum(1 for x in states if x.state is s) for s in State}
    if args.format == "json":
        print(json.dumps({"upstream": str(root), "origin": describe_origin(root, lock), "counts": counts,
                          "files": {x.path: x.state.value for x in states}}, indent=2))
    else:
        print(f"upstream: {root} ({describe_origin(root, lock)})")
        for x in states:
            if args.all or x.state is not State.PRISTINE:
                print(f"  {x.state.value:9} {x.path}")
        print(", ".join(f"{n} {k}" for k, n in counts.items()))
        if counts["drifted"] or counts["missing"]:
            print("drifted files were edited or come from another upstream commit: "
                  f"'git -C {root} diff' shows how; apply-patches refuses to touch the tree until they match")
        elif counts["patched-older"]:
            print(f"patched by an older cosyvoice-ext series; next: cosyext apply-patches --upstream {root} (upgrades it)")
        elif counts["patched"]:
            print(f"patch series applied ({len(patches)} patches)")
        else:
            print(f"pristine upstream; next: cosyext apply-patches --upstream {root}")
    return 1 if counts["drifted"] or counts["missing"] else 0
