"""What a lint rule is, for rule authors (built-in and third-party alike).

A rule is a :class:`Rule` whose ``check(ctx)`` yields :class:`Issue` objects. The engine adds the
code, severity, file and position, applies selection and `# cosyext: disable=CODE`, and formats.
Register rules from a plugin::

    from cosyvoice_ext.hookspecs import hookimpl
    from cosyvoice_ext.lint import Issue, Rule

    def _check(ctx):
        n = ctx.doc.node("train_conf", "max_epoch")
        if ctx.doc.number("train_conf", "max_epoch") == 1:
            yield Issue("only one epoch", at=n)

    @hookimpl
    def cosyext_register_lint_rules(register):
        register(Rule("ACME001", "one-epoch", "warning", "a single epoch", check=_check))
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .yamlpos import Pos, YNode

if TYPE_CHECKING:
    from .data_analysis import DataAnalysis
    from .document import Document
    from .target import ConfigFamily, Upstream

SEVERITIES = ("error", "warning", "info")


@dataclass
class Issue:
    """One problem a rule found. ``at`` is the node (key or value) to point at."""

    message: str
    at: YNode | Pos | None = None
    fix: str | None = None
    severity: str | None = None  # overrides the rule's default (e.g. a warning that is fatal here)


@dataclass
class LintContext:
    """Everything a rule may look at. ``data`` is set only in data-aware mode (``--data``).

    ``family`` is the model family the config's classes name (CosyVoice2/3); ``upstream`` what lint
    knows of the train.py that will run it (``--upstream DIR`` or inferred from the config).
    ``options['onnx_path']`` is what the user will pass to train.py (None: not said)."""

    doc: "Document"
    model: str | None = None  # "llm" | "flow" | "hifigan" | None (unknown: check both)
    gpu_memory: float | None = None  # GiB per GPU, from --gpu-memory
    train_engine: str | None = None  # "torch_ddp" | "deepspeed" | None (unknown)
    data: "DataAnalysis | None" = None
    options: dict[str, Any] = field(default_factory=dict)
    family: "ConfigFamily | None" = None
    upstream: "Upstream | None" = None

    def models(self) -> tuple[str, ...]:
        """Models the run trains: the one given, or every model the config defines."""
        if self.model:
            return (self.model,)
        root = self.doc.root
        return tuple(m for m in ("llm", "flow") if root is not None and root.get(m) is not None)


@dataclass(frozen=True)
class Rule:
    """A lint rule. Its documentation is the check function's docstring (what goes wrong upstream and
    why; ``why`` only for a check without one); ``doc``, ``example`` and ``fix`` are what
    `cosyext rule CODE` and docs/lint.md print."""

    code: str
    name: str
    severity: str
    summary: str
    check: Callable[[LintContext], Iterable[Issue]]
    why: str = ""
    example: str = ""
    fix: str = ""
    needs_data: bool = False  # runs only with --data
    uses_data: bool = False  # runs without --data too, but reads ctx.data when it is there

    @property
    def doc(self) -> str:
        """The rule's documentation: the check's docstring, else ``why``."""
        own = self.check.__doc__ if inspect.isfunction(self.check) or inspect.ismethod(self.check) else None
        return inspect.cleandoc(own or self.why or "").strip()
