"""Static lint scales linearly with the config: `!ref` resolution looked keys up by scanning every
key of a mapping, so a 1 MB config of stages that refer to each other took a minute
(benchmarks/bench_lint_size.py measures the scaling side by side with the old code)."""

from __future__ import annotations

import time
from pathlib import Path

from cosyvoice_ext.lint import plugin as lint_rules
from cosyvoice_ext.lint.engine import Options, lint_text
from cosyvoice_ext.lint.registry import collect
from cosyvoice_ext.lint.yamlpos import YMap, YScalar, parse
from cosyvoice_ext.plugins import new_manager
from cosyvoice_ext.tiny.config import render_tiny_config


def filler_config(target_bytes: int) -> str:
    """The tiny config plus `stage_i` blocks, each with three `!ref`s (to the previous stage and the
    fixed params), up to `target_bytes` (the benchmark's shape)."""
    base = render_tiny_config(Path("/nonexistent/qwen"))
    parts, size, i = [base], len(base), 0
    while size < target_bytes:
        prev = f"stage_{i - 1}.max_length" if i else "sample_rate"
        block = (f"stage_{i}: !name:cosyvoice.dataset.processor.filter\n    max_length: !ref <{prev}>\n"
                 f"    min_length: !ref <token_frame_rate> * <token_mel_ratio>\n    note: 'filler {i:08d}'\n")
        parts.append(block)
        size += len(block)
        i += 1
    return "".join(parts)


def test_a_1_2_mb_config_lints_in_under_2_seconds():
    """~12,000 top-level keys and 36,000 `!ref`s. The quadratic lookup needed ~10 s of CPU for this
    (the issue's 1 MB config: 66 s); now it is well under 2 s (CPU time of this process, so other
    processes on the machine do not count)."""
    pm = new_manager(autoload=False)
    pm.register(lint_rules, name="lint_rules")
    registry = collect(pm)
    text = filler_config(1_200_000)
    assert len(text) >= 1_200_000
    start = time.process_time()
    res = lint_text(text, registry, Options())
    took = time.process_time() - start
    assert took < 2.0, f"lint of a {len(text) / 1e6:.1f} MB config took {took:.1f} s of CPU"
    assert not [f for f in res.findings if f.code in ("CX003", "CX000")]  # every ref resolved, no rule crashed


def test_mapping_lookups_keep_yaml_semantics():
    """The index behind YMap.get keeps what a linear scan gave: get() the LAST duplicate's value (what
    HyperPyYAML's loader would have used, CX002 reports the duplicate), key_node() the FIRST key."""
    root = parse("a: 1\nb: 2\na: 3\n").root
    assert isinstance(root, YMap)
    assert root.get("a").raw == "3" and root.key_node("a").start.line == 1
    assert root.get("missing") is None and root.key_node("missing") is None
    root.items.append((YScalar(None, root.start, root.end, raw="c"), YScalar(None, root.start, root.end, raw="4")))
    assert root.get("c").raw == "4"  # items appended after a lookup are seen
