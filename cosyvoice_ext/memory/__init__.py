"""Memory levers for training CosyVoice2 and CosyVoice3 (LLM and flow) on small cards, driven by
``cosyext.memory``, and the measured memory model lint uses.

``config`` parses the section (no torch), ``levers`` applies it to a built model (what the
``memory`` plugin's hooks call), ``checkpointing`` finds and wraps the flows' blocks, ``allocator``
is the CPU-only ``release_cpu_memory`` lever, ``model`` estimates peak memory from measured
coefficients.
"""
