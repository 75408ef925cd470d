"""LoRA for CosyVoice2's LLM and flow with peft, driven by the ``cosyext:`` section of the training config.

``config`` parses and validates the section, ``targets`` resolves it against a real model,
``inject`` adds and freezes, ``base`` loads and checks the base checkpoint, ``adapter`` writes and
reads adapter checkpoints, ``merge`` folds adapters into stock weights, ``training`` is what the
plugin hooks call, ``export`` builds the stock-loadable files for ``cosyext export``.
"""
