"""Built-in plugins: LoRA, early stopping and the memory levers (the lint rules are
:mod:`cosyvoice_ext.lint.plugin`). :data:`cosyvoice_ext.plugins.DEFAULT_PLUGINS` registers them in
every plugin manager by import, so no environment variable or broken install can leave them out.
"""
