"""A parsed config as rules see it: key-path lookup, `!ref` resolution, positions, suppressions.

Resolution is purely textual (HyperPyYAML's ``<a.b>`` / ``<a[b]>`` paths and simple arithmetic
such as ``!ref <token_frame_rate> * <token_mel_ratio>``); nothing from the config is imported.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .yamlpos import Parsed, Pos, YMap, YNode, YScalar, YSeq, parse, walk

REF = re.compile(r"<([^<>]*)>")
SUPPRESS = re.compile(r"#\s*cosyext:\s*disable=([A-Za-z0-9_, ]+)")
_UNRESOLVED = object()
MAX_PLAIN_NODES = 20_000  # plain values bigger than this (alias bombs) count as unresolvable


class RefError(Exception):
    """A `!ref <x>` whose target does not exist (or refers to itself)."""


@dataclass
class Document:
    path: Path
    text: str
    parsed: Parsed
    _suppress: dict[int, set[str]] = field(default_factory=dict)
    _nodes: list[tuple[tuple, YNode]] | None = field(default=None, repr=False)

    @classmethod
    def from_text(cls, text: str, path: str | Path = "<string>") -> "Document":
        doc = cls(Path(path), text, parse(text))
        doc._suppress = _suppressions(text)
        return doc

    @property
    def root(self) -> YMap | None:
        r = self.parsed.root
        return r if isinstance(r, YMap) else None

    @property
    def dir(self) -> Path:
        return self.path.parent

    def nodes(self) -> list[tuple[tuple, YNode]]:
        """Every (key path, node) of the document, as :func:`yamlpos.walk` yields them; walked once and
        shared by the rules (several walk the whole tree)."""
        if self._nodes is None:
            self._nodes = list(walk(self.root))
        return self._nodes

    # --- lookup -----------------------------------------------------------------------------
    def node(self, *path: str | int) -> YNode | None:
        """The node at ``path`` (keys or list indexes), following `!ref` hops on the way."""
        cur: YNode | None = self.root
        for part in path:
            cur = self.deref(cur)
            if isinstance(cur, YMap) and isinstance(part, str):
                cur = cur.get(part)
            elif isinstance(cur, YSeq) and isinstance(part, int) and -len(cur.items) <= part < len(cur.items):
                cur = cur.items[part]
            else:
                return None
        return cur

    def key(self, *path: str) -> YNode | None:
        """The *key* node of ``path`` (to point at ``token_max_length:`` itself)."""
        parent = self.deref(self.node(*path[:-1])) if len(path) > 1 else self.root
        return parent.key_node(path[-1]) if isinstance(parent, YMap) else None

    def value(self, *path: str | int, default: Any = None) -> Any:
        """Plain value at ``path``: scalars typed, refs resolved; ``default`` if absent or unresolvable."""
        n = self.node(*path)
        if n is None:
            return default
        try:
            v = self.scalar(n)
        except RefError:
            return default
        return default if v is _UNRESOLVED else v

    def number(self, *path: str | int) -> float | int | None:
        v = self.value(*path)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    # --- refs -------------------------------------------------------------------------------
    def ref_target(self, ref: str) -> YNode:
        """Node named by ``a.b`` / ``a[b]`` (HyperPyYAML reference syntax)."""
        parts = [p for p in re.split(r"[.\[\]]", ref.strip()) if p]
        if not parts:
            raise RefError(f"empty reference <{ref}>")
        cur: YNode | None = self.root
        for p in parts:
            if isinstance(cur, YMap):
                cur = cur.get(p)
            elif isinstance(cur, YSeq) and p.lstrip("-").isdigit() and int(p) < len(cur.items):
                cur = cur.items[int(p)]
            else:
                cur = None
            if cur is None:
                raise RefError(f"<{ref}> does not name a key in this config")
        return cur

    def deref(self, node: YNode | None, _depth: int = 0) -> YNode | None:
        """Follow a `!ref <x>` that is exactly one reference; other nodes come back unchanged. A reference
        that resolves to nothing (or a cycle) gives None: rules treat it as absent, CX003 reports it."""
        while isinstance(node, YScalar) and node.tag in ("!ref", "!copy"):
            refs = REF.findall(node.raw)
            if len(refs) != 1 or node.raw.strip() != f"<{refs[0]}>":
                return node
            _depth += 1
            if _depth > 50:
                return None
            try:
                node = self.ref_target(refs[0])
            except RefError:
                return None
        return node

    def scalar(self, node: YNode, _depth: int = 0, _memo: dict[int, Any] | None = None) -> Any:
        """Typed value of a scalar (refs substituted, arithmetic evaluated); containers -> plain data.
        Aliased containers are converted once (shared), so alias bombs and cycles stay cheap."""
        if _depth > 50:
            raise RefError("reference cycle")
        node = self.deref(node, _depth)
        if isinstance(node, YScalar):
            if node.tag in ("!ref", "!copy"):
                return self._expr(node.raw, _depth)
            return node.value if not (node.tag and node.tag.startswith("!")) else _UNRESOLVED
        if _memo is None and _expanded_size(node, {}) > MAX_PLAIN_NODES:
            raise RefError("value too large once its YAML aliases are expanded")
        memo = {} if _memo is None else _memo
        if id(node) in memo:
            return memo[id(node)]
        if isinstance(node, YMap):
            out: Any = {}
            memo[id(node)] = out
            for k, v in node.items:
                out[k.raw if isinstance(k, YScalar) else "?"] = self._soft(v, _depth, memo)
            return out
        if isinstance(node, YSeq):
            lst: list = []
            memo[id(node)] = lst
            lst.extend(self._soft(v, _depth, memo) for v in node.items)
            return lst
        return _UNRESOLVED

    def _soft(self, node: YNode, depth: int, memo: dict[int, Any]) -> Any:
        try:
            v = self.scalar(node, depth + 1, memo)
        except RefError:
            return None
        return None if v is _UNRESOLVED else v

    def _expr(self, raw: str, depth: int) -> Any:
        refs = REF.findall(raw)
        values = [self.scalar(self.ref_target(r), depth + 1) for r in refs]
        if any(v is _UNRESOLVED for v in values):
            return _UNRESOLVED
        if len(refs) == 1 and raw.strip() == f"<{refs[0]}>":
            return values[0]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            it = iter(values)
            try:
                return _safe_eval(REF.sub(lambda m: repr(next(it)), raw))
            except Exception:
                pass
        it = iter(values)
        return REF.sub(lambda m: str(next(it)), raw)

    # --- positions & suppression ------------------------------------------------------------
    def suppressed(self, code: str, line: int) -> bool:
        """`# cosyext: disable=CODE` on the finding's line, or alone on the line above it."""
        for ln in (line, line - 1):
            codes = self._suppress.get(ln)
            if codes and (code in codes or "ALL" in codes or any(code.startswith(c) for c in codes)):
                if ln == line or self._comment_only(ln):
                    return True
        return False

    def _comment_only(self, line: int) -> bool:
        lines = self.text.splitlines()
        return 0 < line <= len(lines) and lines[line - 1].lstrip().startswith("#")


def _expanded_size(node: YNode, memo: dict[int, int]) -> int:
    """Node count with aliases expanded (memoised per node, so computing it is linear)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_PLAIN_NODES + 1  # a cycle is "infinitely" large
    kids = [v for _, v in node.items] if isinstance(node, YMap) else node.items if isinstance(node, YSeq) else []
    total = 1
    for k in kids:
        total += _expanded_size(k, memo)
        if total > MAX_PLAIN_NODES:
            break
    memo[id(node)] = total
    return total


def _suppressions(text: str) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if "cosyext" not in line:
            continue
        m = SUPPRESS.search(line)
        if m:
            out[i] = {c.strip().upper() for c in m.group(1).split(",") if c.strip()}
    return out


_OPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos,
}


def _safe_eval(expr: str) -> Any:
    """Numbers and + - * / // % only: enough for HyperPyYAML's ref arithmetic, nothing executable."""

    def ev(n: ast.AST) -> Any:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            return n.value
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.operand))
        raise ValueError("not arithmetic")

    if len(expr) > 200:
        raise ValueError("too long")
    return ev(ast.parse(expr.strip(), mode="eval"))


def position(node: YNode | Pos | None) -> Pos:
    if isinstance(node, Pos):
        return node
    return node.start if node is not None else Pos(1, 1)
