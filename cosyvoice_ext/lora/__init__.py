"""LoRA for the LLM and flow of CosyVoice2 and CosyVoice3 with peft, driven by the ``cosyext:`` section.

``config`` parses and validates the section (model-free; presets per family), ``targets`` resolves
it against a real model (the preset of the built model's family),
``inject`` adds and freezes, ``base`` loads and checks the base checkpoint, ``adapter`` writes and
reads adapter checkpoints, ``merge`` folds adapters into stock weights, ``training`` is what the
plugin hooks call, ``export`` builds the stock-loadable files for ``cosyext export``.
"""
