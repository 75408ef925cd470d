"""docs/lint.md's rule table and rule reference, generated from the built-in rule registry: each
rule's summary, its check's docstring (its documentation), example and fix. A test diffs the file
with this output, so the docs cannot drift from the rules.

    python -m cosyvoice_ext.lint.docs                       # print the generated section
    python -m cosyvoice_ext.lint.docs --write docs/lint.md  # replace it between the markers
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .registry import RuleRegistry
from .rule import Rule

BEGIN = "<!-- rules:begin (generated: python -m cosyvoice_ext.lint.docs --write docs/lint.md) -->"
END = "<!-- rules:end -->"


def builtin_registry() -> RuleRegistry:
    """The rules cosyext ships, whatever third-party plugins this Python has installed."""
    from . import plugin

    reg = RuleRegistry()
    for rule in plugin.all_rules():
        reg.add(rule, "lint_rules")
    return reg


def table(rules: list[Rule]) -> str:
    rows = ["| Code | Name | Severity | What it catches |", "|---|---|---|---|"]
    for r in rules:
        data = " (`--data`)" if r.needs_data else ""
        rows.append(f"| [{r.code}](#{r.code.lower()}-{r.name}) | {r.name} | {r.severity} | {_cell(r.summary)}{data} |")
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference(rules: list[Rule]) -> str:
    out = []
    for r in rules:
        out += [f"### {r.code} {r.name}", "", f"*{r.severity}*{' · `--data` only' if r.needs_data else ''}: "
                f"{r.summary}", ""]
        if r.doc:
            out += [r.doc, ""]
        if r.example:
            out += ["Flagged:", "", "```yaml", r.example, "```", ""]
        if r.fix:
            out += [f"Fix: {r.fix}", ""]
    return "\n".join(out)


def section(registry: RuleRegistry | None = None) -> str:
    rules = (registry or builtin_registry()).sorted()
    return (f"{BEGIN}\n\n{table(rules)}\n`cosyext rule CODE` prints the same for one rule.\n\n"
            f"## Rule reference\n\n{reference(rules)}{END}")


def replace_section(doc: str, new: str) -> str:
    """`doc` with the text between (and including) the markers replaced by `new`."""
    start, end = doc.index(BEGIN), doc.index(END) + len(END)
    return doc[:start] + new + doc[end:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", type=Path, metavar="FILE", help="replace the generated section of FILE in place")
    args = ap.parse_args(argv)
    text = section()
    if args.write is None:
        sys.stdout.write(text + "\n")
        return 0
    doc = args.write.read_text(encoding="utf-8")
    args.write.write_text(replace_section(doc, text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
