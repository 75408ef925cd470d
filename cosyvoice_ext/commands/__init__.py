"""Subcommands of `cosyext`, one module each (see cosyvoice_ext.cli)."""
