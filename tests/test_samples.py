"""Samples during training, the parts that need no upstream tree: settings refused at start with the key
named, the budget checked against the process group's timeout, the metrics file, the RNGs given back,
and samples off doing nothing. The real 2-rank run is in test_samples_e2e.py."""

from __future__ import annotations

import random
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cosyvoice_ext import plugins, relay
from cosyvoice_ext.builtin import samples as plugin
from cosyvoice_ext.errors import ConfigError
from cosyvoice_ext.samples import results
from cosyvoice_ext.samples.config import Settings, parse_value
from cosyvoice_ext.samples.runner import preserved_rng


@pytest.mark.parametrize("section, key", [
    ({}, "cosyext.samples.pretrained"),
    ({"pretrained": "p", "sentence": 2}, "cosyext.samples.sentence"),
    ({"pretrained": "p", "sentences": 0}, "cosyext.samples.sentences"),
    ({"pretrained": "p", "every": True}, "cosyext.samples.every"),
    ({"pretrained": "p", "max_seconds": 0}, "cosyext.samples.max_seconds"),
    ({"pretrained": "p", "metrics": "sim_campplus"}, "cosyext.samples.metrics"),
    ({"pretrained": "p", "metrics": ["SIM"]}, "cosyext.samples.metrics"),
    ({"pretrained": "p", "stream": "yes"}, "cosyext.samples.stream"),
    ({"pretrained": "p", "seed": -1}, "cosyext.samples.seed"),
    ("often", "cosyext.samples"),
])
def test_bad_settings_are_refused_at_training_start_naming_the_key(section, key):
    """relay.configure is what patched train_utils calls first: every cosyext: key goes to its owner's parser."""
    configs = {"cosyext": {"samples": section}}
    with pytest.raises(ConfigError) as info:
        relay.configure(SimpleNamespace(model="llm", train_engine="torch_ddp"), configs)
    assert info.value.key == key, str(info.value)
    assert str(info.value).startswith(key)


def test_defaults_and_section_owner():
    s = parse_value({"pretrained": "pre"})
    assert s == Settings("pre") and s.sentences == 2 and s.every == 1 and s.metrics == ("sim_campplus",)
    assert s.metric_names() == ["samples/sim_campplus"]
    owners = plugins.hooks(plugins.new_manager(autoload=False)).register_config_sections()
    assert owners["samples"].plugin == "samples"


def _args(tmp_path, **kw):
    cv = tmp_path / "data.list"
    cv.write_text("x.parquet\n")
    return SimpleNamespace(**{"model": "llm", "train_engine": "torch_ddp", "cv_data": str(cv), **kw})


@pytest.mark.parametrize("section, args, timeout, key, words", [
    ({"metrics": ["sim_campplu"]}, {}, None, "cosyext.samples.metrics", "did you mean 'sim_campplus'"),
    ({"metrics": ["wer"]}, {}, None, "cosyext.samples.asr", "no ASR model"),
    ({"max_seconds": 1000}, {}, 1800.0, "cosyext.samples.max_seconds", "timeout is 1800 s"),
    ({}, {"train_engine": "deepspeed"}, None, "cosyext.samples", "DeepSpeed"),
    ({}, {"model": "hifigan"}, None, "cosyext.samples", "trained llm or flow"),
    ({}, {}, None, "cosyext.samples.pretrained", "does not exist"),
])
def test_run_checks_name_the_key(tmp_path, section, args, timeout, key, words):
    settings = parse_value({"pretrained": str(tmp_path / "missing"), **section})
    with pytest.raises(ConfigError) as info:
        plugin.check_run(settings, _args(tmp_path, **args), timeout)
    assert info.value.key == key and words in str(info.value), str(info.value)


def test_budget_within_half_the_group_timeout_is_accepted(tmp_path):
    """max_seconds is checked against the default group's timeout (the other ranks wait in its broadcast)."""
    settings = parse_value({"pretrained": str(tmp_path / "missing"), "max_seconds": 900})
    with pytest.raises(ConfigError) as info:  # passes the budget check, stops at the (missing) pretrained dir
        plugin.check_run(settings, _args(tmp_path), 1800.0)
    assert info.value.key == "cosyext.samples.pretrained"


def test_group_timeout_is_read_from_the_process_group(monkeypatch):
    import torch.distributed as dist

    assert plugin.group_timeout() is None  # not distributed: nobody waits
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    from cosyvoice_ext.tiny.workspace import free_port

    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    import datetime

    dist.init_process_group("gloo", rank=0, world_size=1, timeout=datetime.timedelta(seconds=321))
    try:
        assert plugin.group_timeout() == 321.0
    finally:
        dist.destroy_process_group()


def test_rngs_are_given_back_even_when_the_work_reseeds_them():
    """Building upstream's class runs its yaml's __set_seed lines; training must not notice."""
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    with preserved_rng():
        random.seed(1986), np.random.seed(1986), torch.manual_seed(1986)
        torch.rand(100), np.random.rand(5), random.random()
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_metrics_file_rows_and_per_checkpoint_values(tmp_path):
    results.reset({"samples/sim_campplus": True})
    assert results.read_rows(tmp_path) == []
    results.append_row(tmp_path, {"checkpoint": "epoch_0_whole.pt", "metrics": {"samples/sim_campplus": 0.5}})
    results.append_row(tmp_path, {"checkpoint": "epoch_1_whole.pt", "metrics": {"samples/sim_campplus": None}})
    assert [r["checkpoint"] for r in results.read_rows(tmp_path)] == ["epoch_0_whole.pt", "epoch_1_whole.pt"]
    assert not list(results.samples_dir(tmp_path).glob(".*tmp"))
    results.record("epoch_1_whole", {"samples/sim_campplus": None})
    assert results.value("epoch_0_whole", "samples/sim_campplus") is None  # not sampled in this process
    assert np.isnan(results.value("epoch_1_whole", "samples/sim_campplus"))  # sampled, could not score
    assert results.higher_is_better("samples/sim_campplus") is True
    (results.metrics_path(tmp_path)).write_text('{"checkpoint": "a.pt"}\nnot json\n')
    with pytest.raises(Exception, match="metrics.jsonl:2 is not a JSON line"):
        results.read_rows(tmp_path)


def test_samples_off_is_a_no_op(tmp_path, monkeypatch):
    """Without the section the hooks return before importing anything or touching the run."""
    monkeypatch.delitem(sys.modules, "cosyvoice_ext.samples.runner", raising=False)
    plugin.cosyext_configure({"cosyext": {"llm": {}}}, SimpleNamespace(model="llm"))
    for name in ("init", "epoch_0_whole"):
        plugin.cosyext_after_save(name, {"model_dir": str(tmp_path), "loss_dict": {"loss": 1.0}})
    assert list(tmp_path.iterdir()) == []
    assert "cosyvoice_ext.samples.runner" not in sys.modules
    assert results.value("epoch_0_whole", "samples/sim_campplus") is None


def test_samples_run_before_early_stop():
    """early_stop reads this checkpoint's sample metrics, so samples' after_save must come first."""
    pm = plugins.new_manager(autoload=False)
    order = [impl.plugin_name for impl in reversed(pm.hook.cosyext_after_save.get_hookimpls())]
    assert order.index("samples") < order.index("early_stop")
