"""`cosyext lint` engine and CLI: safe loading, positions, suppression, selection, formats, exit
codes, plugin-registered rules, and the seed's token_max_length scenario."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from cosyvoice_ext import cli, plugins
from cosyvoice_ext.errors import PluginError
from cosyvoice_ext.hookspecs import hookimpl
from cosyvoice_ext.lint import plugin as lint_rules
from cosyvoice_ext.lint import Issue, Rule
from cosyvoice_ext.lint.engine import Options, is_selected, lint_text
from cosyvoice_ext.lint.registry import collect

CASES = Path(__file__).parent / "lint_cases"
BASE = (CASES / "base.yaml").read_text()


def _pm(*extra):
    pm = plugins.new_manager(autoload=False)
    pm.register(lint_rules, name="lint_rules")
    for i, p in enumerate(extra):
        pm.register(p, name=getattr(p, "__name__", f"extra{i}"))
    return pm


@pytest.fixture
def registry():
    return collect(_pm())


@pytest.fixture
def use_pm():
    """Make the CLI see exactly the plugins a test registers."""
    def install(*extra):
        plugins.reset_manager(_pm(*extra))
    yield install
    plugins.reset_manager(None)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


# --- loading never executes the config -------------------------------------------------------

def test_apply_tags_are_never_executed(tmp_path, capsys, use_pm):
    use_pm()
    victim = tmp_path / "created-by-config"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(
        f"__a: !apply:pathlib.Path.touch [!new:pathlib.Path ['{victim}']]\n"
        f"__b: !apply:os.system ['touch {victim}']\n"
        f"__c: !include:{tmp_path / 'other.yaml'}\n"
        "x: !name:builtins.print\n"
        "y: !ref <x>\n"
        "z: !some_unknown_tag {a: 1}\n"
    )
    rc, out, _ = run_cli(capsys, "lint", str(cfg), "--format", "json")
    assert not victim.exists()
    found = [(f["line"], f["message"].split(" ")[0]) for f in json.loads(out)["findings"] if f["code"] == "CX004"]
    # every code-running tag is reported (the nested !new: too, and the !include), none is run
    assert sorted(found) == [(1, "!apply:pathlib.Path.touch"), (1, "!new:pathlib.Path"), (2, "!apply:os.system"),
                             (3, f"!include:{tmp_path / 'other.yaml'}"), (4, "!name:builtins.print")]
    assert rc == 0  # warnings only


def test_the_same_config_does_run_code_under_hyperpyyaml(tmp_path):
    """Guards the test above: the config really executes when loaded the upstream way."""
    import hyperpyyaml
    victim = tmp_path / "created-by-config"
    hyperpyyaml.load_hyperpyyaml(f"__a: !apply:pathlib.Path.touch [!new:pathlib.Path ['{victim}']]\n")
    assert victim.exists()


# --- positions and the seed scenario --------------------------------------------------------

def _seed_config(max_len: int, min_len: int = 1) -> str:
    out = BASE.replace("token_max_length: 400", f"token_max_length: {max_len}")
    return out.replace("token_min_length: 1", f"token_min_length: {min_len}")


def test_seed_scenario_token_max_length_zero_is_an_error_at_its_line(registry):
    text = _seed_config(0)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "token_max_length: 0" in l)
    res = lint_text(text, registry, Options(model="llm"), path="ext.yaml")
    errors = [f for f in res.findings if f.severity == "error"]
    assert [(f.code, f.line) for f in errors] == [("CX101", line)]
    f = errors[0]
    assert f.col == text.splitlines()[line - 1].index("0") + 1  # the offending value
    assert "text token" in f.message.lower() and f.fix


def test_seed_scenario_fixed_values_are_clean(registry):
    res = lint_text(_seed_config(400, 1), registry, Options(model="llm"))
    assert [f for f in res.findings if f.severity == "error"] == []


def test_positions_of_parse_problems(registry):
    res = lint_text("a: 1\nb: [1, 2\nc: 3\n", registry)
    assert [(f.code, f.line) for f in res.findings] == [("CX001", 3)]
    res = lint_text("a: 1\nb:\n  x: 1\n  x: 2\n", registry)
    assert [(f.code, f.line, f.col) for f in res.findings] == [("CX002", 4, 3)]
    res = lint_text("a: !ref <nope>\n", registry)
    assert [(f.code, f.line, f.col) for f in res.findings] == [("CX003", 1, 4)]


def test_aliases_and_cycles_do_not_hang(registry):
    """A billion-laughs document (9^10 leaves once expanded) and self-referencing anchors, placed
    where rules read plain values, are linted in well under a second."""
    import time

    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefghi", "bcdefghij"))
    bomb += "cosyext:\n  llm: *j\n  lint:\n    select: *j\ntrain_conf:\n  accum_grad: *j\n  log_interval: *j\n"
    cycle = "a: &x\n  b: *x\ncosyext: *x\ntrain_conf:\n  accum_grad: *x\n"
    for text in (bomb, cycle):
        t = time.perf_counter()
        res = lint_text(text, registry, Options(model="llm"))
        assert time.perf_counter() - t < 5
        assert all(f.code != "CX000" for f in res.findings)
        assert "CX201" in {f.code for f in res.findings}


# --- suppression and selection ---------------------------------------------------------------

def test_inline_suppression(registry):
    text = _seed_config(0)
    suppressed = text.replace("token_max_length: 0", "token_max_length: 0  # cosyext: disable=CX101")
    assert [f for f in lint_text(suppressed, registry).findings if f.code == "CX101"] == []
    above = text.replace("    token_max_length: 0", "    # cosyext: disable=CX1\n    token_max_length: 0")
    assert [f for f in lint_text(above, registry).findings if f.code == "CX101"] == []
    other = text.replace("token_max_length: 0", "token_max_length: 0  # cosyext: disable=CX102")
    assert [f.code for f in lint_text(other, registry).findings if f.code == "CX101"] == ["CX101"]


def test_prefix_selection_most_specific_wins():
    assert is_selected("CX101", None, [])
    assert is_selected("CX101", ["CX1"], [])
    assert not is_selected("CX201", ["CX1"], [])
    assert not is_selected("CX101", None, ["CX1"])
    assert is_selected("CX101", ["CX101"], ["CX1"])
    assert not is_selected("CX104", ["CX1"], ["CX104"])
    assert is_selected("CX104", [""], [])


def test_selection_from_cli_and_config_section(registry):
    text = _seed_config(0).replace("    accum_grad: 1", "    accum_grad: 0")
    codes = lambda res: sorted({f.code for f in res.findings})  # noqa: E731
    assert codes(lint_text(text, registry)) == ["CX101", "CX201"]
    assert codes(lint_text(text, registry, Options(select=["CX2"]))) == ["CX201"]
    assert codes(lint_text(text, registry, Options(ignore=["CX2"]))) == ["CX101"]
    in_config = text + "    lint:\n        ignore: [CX101]\n"
    assert codes(lint_text(in_config, registry)) == ["CX201"]
    in_config = text + "    lint:\n        select: [CX1]\n"
    assert codes(lint_text(in_config, registry)) == ["CX101"]
    assert codes(lint_text(in_config, registry, Options(select=["ALL"]))) == ["CX101", "CX201"]


# --- formats and exit codes ------------------------------------------------------------------

@pytest.fixture
def seed_file(tmp_path):
    p = tmp_path / "ext.yaml"
    p.write_text(_seed_config(0))
    return p


def test_exit_codes(tmp_path, capsys, use_pm, seed_file):
    use_pm()
    clean = tmp_path / "clean.yaml"
    clean.write_text(BASE)
    assert run_cli(capsys, "lint", str(clean))[0] == 0
    rc, out, _ = run_cli(capsys, "lint", str(seed_file))
    assert rc == 1 and f"{seed_file}:" in out and "CX101" in out
    assert run_cli(capsys, "lint", str(seed_file), "--exit-zero")[0] == 0
    assert run_cli(capsys, "lint", str(tmp_path / "missing.yaml"))[0] == 2
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage\x80")
    rc, _, err = run_cli(capsys, "lint", str(binary))
    assert rc == 2 and "UTF-8" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["lint", str(clean), "--format", "xml"])
    assert exc.value.code == 2
    assert run_cli(capsys, "lint", str(clean), "--data", str(tmp_path / "nope.list"))[0] == 2
    warn = tmp_path / "warn.yaml"
    warn.write_text(BASE.replace("sort_size: 500", "sort_size: 600"))
    assert run_cli(capsys, "lint", str(warn))[0] == 0
    assert run_cli(capsys, "lint", str(warn), "--strict")[0] == 1


def test_formats(capsys, use_pm, seed_file):
    use_pm()
    rc, out, _ = run_cli(capsys, "lint", str(seed_file), "--format", "json", "--statistics")
    doc = json.loads(out)
    f = doc["findings"][0]
    assert {k: f[k] for k in ("code", "severity", "path")} == {"code": "CX101", "severity": "error", "path": str(seed_file)}
    assert f["line"] > 1 and f["col"] > 1 and f["fix"]
    assert doc["statistics"] == [{"code": "CX101", "name": "token-filter-bounds", "count": 1, "severity": "error"}]

    rc, out, _ = run_cli(capsys, "lint", str(seed_file), "--format", "github")
    assert out.startswith(f"::error file={seed_file},line={f['line']},col={f['col']},title=CX101 token-filter-bounds::")

    rc, out, _ = run_cli(capsys, "lint", str(seed_file), "--format", "sarif")
    sarif = json.loads(out)
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    res = run["results"][0]
    assert res["ruleId"] == "CX101" and ids[res["ruleIndex"]] == "CX101" and res["level"] == "error"
    assert res["locations"][0]["physicalLocation"]["region"] == {"startLine": f["line"], "startColumn": f["col"]}

    rc, out, _ = run_cli(capsys, "lint", str(seed_file), "--statistics")
    assert "    1  CX101  [error] token-filter-bounds" in out and "Found 1 finding (1 error)." in out


def test_rule_command(capsys, use_pm):
    use_pm()
    rc, out, _ = run_cli(capsys, "rule", "CX101")
    assert rc == 0
    for part in ("CX101 token-filter-bounds", "What:", "Why:", "Example (flagged):", "token_max_length: 0", "Fix:"):
        assert part in out
    rc, out, _ = run_cli(capsys, "rule", "--list")
    assert rc == 0 and "CX605" in out
    rc, _, err = run_cli(capsys, "rule", "CX10")
    assert rc == 2 and "no lint rule" in err


# --- third-party rules through the hook ------------------------------------------------------

def _plugin(name: str, *rules: Rule):
    mod = types.ModuleType(name)

    @hookimpl
    def cosyext_register_lint_rules(register):
        for r in rules:
            register(r)

    mod.cosyext_register_lint_rules = cosyext_register_lint_rules
    return mod


def _one_epoch(ctx):
    if ctx.doc.number("train_conf", "max_epoch") == 1:
        yield Issue("a single epoch", at=ctx.doc.node("train_conf", "max_epoch"), fix="train longer")


def test_third_party_rule_registers_and_reports(tmp_path, capsys, use_pm):
    use_pm(_plugin("acme_rules", Rule("ACME001", "one-epoch", "warning", "one epoch", _one_epoch)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(BASE.replace("max_epoch: 20", "max_epoch: 1"))
    rc, out, _ = run_cli(capsys, "lint", str(cfg), "--strict")
    assert rc == 1 and "ACME001 [warning] a single epoch" in out
    rc, out, _ = run_cli(capsys, "rule", "ACME001")
    assert "from plugin 'acme_rules'" in out
    assert run_cli(capsys, "lint", str(cfg), "--strict", "--ignore", "ACME")[0] == 0


def test_duplicate_and_malformed_codes_are_rejected_naming_the_plugin():
    dup = _plugin("copycat", Rule("CX101", "mine", "error", "dup", _one_epoch))
    with pytest.raises(PluginError, match=r"plugin 'copycat' registered lint rule CX101, already registered by plugin 'lint_rules'"):
        collect(_pm(dup))
    for bad, why in ((Rule("cx1", "x", "error", "s", _one_epoch), "code 'cx1'"),
                     (Rule("ACME002", "Bad Name", "error", "s", _one_epoch), "kebab-case"),
                     (Rule("ACME003", "x", "fatal", "s", _one_epoch), "severity 'fatal'")):
        with pytest.raises(PluginError, match=f"plugin 'bad'.*{why}"):
            collect(_pm(_plugin("bad", bad)))
    with pytest.raises(PluginError, match="plugin 'notarule'.*not a cosyvoice_ext.lint.Rule"):
        collect(_pm(_plugin("notarule", {"code": "X"})))


def test_a_crashing_rule_is_reported_not_raised(tmp_path, capsys, use_pm):
    def boom(ctx):
        raise ZeroDivisionError("oops")
        yield  # pragma: no cover

    use_pm(_plugin("fragile", Rule("ACME009", "boom", "error", "crashes", boom)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(BASE)
    rc, out, _ = run_cli(capsys, "lint", str(cfg))
    assert rc == 2 and "CX000" in out and "rule ACME009 crashed" in out
