"""A YAML loader for linting: keeps every node's position and never constructs anything.

HyperPyYAML configs run code while loading (``!new:``, ``!apply:``, ``!name:``, ``!include``).
We only *compose* the document (PyYAML's composer builds the node graph; no constructor runs),
so any tag is just a string on a node. Scalars are typed like YAML 1.2 / ruamel (``1e-5`` is a
float), which is what HyperPyYAML users get at train time.
"""

from __future__ import annotations

import gc
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import yaml

try:  # libyaml is ~5x faster; marks are identical
    _Loader: type = yaml.CSafeLoader  # type: ignore[attr-defined]
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

# HyperPyYAML tags whose suffix names a Python object: "!new:pkg.Cls" -> ("new", "pkg.Cls")
CALL_TAG = re.compile(r"^!(new|name|apply|module|include):(.*)$")
_CALL_INITIALS = frozenset("nami")  # first letters of those kinds: `!ref` tags skip the regex

_INT = re.compile(r"^[-+]?(0|[1-9][0-9_]*)$")
_HEX = re.compile(r"^0x[0-9a-fA-F_]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(inf|Inf|INF)$")
_NAN = re.compile(r"^\.(nan|NaN|NAN)$")
_BOOL = {"true": True, "false": False}
_NULL = {"", "~", "null", "Null", "NULL"}


class Pos(NamedTuple):
    """1-based line and column, as editors and SARIF count them (a tuple: every node has two, and
    building them is a good part of parsing a large config)."""

    line: int
    col: int


@dataclass(eq=False)
class YNode:
    """One YAML node: its tag (None for untagged), where it starts and ends."""

    tag: str | None
    start: Pos
    end: Pos

    @property
    def call(self) -> tuple[str, str] | None:
        """``("name", "cosyvoice.dataset.processor.filter")`` for a HyperPyYAML call tag."""
        if not self.tag or self.tag[1:2] not in _CALL_INITIALS:
            return None
        m = CALL_TAG.match(self.tag)
        return (m.group(1), m.group(2)) if m else None


@dataclass(eq=False)
class YScalar(YNode):
    raw: str = ""
    plain: bool = True  # unquoted, so implicit typing applies

    @property
    def value(self) -> Any:
        """The typed value (int/float/bool/None/str); tagged scalars stay strings."""
        if not self.plain or (self.tag and self.tag.startswith("!")):
            return self.raw
        return scalar_value(self.raw)


@dataclass(eq=False)
class YMap(YNode):
    items: list[tuple[YScalar | YNode, YNode]] = field(default_factory=list)
    # key -> (first key node, last value node), built on first lookup: a linear scan per lookup made
    # `!ref` resolution quadratic in the number of keys (a 1 MB config took a minute)
    _index: dict[str, tuple[YScalar, YNode]] | None = field(default=None, init=False, repr=False)
    _indexed: int = field(default=-1, init=False, repr=False)

    def _lookup(self) -> dict[str, tuple[YScalar, YNode]]:
        if self._index is None or self._indexed != len(self.items):  # rebuilt if items were appended
            index: dict[str, tuple[YScalar, YNode]] = {}
            for k, v in self.items:
                if isinstance(k, YScalar):
                    first = index.get(k.raw)
                    index[k.raw] = (first[0] if first else k, v)
            self._index, self._indexed = index, len(self.items)
        return self._index

    def keys(self) -> list[str]:
        return [k.raw for k, _ in self.items if isinstance(k, YScalar)]

    def get(self, key: str) -> YNode | None:
        """The value node of the *last* occurrence (what ruamel would raise on, we report)."""
        hit = self._lookup().get(key)
        return hit[1] if hit else None

    def key_node(self, key: str) -> YScalar | None:
        """The key node of the *first* occurrence."""
        hit = self._lookup().get(key)
        return hit[0] if hit else None


@dataclass(eq=False)
class YSeq(YNode):
    items: list[YNode] = field(default_factory=list)


@dataclass
class ParseProblem:
    """A syntax error or a duplicate key, with the position to report."""

    kind: str  # "syntax" | "duplicate" | "not-mapping"
    message: str
    pos: Pos


@dataclass
class Parsed:
    root: YNode | None
    problems: list[ParseProblem]


def scalar_value(raw: str) -> Any:
    if raw in _NULL:
        return None
    low = raw.lower()
    if low in _BOOL and raw in ("true", "false", "True", "False", "TRUE", "FALSE"):
        return _BOOL[low]
    if _INT.match(raw):
        return int(raw.replace("_", ""))
    if _HEX.match(raw):
        return int(raw.replace("_", ""), 16)
    if _FLOAT.match(raw):
        try:
            return float(raw.replace("_", ""))
        except ValueError:
            return raw
    if _INF.match(raw):
        return float("-inf") if raw.startswith("-") else float("inf")
    if _NAN.match(raw):
        return float("nan")
    return raw


def _pos(mark: Any) -> Pos:
    return Pos(mark.line + 1, mark.column + 1)


class _Converter:
    """PyYAML nodes -> our nodes. Aliases share one converted node, so cycles and
    billion-laughs documents stay linear."""

    def __init__(self) -> None:
        self.memo: dict[int, YNode] = {}
        self.problems: list[ParseProblem] = []

    def convert(self, node: yaml.Node) -> YNode:
        done = self.memo.get(id(node))
        if done is not None:
            return done
        tag = node.tag if isinstance(node.tag, str) and node.tag.startswith("!") else None
        start, end = _pos(node.start_mark), _pos(node.end_mark)
        if isinstance(node, yaml.ScalarNode):
            out: YNode = YScalar(tag, start, end, raw=str(node.value), plain=node.style in (None, ""))
            self.memo[id(node)] = out
            return out
        if isinstance(node, yaml.SequenceNode):
            seq = YSeq(tag, start, end)
            self.memo[id(node)] = seq
            seq.items = [self.convert(n) for n in node.value]
            return seq
        mapping = YMap(tag, start, end)
        self.memo[id(node)] = mapping
        seen: dict[str, Pos] = {}
        for k, v in node.value:
            key = self.convert(k)
            val = self.convert(v)
            if isinstance(key, YScalar):
                if key.raw in seen and not key.raw.startswith("<<"):
                    first = seen[key.raw]
                    self.problems.append(ParseProblem(
                        "duplicate",
                        f"duplicate key '{key.raw}' (first defined at line {first.line}); "
                        "HyperPyYAML refuses to load this file",
                        key.start,
                    ))
                seen.setdefault(key.raw, key.start)
            mapping.items.append((key, val))
        return mapping


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building hundreds of thousands of nodes (none of them
    garbage) otherwise triggers full collections that each walk every node built so far, which
    made parsing and linting a 10 MB config several times slower than its own work."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def parse(text: str) -> Parsed:
    """Compose ``text`` into position-carrying nodes. Never raises on bad YAML: problems are returned."""
    with gc_paused():
        return _parse(text)


def _parse(text: str) -> Parsed:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = _pos(mark) if mark is not None else Pos(1, 1)
        what = " ".join(x for x in (exc.context, exc.problem) if x) or str(exc)
        return Parsed(None, [ParseProblem("syntax", f"YAML syntax error: {what}", pos)])
    except yaml.YAMLError as exc:  # reader errors (control characters, bad encoding)
        mark = getattr(exc, "position", None)
        line = text.count("\n", 0, mark) + 1 if isinstance(mark, int) else 1
        return Parsed(None, [ParseProblem("syntax", f"YAML error: {exc}", Pos(line, 1))])
    except RecursionError:
        return Parsed(None, [ParseProblem("syntax", "YAML nesting is too deep to read", Pos(1, 1))])
    if node is None:
        return Parsed(None, [ParseProblem("not-mapping", "the config is empty", Pos(1, 1))])
    conv = _Converter()
    try:
        root = conv.convert(node)
    except RecursionError:
        return Parsed(None, [ParseProblem("syntax", "YAML nesting is too deep to read", Pos(1, 1))])
    problems = conv.problems
    if not isinstance(root, YMap):
        problems.append(ParseProblem(
            "not-mapping", "a CosyVoice config must be a mapping of top-level keys", root.start))
    return Parsed(root, problems)


def walk(node: YNode | None, path: tuple = ()) -> Iterator[tuple[tuple, YNode]]:
    """Every (key path, node) under ``node``, depth first; shared (aliased) nodes visited once."""
    seen: set[int] = set()
    stack = [(path, node)] if node is not None else []
    while stack:
        p, n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield p, n
        if isinstance(n, YMap):
            for k, v in reversed(n.items):
                stack.append((p + (k.raw if isinstance(k, YScalar) else "?",), v))
        elif isinstance(n, YSeq):
            for i, v in reversed(list(enumerate(n.items))):
                stack.append((p + (i,), v))
