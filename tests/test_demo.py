"""`cosyext demo` (what `scripts/demo` runs): the whole tour on CosyVoice3 at the newest commit, ending
with `cosyext eval` of the trained adapters against the base (issue 11: "eval runs end to end on the
demo's outputs", "scripts/demo ends with an eval table and the paths of a few synthesised wavs"), and
the promise never to clear a directory it did not make. The rerun trains from one long recording (issue 13).

The demo runs once for the module; the tests after it read its outputs (the rerun, which replaces
them, comes last). What eval synthesised is checked against the synthesis library in a child
process: each system alone says the same audio for the seed eval.json records, and a base instance
says the same before and after a fine-tuned instance (adapters injected) exists beside it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile

from cosyvoice_ext import cli
from tests.helpers import run_cosyext, tree_digest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "demo"
    res = run_cosyext("demo", "--workdir", str(work), "--epochs", "2", "--utterances", "24")
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return work, res


def _sample_rate(work) -> int:
    """The rate the demo's model speaks at, from its own yaml (what upstream's class reads)."""
    return int(re.search(r"^sample_rate: (\d+)", (work / "pretrained" / "cosyvoice3.yaml").read_text(), re.M).group(1))


@pytest.mark.slow
def test_demo_tour_on_cosyvoice3_trains_exports_and_ends_with_an_eval(demo, lock):
    work, res = demo
    out = res.stdout
    assert f"cosyvoice3 at upstream {lock.newest.label}" in out
    rows = {m.group(1): m for m in re.finditer(r"^(llm|flow)\s+\d+\s+\d+\s+(\d+)\s+(\S+)\s+(\S+)", out, re.M)}
    assert set(rows) == {"llm", "flow"} and all(int(r.group(2)) > 0 for r in rows.values())
    assert "serve it with upstream: CosyVoice3(" in out and "--onnx_path ''" in out
    serve = work / "serve" / "demo_voice"
    assert {"llm.pt", "flow.pt", "spk2info.pt", "speaker_config.json"} <= {p.name for p in serve.iterdir()}
    assert (serve / "cosyvoice3.yaml").is_symlink() and (work / "loss.png").stat().st_size > 0
    # the closing summary: the eval table (as eval wrote it) and a few synthesised wavs at the model's rate
    summary = out[out.index("loss plot:"):]
    table = (work / "eval" / "eval.txt").read_text()
    assert table in summary and re.search(r"^WER \(lower better\)\s+\d", table, re.M)
    assert "fine-tuned - base [95% CI]" in table
    wavs = re.findall(r"^  (base|fine-tuned)\s+(\S+\.wav)\s", summary, re.M)
    assert {w[0] for w in wavs} == {"base", "fine-tuned"} and len(wavs) >= 4, summary
    rate = _sample_rate(work)
    for _, path in wavs:
        info = soundfile.info(path)
        assert info.samplerate == rate and info.frames > 0, (path, info)
    assert "[eval] synthesised fine-tuned 1/" in res.stderr  # progress while synthesising, on stderr


@pytest.mark.slow
def test_the_demo_eval_compares_both_systems_on_the_same_texts_and_seeds(demo):
    work, _ = demo
    result = json.loads((work / "eval" / "eval.json").read_text())
    assert (work / "eval" / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    base, tuned = result["systems"]["base"], result["systems"]["tuned"]
    assert base["kind"] == tuned["kind"] == "pretrained" and base["adapters"] == {}
    assert set(tuned["adapters"]) == {"llm", "flow"}
    assert all(f"/exp/{m}/epoch_" in p for m, p in tuned["adapters"].items())
    assert base["sample_rate"] == tuned["sample_rate"] == _sample_rate(work)
    utts = result["utterances"]
    assert len(utts) == 3 and [u["seed"] for u in utts] == [0, 1, 2]
    assert result["prompt"]["utt"] not in {u["utt"] for u in utts}
    differ = 0
    for u in utts:
        assert u["base"]["seed"] == u["tuned"]["seed"] == u["seed"]
        a, _ = soundfile.read(u["base"]["wav"], dtype="float32")
        b, _ = soundfile.read(u["tuned"]["wav"], dtype="float32")
        differ += a.shape != b.shape or not np.array_equal(a, b)
    assert differ >= 2, "the adapters should change what the model says"
    m = result["metrics"]
    assert m["wer"]["unavailable"] is None and m["wer"]["diff"]["n"] == 3
    assert m["sim_campplus"]["unavailable"] is None and m["dnsmos"]["unavailable"] is None


_CHILD = textwrap.dedent("""
    import argparse, json, sys
    from pathlib import Path

    import numpy as np
    import soundfile
    import torch

    from cosyvoice_ext.eval.data import read_list
    from cosyvoice_ext.eval.synthesis import Prompt, make_synthesizers

    torch.set_num_threads(1)
    work = Path(sys.argv[1])
    result = json.loads((work / "eval" / "eval.json").read_text())
    row = result["utterances"][int(sys.argv[2])]
    u = next(x for x in read_list(work / "data" / "cv" / "data.list") if x.utt == row["utt"])
    prompt = Prompt(Path(result["prompt"]["wav"]), result["prompt"]["text"])

    def args(*target, voice="prompt"):
        return argparse.Namespace(target=[str(t) for t in target], base=work / "pretrained", upstream=work / "CosyVoice",
                                  voice=voice, speaker_name=None)

    systems, _ = make_synthesizers(args(work / "exp" / "llm", work / "exp" / "flow"), lambda m: None)
    base, tuned = systems["base"], systems["tuned"]
    before = base(u, row["seed"], prompt).samples
    fine = tuned(u, row["seed"], prompt).samples  # both instances alive now, the adapters in tuned's modules
    after = base(u, row["seed"], prompt).samples
    served, _ = make_synthesizers(args(work / "serve" / "demo_voice", voice="registered"), lambda m: None)
    registered = served["tuned"](u, row["seed"], None)

    def wav(system):
        return soundfile.read(row[system]["wav"], dtype="float32")[0]

    def close(x, y):  # eval's wavs are PCM16
        return x.shape == y.shape and float(np.abs(np.clip(x, -1, 1) - y).max()) <= 1.5 / 32768

    print(json.dumps({
        "base_unchanged": bool(np.array_equal(before, after)),
        "tuned_differs": before.shape != fine.shape or not np.array_equal(before, fine),
        "base_is_eval_wav": close(before, wav("base")),
        "tuned_is_eval_wav": close(fine, wav("tuned")),
        "registered": [served["tuned"].speaker, served["tuned"].source.kind, registered.sample_rate,
                       len(registered.samples)],
    }))
""")


@pytest.mark.slow
def test_eval_systems_share_no_state_and_its_wavs_are_each_system_alone(demo):
    work, _ = demo
    res = subprocess.run([sys.executable, "-c", _CHILD, str(work), "0"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["base_unchanged"], "building the fine-tuned instance changed what the base instance says"
    assert got["tuned_differs"]
    # eval loaded one system at a time: the same seed gives the same audio with both instances alive
    assert got["base_is_eval_wav"] and got["tuned_is_eval_wav"]
    speaker, kind, rate, n = got["registered"]
    assert (speaker, kind, rate) == ("demo_voice", "serve", _sample_rate(work)) and n > 0


def _eval(work, *argv):
    return cli.main(["eval", *map(str, argv), "--base", str(work / "pretrained"), "--data",
                     str(work / "data" / "cv" / "data.list"), "--upstream", str(work / "CosyVoice")])


@pytest.mark.slow
@pytest.mark.parametrize("targets, extra, message", [
    (["exp/llm", "exp/llm"], [], "are both llm runs"),
    (["serve/demo_voice", "exp/llm"], [], "give it alone"),
    (["exp/llm"], ["--voice", "registered"], "--voice registered needs an exported serve dir"),
    (["serve/demo_voice"], ["--voice", "registered", "--speaker-name", "nobody"], "speaker 'nobody' is not registered"),
    (["exp/llm"], ["--speaker-name", "demo_voice"], "goes with --voice registered"),
    (["exp/nothing"], [], "does not exist"),
    (["data"], [], "no epoch_*_whole.pt checkpoints"),
])
def test_eval_targets_that_cannot_be_are_exit_2_before_any_model_loads(demo, targets, extra, message, tmp_path, capsys):
    work, _ = demo
    assert _eval(work, *(work / t for t in targets), *extra, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert message in err and "next:" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_demo_rerun_from_one_long_recording_replaces_what_it_made_and_keeps_the_tree(demo):
    """Last in the module: it replaces the outputs the tests above read. The rerun trains from ONE long
    recording (issue 13: "a full run from one long file trains in the demo"): upstream's real speech joined
    with pauses, cut by prepare on the pauses (one segment per clip), transcribed, then the LLM trains on it."""
    from cosyvoice_ext.tiny.recording import ASSETS

    work, _ = demo
    (work / "notes.txt").write_text("mine")
    again = run_cosyext("demo", "--workdir", str(work), "--recording", "upstream", "--epochs", "1", "--models", "llm",
                        "--eval-utts", "0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already at" in again.stdout and (work / "notes.txt").read_text() == "mine"
    assert not (work / "exp" / "flow").exists() and not (work / "eval").exists()
    assert "cosyext eval" not in again.stdout
    # the generated wav+txt recordings are gone; the long take (3 rounds of the clips, 0.3 s at both ends and
    # 1.2 s pauses between clips) was cut only inside clips: every clip gives at least one segment, none spans a join
    assert [p.name for p in (work / "recordings").iterdir()] == ["long_take.flac"]
    durations = [soundfile.info(str(work / "CosyVoice" / "asset" / name)).duration for name in ASSETS] * 3
    starts = np.cumsum([0.3] + [d + 1.2 for d in durations[:-1]])
    clips = list(zip(starts, starts + np.array(durations)))
    header, *rows = [r.split("\t") for r in (work / "data" / "transcripts.tsv").read_text().splitlines() if r.strip()]
    spans = [(float(r[header.index("start")]), float(r[header.index("end")])) for r in rows]
    inside = [[i for i, (a, b) in enumerate(clips) if a - 0.3 <= s and e <= b + 0.3] for s, e in spans]
    assert all(len(hit) == 1 for hit in inside), (spans, clips)
    assert sorted({hit[0] for hit in inside}) == list(range(len(clips)))
    assert len(list((work / "data" / "segments").rglob("*.wav"))) == len(spans)
    assert (work / "data" / "report.html").is_file()
    trained = re.search(r"^llm\s+(\d+)\s+(\d+)\s+(\d+)", again.stdout, re.M)
    assert trained, again.stdout[-2000:]
    assert int(trained.group(1)) >= 1 and int(trained.group(3)) >= 1  # samples, steps
    assert list((work / "exp" / "llm").glob("epoch_0_whole.pt"))


def test_demo_never_clears_a_directory_it_did_not_make(tmp_path):
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "keep.txt").write_text("user data")
    before = tree_digest(mine)
    res = run_cosyext("demo", "--workdir", str(mine))
    assert res.returncode == 2 and "was not made by 'cosyext demo'" in res.stderr and "next:" in res.stderr
    assert tree_digest(mine) == before
