"""`cosyext plugins`: what is loaded and which hooks each plugin implements."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plugins",
        help="list loaded plugins and their hooks",
        description="List cosyvoice_ext plugins (built-in and third-party entry points), their hooks and the\n"
        "cosyext: config keys each owns. The built-ins are always loaded; COSYEXT_DISABLE_PLUGIN_AUTOLOAD=1\n"
        "skips third-party plugins and COSYEXT_PLUGINS=a,b loads only those (docs/plugins.md).\n\n"
        "examples:\n  cosyext plugins\n  cosyext plugins --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..plugins import describe, new_manager

    rows = describe(new_manager())
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']}  ({row['module']}; {row['origin']})")
        if row["config_keys"]:
            print(f"    cosyext: keys {', '.join(row['config_keys'])}")
        for hook in row["hooks"]:
            print(f"    {hook}")
    return 0
