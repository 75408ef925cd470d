"""Memory levers for training CosyVoice2 on small cards, driven by ``cosyext.memory``, and the measured
memory model lint uses.

``config`` parses the section (no torch), ``levers`` applies it to a built model (what the
``memory`` plugin's hooks call), ``model`` estimates peak memory from measured coefficients.
"""
