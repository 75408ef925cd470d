"""`cosyext synth`: text to speech with upstream's own inference classes (`CosyVoice2`, `CosyVoice3` in
cosyvoice/cli/cosyvoice.py) imported from a verified upstream tree, with fixes applied from outside.

- :mod:`.loader`    verify ONE tree against vendor.lock (inference files included) and import it, quietly
- :mod:`.source`    the model: a serving dir, or a pretrained dir plus adapters (checked, never downloaded)
- :mod:`.adapters`  a training run's LoRA applied in memory (peft inject + the adapter's tensors), no merge
- :mod:`.voices`    zero-shot prompt or registered speaker, checked before upstream sees them
- :mod:`.engine`    own RNG for the sampler, per-request stream state, LLM-thread errors re-raised
- :mod:`.api`       :class:`Synthesizer`, the API `cosyext synth` and `cosyext eval` use
"""

from .api import Synthesizer
from .engine import SynthesisError
from .source import ModelSource
from .voices import Speaker, ZeroShot

__all__ = ["ModelSource", "Speaker", "SynthesisError", "Synthesizer", "ZeroShot"]
