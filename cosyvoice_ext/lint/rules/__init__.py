"""cosyext's standard lint rules, one module per family: ``general`` (CX0xx, CX5xx), ``pipeline``
(CX1xx), ``train`` (CX2xx), ``model`` (CX3xx, CX4xx), ``upstream`` (CX306-308, CX505-506: what depends
on the model family and the upstream commit) and ``data`` (CX6xx, ``--data`` only). Each exposes
``RULES``; :mod:`cosyvoice_ext.lint.plugin` registers them.
"""
