"""The `cosyext` command line as a user meets it: help with examples, plugins, exit codes."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
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


def _fake_distribution(tmp_path: Path, module_src: str, name: str = "acme_voice") -> dict:
    """A throwaway third-party plugin 'installed' as a distribution with an entry point."""
    site = tmp_path / "site"
    (site / f"{name}_plugin.py").parent.mkdir(parents=True, exist_ok=True)
    (site / f"{name}_plugin.py").write_text(textwrap.dedent(module_src))
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[cosyvoice_ext]\n{name} = {name}_plugin\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


PLUGIN = """
from cosyvoice_ext.hookspecs import hookimpl

@hookimpl
def cosyext_section_keys():
    return ["acme"]
"""


def test_plugins_lists_builtins_and_third_party(tmp_path):
    env = _fake_distribution(tmp_path, PLUGIN)
    res = run_cosyext("plugins", env=env)
    assert res.returncode == 0, res.stderr
    for name in ("lora", "early_stop", "lint_rules", "acme_voice"):
        assert name in res.stdout
    assert "acme_voice 1.0" in res.stdout and "cosyext_section_keys" in res.stdout
    only = run_cosyext("plugins", env={**env, "COSYEXT_PLUGINS": "acme_voice"})
    assert "acme_voice" in only.stdout and "lora" not in only.stdout
    none = run_cosyext("plugins", env={**env, "COSYEXT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert none.stdout.strip() == "no plugins loaded"


def test_broken_plugin_is_named_with_the_way_out(tmp_path):
    env = _fake_distribution(tmp_path, "raise RuntimeError('acme is broken')\n")
    res = run_cosyext("plugins", env=env)
    assert res.returncode == 2
    assert "acme is broken" in res.stderr and "COSYEXT_DISABLE_PLUGIN_AUTOLOAD" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("key, expect", [("acme", None), ("acm", "did you mean 'acme'"), ("early_stp", "early_stop")])
def test_unknown_cosyext_section_keys_are_reported(key, expect):
    import pluggy

    from cosyvoice_ext import plugins, relay
    from cosyvoice_ext.errors import ConfigError

    pm = plugins.new_manager(autoload=False)
    from cosyvoice_ext.hooks import early_stop

    pm.register(early_stop)
    pm.register(type("Acme", (), {"cosyext_section_keys": plugins.hookspecs.hookimpl(lambda self: ["acme"])})())
    assert isinstance(pm, pluggy.PluginManager)
    if expect is None:
        relay.check_section_keys({"cosyext": {key: {}}}, pm)
    else:
        with pytest.raises(ConfigError, match=expect):
            relay.check_section_keys({"cosyext": {key: {}}}, pm)
