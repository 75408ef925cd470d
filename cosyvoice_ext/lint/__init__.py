"""`cosyext lint`: read a CosyVoice HyperPyYAML config *without executing it* and report problems
that would otherwise surface hours into a GPU run.

Layers: ``yamlpos`` (compose-only loader with positions) -> ``document`` (lookup, `!ref`) ->
``registry`` (rules from plugins via ``cosyext_register_lint_rules``) -> ``engine`` (selection,
suppression, findings) -> ``formats``. Data-aware mode (``--data``) adds ``lengths`` (parquet/WAV
headers), ``simulate`` (upstream's shuffle/sort/batch, reproduced) and ``data_analysis``.
Rule authors need only :class:`Rule`, :class:`Issue` and :class:`LintContext` from here.
"""

from __future__ import annotations

from .rule import Issue, LintContext, Rule

__all__ = ["Issue", "LintContext", "Rule"]
