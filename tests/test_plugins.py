"""Plugin loading as a user and a plugin author meet it (issue 10, items 3 and 4): built-ins always there,
third-party entry points one at a time and named with their distribution, misspelled hooks refused,
one owner per `cosyext:` key, and lint and training start-up calling the same section parsers."""

from __future__ import annotations

import os
import re
import textwrap
import types
from pathlib import Path

import pytest

from cosyvoice_ext import cli, plugins, relay
from cosyvoice_ext.errors import ConfigError, PluginError
from cosyvoice_ext.hookspecs import hookimpl
from tests.helpers import run_cosyext

ROOT = Path(__file__).resolve().parents[1]
BUILTINS = ("lora", "early_stop", "memory", "lint_rules")
BAD_LORA = "cosyext:\n  llm:\n    r: 0\n"  # CX401: r must be > 0


def fake_distributions(tmp_path: Path, **modules: tuple[str, str]) -> dict:
    """Throwaway third-party plugins 'installed' as distributions: name -> (version, module source)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    for name, (version, source) in modules.items():
        (site / f"{name}_plugin.py").write_text(textwrap.dedent(source))
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[cosyvoice_ext]\n{name} = {name}_plugin\n")
    env = {k: v for k, v in os.environ.items() if k not in (plugins.DISABLE_ENV, plugins.ALLOW_ENV)}
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


ACME = ("1.0", """
    from cosyvoice_ext.hookspecs import hookimpl

    @hookimpl
    def cosyext_register_config_sections(register):
        register("acme", lambda value: value)
""")


@pytest.fixture
def use_pm():
    """Make in-process commands see exactly the manager a test builds."""
    def install(pm):
        plugins.reset_manager(pm)
        return pm
    yield install
    plugins.reset_manager(None)


# --- 3. built-ins are registered by import, whatever the environment says ----------------------------

@pytest.mark.parametrize("env_extra", [{plugins.DISABLE_ENV: "1"}, {plugins.ALLOW_ENV: "acme"}, {}])
def test_builtins_are_loaded_whatever_the_environment_says(tmp_path, env_extra):
    env = {**fake_distributions(tmp_path, acme=ACME), **env_extra}
    res = run_cosyext("plugins", env=env)
    assert res.returncode == 0, res.stderr
    for name in BUILTINS:
        assert re.search(rf"^{name}  \(cosyvoice_ext\.[a-z_.]+; built-in\)$", res.stdout, re.M), res.stdout
    assert ("acme  (acme_plugin; acme 1.0)" in res.stdout) == (plugins.DISABLE_ENV not in env_extra)
    assert "cosyext: keys llm, flow" not in res.stdout and "cosyext: keys flow, llm" in res.stdout


@pytest.mark.parametrize("env_extra", [{plugins.DISABLE_ENV: "1"}, {plugins.ALLOW_ENV: "acme"}])
def test_lint_keeps_its_rules_when_third_party_plugins_are_off(tmp_path, env_extra):
    """Today either variable left no lint rules and lint said "All checks passed." for a broken config."""
    cfg = tmp_path / "ext.yaml"
    cfg.write_text(BAD_LORA)
    res = run_cosyext("lint", str(cfg), env={**fake_distributions(tmp_path, acme=ACME), **env_extra})
    assert res.returncode == 1, res.stdout + res.stderr
    assert "CX401" in res.stdout and "All checks passed" not in res.stdout


def test_lint_refuses_to_run_without_rules(tmp_path, use_pm, capsys):
    cfg = tmp_path / "ext.yaml"
    cfg.write_text(BAD_LORA)
    use_pm(plugins.new_manager(autoload=False, builtins=False))
    assert cli.main(["lint", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "no lint rules are registered" in err and "lint_rules" in err and "next:" in err
    assert cli.main(["rule", "--list"]) == 2


def test_registering_a_builtin_again_is_a_no_op():
    """Every manager has the built-ins now; a tool that registers one explicitly must keep working."""
    from cosyvoice_ext.lint import plugin as lint_rules

    pm = plugins.new_manager(autoload=False)
    assert pm.register(lint_rules, name="lint_rules") == "lint_rules"
    assert [n for n, _ in pm.list_name_plugin()].count("lint_rules") == 1


# --- 3. entry points one at a time, named with their distribution ------------------------------------

def test_a_failing_entry_point_is_named_with_its_distribution(tmp_path):
    env = fake_distributions(tmp_path, acme=ACME, broken=("2.3", "raise RuntimeError('broken is broken')\n"))
    res = run_cosyext("plugins", env=env)
    assert res.returncode == 2
    assert "plugin 'broken' from broken 2.3 (broken_plugin) failed to load" in res.stderr
    assert "broken is broken" in res.stderr and "acme" not in res.stderr.split("next:")[0]
    assert "COSYEXT_DISABLE_PLUGIN_AUTOLOAD" in res.stderr and "Traceback" not in res.stderr
    # the way out the message gives works, and the built-ins stay
    ok = run_cosyext("plugins", env={**env, plugins.DISABLE_ENV: "1"})
    assert ok.returncode == 0 and "lora  (" in ok.stdout


def test_an_entry_point_with_a_builtin_name_is_refused(tmp_path):
    env = fake_distributions(tmp_path, lora=("9.9", ACME[1]))
    res = run_cosyext("plugins", env=env)
    assert res.returncode == 2
    assert "plugin 'lora' from lora 9.9 (lora_plugin) has the name of the built-in plugin" in res.stderr


def test_cosyext_plugins_naming_a_plugin_nobody_installed_is_an_error(tmp_path):
    res = run_cosyext("plugins", env={**fake_distributions(tmp_path, acme=ACME), plugins.ALLOW_ENV: "acme,acmee"})
    assert res.returncode == 2 and "COSYEXT_PLUGINS names acmee" in res.stderr and "found: acme" in res.stderr


# --- 3. check_pending: a misspelled hook implementation is an error naming the plugin -----------------

def test_a_misspelled_hook_in_an_installed_plugin_is_refused(tmp_path):
    typo = ("1.0", """
        from cosyvoice_ext.hookspecs import hookimpl

        @hookimpl
        def cosyext_configur(configs, args):
            pass
    """)
    res = run_cosyext("plugins", env=fake_distributions(tmp_path, acme=typo))
    assert res.returncode == 2
    assert ("plugin 'acme' (acme 1.0) implements 'cosyext_configur', which is not a cosyext hook; did you mean "
            "'cosyext_configure'?") in res.stderr
    assert "Traceback" not in res.stderr


def test_an_unmarked_misspelled_hook_is_caught_too():
    """Like pytest with `pytest_*`: a `cosyext_*` function is a hook implementation even without @hookimpl."""
    pm = plugins.new_manager(autoload=False)
    pm.register(types.SimpleNamespace(cosyext_after_sav=lambda model_name, info_dict: None), name="mine")
    with pytest.raises(PluginError, match=r"plugin 'mine' \(registered at run time\) implements 'cosyext_after_sav'"
                                          r".*did you mean 'cosyext_after_save'"):
        plugins.hooks(pm)


def test_a_hook_with_a_wrong_argument_is_refused_with_the_distribution(tmp_path):
    wrong = ("1.0", """
        from cosyvoice_ext.hookspecs import hookimpl

        @hookimpl
        def cosyext_configure(configs, argz):
            pass
    """)
    res = run_cosyext("plugins", env=fake_distributions(tmp_path, acme=wrong))
    assert res.returncode == 2 and "plugin 'acme' from acme 1.0 does not fit the cosyext hooks" in res.stderr
    assert "argz" in res.stderr


# --- 3. one typed caller --------------------------------------------------------------------------------

def test_core_calls_hooks_only_through_the_typed_manager():
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "cosyvoice_ext").rglob("*.py"))
                 if p.name != "plugins.py" or p.parent.name != "cosyvoice_ext"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\.hook\.cosyext_", line)]
    assert offenders == [], "call hooks through cosyvoice_ext.plugins.Hooks"


def test_the_typed_manager_has_one_method_per_hook():
    methods = {n for n, f in vars(plugins.Hooks).items() if callable(f) and not n.startswith("_")}
    assert methods == {n.removeprefix("cosyext_") for n in plugins.hook_names()}


# --- 4. one owner per cosyext: key, the same parser for lint and training ------------------------------

def _owner(key: str, parse=lambda value: value, name: str = "acme") -> object:
    class Owner:
        @hookimpl
        def cosyext_register_config_sections(self, register):
            register(key, parse)

    Owner.__name__ = name
    return Owner()


def test_two_owners_of_one_key_are_an_error_naming_both():
    pm = plugins.new_manager(autoload=False)
    pm.register(_owner("acme"), name="acme")
    pm.register(_owner("acme"), name="acme_fork")
    with pytest.raises(PluginError, match="cosyext.acme is registered by two plugins: 'acme' and 'acme_fork'"):
        plugins.hooks(pm).register_config_sections()
    pm.register(_owner("early_stop"), name="stopper")
    pm.unregister(name="acme_fork")
    with pytest.raises(PluginError, match="'early_stop' and 'stopper'"):
        plugins.check_config({"cosyext": {}}, pm)


def test_a_plugin_registering_a_bad_key_or_parser_is_named():
    pm = plugins.new_manager(autoload=False)
    pm.register(_owner("not a key"), name="acme")
    with pytest.raises(PluginError, match="plugin 'acme' registered the cosyext: key 'not a key'"):
        plugins.hooks(pm).register_config_sections()


def _acme_parser(value):
    if not isinstance(value, dict) or value.get("level", 0) > 3:
        raise ConfigError(f"must be at most 3, got {value.get('level')!r}", key="cosyext.acme.level")
    return value


# (config text, dotted key, line lint must flag, lint code): the list, each refused by training
CASES = [
    ("cosyext:\n  early_stopp:\n    patience: 2\n", "cosyext.early_stopp", 2, "CX402"),
    ("cosyext:\n  memory:\n    gradient_checkpointng: true\n", "cosyext.memory.gradient_checkpointng", 3, "CX402"),
    ("cosyext:\n  early_stop:\n    patiense: 3\n", "cosyext.early_stop.patiense", 3, "CX402"),
    ("cosyext:\n  llm: {r: 8}\n  memory:\n    autocast: fp32\n", "cosyext.memory.autocast", 4, "CX401"),
    ("cosyext:\n  llm: {r: 8}\n  foo: 1\n", "cosyext.foo", 3, "CX402"),
    ("cosyext:\n  lint:\n    ignore: 7\n", "cosyext.lint.ignore", 3, "CX401"),
    ("cosyext:\n  acme:\n    level: 9\n", "cosyext.acme.level", 3, "CX401"),  # a third-party parser
]


@pytest.mark.parametrize("text, key, line, code", CASES, ids=[c[1] for c in CASES])
def test_training_and_lint_refuse_the_same_keys(text, key, line, code, use_pm):
    import yaml

    from cosyvoice_ext.lint.engine import lint_text
    from cosyvoice_ext.lint.registry import collect

    pm = use_pm(plugins.new_manager(autoload=False))
    pm.register(_owner("acme", _acme_parser), name="acme")
    args = types.SimpleNamespace(model="llm", train_engine="torch_ddp", checkpoint=None)
    with pytest.raises(ConfigError) as trained:
        relay.configure(args, yaml.safe_load(text))
    assert trained.value.key == key
    res = lint_text(text, collect(pm))
    errors = [(f.line, f.code) for f in res.findings if f.severity == "error"]
    assert errors == [(line, code)], [f"{f.line}:{f.col} {f.code} {f.message}" for f in res.findings]
    assert key in next(f.message for f in res.findings if f.code == code)


def test_lint_reports_every_unknown_key_and_no_follow_on_error(use_pm):
    from cosyvoice_ext.lint.engine import lint_text
    from cosyvoice_ext.lint.registry import collect

    use_pm(plugins.new_manager(autoload=False))
    text = "cosyext:\n  early_stop:\n    patiense: 3\n    min_detla: 0.1\n  llm:\n    rank: 4\n    dropout: 2\n"
    res = lint_text(text, collect())
    got = [(f.line, f.code) for f in res.findings]
    # patience is then missing: that is the typo's consequence, not a second finding
    assert got == [(3, "CX402"), (4, "CX402"), (6, "CX402"), (7, "CX401")], [f.message for f in res.findings]


def test_a_clean_section_trains_and_lints(use_pm):
    import yaml

    from cosyvoice_ext.lint.engine import lint_text
    from cosyvoice_ext.lint.registry import collect

    pm = use_pm(plugins.new_manager(autoload=False))
    text = ("cosyext:\n  early_stop: {patience: 2}\n  memory: {autocast: bf16, gradient_checkpointing: true}\n"
            "  lint: {ignore: [CX105]}\n  llm:\n")
    parsed = plugins.check_config(yaml.safe_load(text), pm)
    assert parsed["early_stop"].patience == 2 and parsed["memory"].autocast == "bf16" and parsed["llm"] is None
    assert [f for f in lint_text(text, collect(pm)).findings if f.code.startswith("CX4")] == []
    assert plugins.check_config({"cosyext": None}, pm) == {}


def test_a_crashing_parser_is_named():
    pm = plugins.new_manager(autoload=False)
    pm.register(_owner("acme", lambda value: value["level"]), name="acme")
    with pytest.raises(PluginError, match=r"plugin 'acme' crashed parsing cosyext.acme: TypeError"):
        plugins.check_config({"cosyext": {"acme": 3}}, pm)


# --- 8. dead code: a command module that does not exist is a bug, not a silently missing command ------

def test_a_missing_command_module_is_not_skipped(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "no_such_cmd"))
    with pytest.raises(ModuleNotFoundError, match="no_such_cmd"):
        cli.build_parser()


# --- every training hook reaches a plugin through the relay (what patch 0006's train_utils calls) -----

def test_every_training_hook_reaches_a_third_party_plugin(use_pm):
    import torch

    calls: list[str] = []

    class Recorder:
        @hookimpl
        def cosyext_register_config_sections(self, register):
            register("recorder", lambda value: calls.append("parse") or value)

        @hookimpl
        def cosyext_configure(self, configs, args):
            calls.append(f"configure {configs['cosyext']['recorder']}")

        @hookimpl
        def cosyext_prepare_model(self, model, name, configs, args):
            model.weight.requires_grad_(False)
            calls.append(f"prepare {name}")

        @hookimpl(tryfirst=True)
        def cosyext_optimizer_params(self, model, configs, args):
            calls.append("params")
            return [p for p in model.parameters() if p.requires_grad]

        @hookimpl(tryfirst=True)
        def cosyext_checkpoint_state(self, model, info_dict):
            calls.append("state")
            return {"bias": model.bias.detach().clone(), "epoch": info_dict["epoch"]}

        @hookimpl
        def cosyext_after_save(self, model_name, info_dict):
            calls.append(f"saved {model_name}")

    pm = use_pm(plugins.new_manager(autoload=False))
    pm.register(Recorder(), name="recorder")
    args = types.SimpleNamespace(model="llm", train_engine="torch_ddp", checkpoint=None)
    relay.configure(args, {"cosyext": {"recorder": 7}})
    model = relay.prepare_model(args, torch.nn.Linear(2, 2))
    params = list(relay.optimizer_params(model))
    assert params == [model.bias]
    state = relay.checkpoint_state(model, {"epoch": 3, "step": 9})
    assert set(state) == {"bias", "epoch"}
    relay.after_save("epoch_3_whole", {"epoch": 3})
    assert calls == ["parse", "configure 7", "prepare llm", "params", "state", "saved epoch_3_whole"]
