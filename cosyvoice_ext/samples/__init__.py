"""Samples during training (`cosyext: samples:`, docs/samples.md): after each checkpoint rank 0 speaks a
few fixed CV sentences with the checkpoint's weights, writes and logs them, and records eval metrics
that early stopping and `export --run` can choose by.

- :mod:`.config`   the section's settings (parsed at training start-up and by `cosyext lint`)
- :mod:`.runner`   rank 0's sampler: upstream's inference class built once, the checkpoint applied per save
- :mod:`.results`  MODEL_DIR/samples/metrics.jsonl, and each checkpoint's metrics for early_stop

The hooks are in :mod:`cosyvoice_ext.builtin.samples`. Importing this package loads no model.
"""

from .config import KEY, PREFIX, Settings, parse_settings, parse_value
from .results import metrics_path, read_rows

__all__ = ["KEY", "PREFIX", "Settings", "metrics_path", "parse_settings", "parse_value", "read_rows"]
