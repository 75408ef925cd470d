"""`cosyext eval`: base vs fine-tuned on held-out utterances, with metrics as plugins (docs/eval.md).

Plugin authors need :class:`MetricUnavailable`, :class:`Score`, :class:`Sample`, :class:`Context` and
:class:`Clip`; importing this package loads no model.
"""

from .audio import Clip
from .metric import Context, Metric, MetricUnavailable, Sample, Score

__all__ = ["Clip", "Context", "Metric", "MetricUnavailable", "Sample", "Score"]
