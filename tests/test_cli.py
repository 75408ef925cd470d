"""The `cosyext` command line as a user meets it: help with examples, plugins, exit codes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from cosyvoice_ext.cli import build_parser
from tests.helpers import run_cosyext


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(action.choices)


def test_every_subcommand_has_help_with_an_example():
    names = subcommands()
    assert {"vendor", "apply-patches", "status", "revert", "lock", "plugins", "demo"} <= set(names)
    for name in names:
        res = run_cosyext(name, "--help")
        assert res.returncode == 0, (name, res.stderr)
        assert "example" in res.stdout.lower(), f"'cosyext {name} --help' shows no example"


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("cosyext")
    assert exe.is_file() or shutil.which("cosyext")
    res = run_cosyext("--version")
    assert res.returncode == 0 and res.stdout.startswith("cosyext ")


def test_no_command_prints_help_and_exits_2():
    res = run_cosyext()
    assert res.returncode == 2 and "COMMAND" in res.stdout


def test_plugins_lists_builtins_and_third_party(tmp_path):
    """More in tests/test_plugins.py (environment variables, broken and misspelled plugins)."""
    from tests.test_plugins import ACME, fake_distributions

    res = run_cosyext("plugins", env=fake_distributions(tmp_path, acme=ACME))
    assert res.returncode == 0, res.stderr
    for name in ("lora", "early_stop", "memory", "lint_rules", "acme"):
        assert f"\n{name}  (" in f"\n{res.stdout}"
    assert "acme 1.0" in res.stdout and "cosyext: keys acme" in res.stdout
    assert "cosyext_register_config_sections" in res.stdout


@pytest.mark.parametrize("key, expect", [("acme", None), ("acm", "did you mean 'acme'"), ("early_stp", "early_stop")])
def test_unknown_cosyext_section_keys_are_reported(key, expect):
    from cosyvoice_ext import plugins
    from cosyvoice_ext.errors import ConfigError

    pm = plugins.new_manager(autoload=False)
    pm.register(type("Acme", (), {"cosyext_register_config_sections": plugins.hookspecs.hookimpl(
        lambda self, register: register("acme", lambda value: value))})(), name="acme")
    if expect is None:
        assert plugins.check_config({"cosyext": {key: {}}}, pm) == {"acme": {}}
    else:
        with pytest.raises(ConfigError, match=expect):
            plugins.check_config({"cosyext": {key: {}}}, pm)
