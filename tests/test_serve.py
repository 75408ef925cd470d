"""`cosyext serve` end to end: a real uvicorn server (the CLI, in a child process) on 127.0.0.1 with tiny
upstream models, LoRA voices sharing one base, a merged voice, broken entries, --root and --api-key.

Every response is compared with what `cosyvoice_ext.synth.Synthesizer` (`cosyext synth`) makes for
the same model, adapters, text and seed (tests/serve_world.py, another child): 16-bit responses equal
the reference quantised as round(clip(x) * 32767), bit for bit. One server serves every test here;
the reload test runs last and puts the config back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import run_cosyext
from tests.serve_world import LONG, SHORT, ref_name

pytestmark = pytest.mark.slow  # one server for the module: ~1 min of set-up before the first test
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_CHARS = 200
#: the child runs the CLI with an audit hook that logs every open() of a path under the watched dir
AUDITED_CLI = """\
import os, sys
watch, log = os.path.realpath(sys.argv[1]) + os.sep, sys.argv[2]
def hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path.startswith(watch):
            with open(log, "a") as f:
                f.write(path + "\\n")
sys.addaudithook(hook)
from cosyvoice_ext.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quantised(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)


def pcm(body: bytes) -> np.ndarray:
    return np.frombuffer(body, dtype="<i2").astype(np.int16)


def lora(name: str, **extra) -> dict:
    return {"type": "lora", "llm_lora_model_path": f"runs/{name}/llm.pt", "flow_lora_model_path": f"runs/{name}/flow.pt",
            "spk_embedding_path": f"voices/{name}.pt", "description": f"{name}'s voice", "active": True, **extra}


def config(voices: tuple[str, ...] = ("alice", "bob")) -> dict:
    speakers = {name: lora(name) for name in voices}
    speakers["eve"] = lora("eve", pretrained_dir="models/pretrained3")  # a CosyVoice3 base of its own
    speakers["carol"] = {"type": "merged", "model_dir": "models/merged_carol", "spk_id": "carol",
                         "description": "exported", "active": True}
    speakers["quiet"] = lora("alice", active=False)
    speakers["missing"] = lora("alice", llm_lora_model_path="runs/nope/llm.pt")
    speakers["corrupt"] = lora("alice", flow_lora_model_path="runs/corrupt/flow.pt")
    speakers["escape"] = lora("alice", llm_lora_model_path="../outside/llm.pt")
    speakers["linked"] = lora("alice", spk_embedding_path="voices/linked.pt")
    return {"default_speaker": "alice", "pretrained_dir": "models/pretrained", "speakers": speakers}


class Server:
    def __init__(self, world: Path, srv: Path, proc: subprocess.Popen, url: str, log: Path, opened: Path) -> None:
        self.world, self.srv, self.proc, self.url, self.log, self.opened = world, srv, proc, url, log, opened
        self.client = httpx.Client(base_url=url, timeout=300)

    def ref(self, voice: str, text: str = SHORT, seed: int = 0, stream: bool = False) -> np.ndarray:
        return np.load(self.srv / "refs" / ref_name(voice, text, seed, stream))

    def speech(self, **body) -> httpx.Response:
        body.setdefault("model", "cosyext")
        body.setdefault("response_format", "pcm")
        return self.client.post("/v1/audio/speech", json=body, headers=AUTH)

    def write_config(self, doc: dict) -> None:
        tmp = self.srv / ".speaker_config.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.srv / "speaker_config.json")


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream_at):
    tree = upstream_at("ace7c47")
    world = tmp_path_factory.mktemp("serve")
    srv = world / "srv"
    srv.mkdir()
    t0 = time.time()
    builder = subprocess.Popen([sys.executable, "-m", "tests.serve_world", str(srv), str(tree)], env=_env(),
                               cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                               stderr=open(world / "builder.log", "w"))
    while not (srv / "models.ready").exists():  # the server starts while the references are made
        if builder.poll() is not None:
            pytest.fail(f"building the tiny models failed:\n{(world / 'builder.log').read_text()[-4000:]}")
        time.sleep(0.2)
    print(f"\nmodels built in {time.time() - t0:.1f} s")
    outside = world / "outside"
    outside.mkdir()
    shutil.copy(srv / "runs" / "alice" / "llm.pt", outside / "llm.pt")
    shutil.copy(srv / "voices" / "alice.pt", outside / "alice.pt")
    (srv / "voices" / "linked.pt").symlink_to(outside / "alice.pt")
    (srv / "runs" / "corrupt").mkdir()
    (srv / "runs" / "corrupt" / "flow.pt").write_bytes((srv / "runs" / "alice" / "flow.pt").read_bytes()[:300])
    (srv / "speaker_config.json").write_text(json.dumps(config(), indent=1))
    port = _free_port()
    log, opened = world / "server.log", world / "opened-outside.txt"
    argv = ["serve", str(srv / "speaker_config.json"), "--upstream", str(tree), "--root", str(srv),
            "--port", str(port), "--max-chars", str(MAX_CHARS)]
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", AUDITED_CLI, str(outside), str(opened), *argv],
                                env={**_env(), "COSYEXT_API_KEY": KEY}, stdout=out, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[1])
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while True:
        if proc.poll() is not None:
            pytest.fail(f"cosyext serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.time() - t0 > 240:
            proc.kill()
            pytest.fail(f"cosyext serve did not answer /healthz within 240 s:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)
    print(f"server up in {time.time() - t0:.1f} s")
    if builder.wait() != 0:
        proc.kill()
        pytest.fail(f"making the reference audio failed:\n{(world / 'builder.log').read_text()[-4000:]}")
    print(f"references made {time.time() - t0:.1f} s after the server started")
    s = Server(world, srv, proc, url, log, opened)
    yield s
    s.client.close()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_every_voice_equals_the_synthesizer_and_voices_differ(server):
    refs = {v: server.ref(v) for v in ("alice", "bob", "carol", "base")}
    for a in refs:
        for b in refs:
            if a < b:
                n = min(len(refs[a]), len(refs[b]))
                assert not np.array_equal(refs[a][:n], refs[b][:n]), f"{a} and {b} sound alike: no test of cross-talk"
    for voice in ("alice", "bob", "carol"):
        for seed in (0, 1):
            r = server.speech(input=SHORT, voice=voice, seed=seed, response_format="wav")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "audio/wav" and r.headers["x-voice"] == voice
            body = r.content
            assert body[:4] == b"RIFF" and body[8:16] == b"WAVEfmt " and int.from_bytes(body[24:28], "little") == 24000
            got = pcm(body[44:])
            assert np.array_equal(got, quantised(server.ref(voice, seed=seed))), (voice, seed)


def test_a_cosyvoice3_voice_on_its_own_base(server):
    r = server.speech(input=SHORT, voice="eve", response_format="wav")
    assert r.status_code == 200, r.text
    assert np.array_equal(pcm(r.content[44:]), quantised(server.ref("eve")))
    assert server.client.get("/healthz").json()["models"] == 3  # CosyVoice2 base, carol's merged dir, CosyVoice3 base


def test_stream_is_chunked_as_generated_and_equals_the_synthesizer_stream(server):
    arrivals, data = [], b""
    t0 = time.time()
    with server.client.stream("POST", "/v1/audio/speech", headers=AUTH, json={
            "model": "cosyext", "input": LONG, "voice": "alice", "response_format": "pcm", "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.headers
        for piece in r.iter_raw():
            arrivals.append(time.time() - t0)
            data += piece
    ref = server.ref("alice", LONG, 0, stream=True)
    assert np.array_equal(pcm(data), quantised(ref))
    assert len(arrivals) >= 2, "one piece: the audio was not streamed"
    spread = arrivals[-1] - arrivals[0]
    print(f"\nstream: {len(arrivals)} pieces, first after {arrivals[0]:.2f} s, last after {arrivals[-1]:.2f} s")
    assert spread > 0.05, "every piece came at once: nothing was sent while the rest was generated"


def test_default_speaker_mp3_and_speed(server):
    r = server.speech(input=SHORT, response_format="mp3")  # no voice: the default speaker
    assert r.status_code == 200 and r.headers["x-voice"] == "alice" and r.headers["content-type"] == "audio/mpeg"
    dec = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1",
                          "-ar", "24000", "pipe:1"], input=r.content, capture_output=True)
    assert dec.returncode == 0, dec.stderr
    ref = server.ref("alice")
    got = pcm(dec.stdout)
    assert abs(len(got) - len(ref)) < 2400, (len(got), len(ref))  # mp3 pads by up to a frame or two
    r = server.speech(input=SHORT, voice="alice", speed=2.0)  # upstream shortens the mel: half the samples
    assert r.status_code == 200 and abs(len(pcm(r.content)) - len(ref) / 2) <= 480, (len(r.content) // 2, len(ref))


def test_three_voices_twenty_concurrent_requests_each_no_cross_talk(server):
    jobs = [(voice, i % 2) for i in range(20) for voice in ("alice", "bob", "carol")]
    results: list = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def one(i: int, voice: str, seed: int) -> None:
        with httpx.Client(base_url=server.url, timeout=600) as c:
            barrier.wait()
            t = time.time()
            r = c.post("/v1/audio/speech", headers=AUTH, json={"model": "cosyext", "input": SHORT, "voice": voice,
                                                                "seed": seed, "response_format": "pcm"})
            results[i] = (r.status_code, r.content, time.time() - t, r.headers.get("x-voice"))

    t0 = time.time()
    threads = [threading.Thread(target=one, args=(i, v, s)) for i, (v, s) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    assert all(r is not None for r in results), "a request got no answer"
    for (voice, seed), (status, body, _, said) in zip(jobs, results):
        assert status == 200 and said == voice, (voice, status, body[:200])
        assert np.array_equal(pcm(body), quantised(server.ref(voice, seed=seed))), f"{voice} seed {seed}: cross-talk"
    lat = np.array([r[2] for r in results])
    print(f"\n3 voices x 20 concurrent: {len(jobs)} answered in {wall:.1f} s ({len(jobs) / wall:.2f} req/s); latency "
          f"p50 {np.percentile(lat, 50):.2f} s, p95 {np.percentile(lat, 95):.2f} s, max {lat.max():.2f} s")


def test_bad_requests(server):
    c = server.client
    r = c.post("/v1/audio/speech", json={"input": SHORT, "voice": "alice"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert c.get("/v1/voices", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = c.post("/v1/audio/speech", content=b'{"input": "a", "voice": ', headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    for body, param, words in [
        ({"input": ""}, "input", "input is empty"),
        ({"input": "   \n"}, "input", "input is empty"),
        ({"voice": "alice"}, "input", "input (the text to say) is required"),
        ({"input": "x" * (MAX_CHARS + 1)}, "input", f"at most {MAX_CHARS}"),
        ({"input": SHORT, "response_format": "ogg"}, "response_format", "not one of wav, pcm, mp3"),
        ({"input": SHORT, "speed": 9}, "speed", "from 0.25 to 4.0"),
        ({"input": SHORT, "speed": 1.5, "stream": True}, "speed", "only offline"),
        ({"input": SHORT, "seed": -1}, "seed", "non-negative"),
    ]:
        r = server.speech(**body)
        assert r.status_code == 422, (body, r.status_code)
        err = r.json()["error"]
        assert err["param"] == param and words in err["message"], (body, err)
    for voice, words in [("nobody", "is not in the config"), ("quiet", "is inactive"),
                         ("missing", "was skipped: llm_lora_model_path runs/nope/llm.pt does not exist")]:
        r = server.speech(input=SHORT, voice=voice)
        assert r.status_code == 404, (voice, r.text)
        err = r.json()["error"]
        assert words in err["message"] and err["voices"] == ["alice", "bob", "carol", "eve"], err


def test_voices_health_and_skipped_entries_say_why(server):
    assert server.client.get("/healthz").json()["status"] == "ok"  # open without the key
    doc = server.client.get("/v1/voices", headers=AUTH).json()
    assert doc["default_speaker"] == "alice"
    by = {v["name"]: v for v in doc["voices"]}
    assert {n for n, v in by.items() if v["status"] == "ready"} == {"alice", "bob", "carol", "eve"}
    assert by["eve"]["family"] == "cosyvoice3" and by["alice"]["family"] == "cosyvoice2"
    assert by["quiet"]["status"] == "inactive"
    assert by["alice"]["description"] == "alice's voice" and by["carol"]["type"] == "merged"
    reasons = {n: v.get("reason", "") for n, v in by.items() if v["status"] == "skipped"}
    assert set(reasons) == {"missing", "corrupt", "escape", "linked"}
    assert "does not exist" in reasons["missing"]
    assert "runs/corrupt/flow.pt" in reasons["corrupt"] and "truncated" in reasons["corrupt"]
    for name in ("escape", "linked"):
        assert f"outside --root {server.srv}" in reasons[name], reasons[name]
    log = server.log.read_text()
    for name in reasons:
        assert f"skipped {name}: " in log, log[-3000:]
    assert "4 voice(s) ready (alice, bob, carol, eve), 4 skipped, 1 inactive; 3 model(s) loaded" in log


def test_binds_127_0_0_1_by_default(server):
    port = int(server.url.rsplit(":", 1)[1])
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port]
    assert listening and all(a.split(":")[0] == "0100007F" for a in listening), listening  # 127.0.0.1 only
    assert not any(int(line.split()[1].rsplit(":", 1)[1], 16) == port and line.split()[3] == "0A"
                   for line in (Path("/proc/net/tcp6").read_text().splitlines()[1:]
                                if Path("/proc/net/tcp6").exists() else []))


def test_root_no_file_outside_is_opened(server):
    assert server.client.get("/healthz").status_code == 200
    opened = server.opened.read_text() if server.opened.exists() else ""
    assert opened == "", f"--root {server.srv}, yet the server opened:\n{opened}"


def test_page_plays_audio_in_headless_chromium(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    for exe in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        assert Path(exe).exists(), f"{exe} is missing: apt-get install chromium chromium-driver (scripts/env.sh does)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={server.world / 'chromium'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=DriverService("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(server.url + "/")
        key = driver.find_element(By.ID, "key")
        key.send_keys(KEY)
        driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
        WebDriverWait(driver, 30).until(lambda d: len(Select(d.find_element(By.ID, "voice")).options) == 4)
        names = [o.get_attribute("value") for o in Select(driver.find_element(By.ID, "voice")).options]
        assert names == ["alice", "bob", "carol", "eve"]
        Select(driver.find_element(By.ID, "voice")).select_by_value("bob")
        text = driver.find_element(By.ID, "text")
        text.clear()
        text.send_keys(SHORT)
        driver.find_element(By.ID, "play").click()
        WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.ID, "audio").get_attribute("data-ended") == "1"
            or "HTTP" in d.find_element(By.ID, "status").text)
        status = driver.find_element(By.ID, "status").text
        played = driver.execute_script("const a = document.getElementById('audio'); "
                                       "return [a.currentTime, a.duration, a.ended, a.error && a.error.code];")
        assert status == "played", status
        assert played[2] is True and played[0] > 0 and abs(played[1] - len(server.ref("bob", seed=0)) / 24000) < 0.01, played
    finally:
        driver.quit()


def test_strict_refuses_to_start(tmp_path, upstream_at):
    tree = upstream_at("ace7c47")
    (tmp_path / "speaker_config.json").write_text(json.dumps({"default_speaker": "a", "speakers": {
        "a": {"type": "lora", "llm_lora_model_path": "gone.pt", "spk_embedding_path": "a.pt"}}}))
    (tmp_path / "a.pt").write_bytes(b"")
    res = run_cosyext("serve", str(tmp_path / "speaker_config.json"), "--upstream", str(tree), "--strict",
                      "--pretrained", str(tmp_path), env=_env())
    assert res.returncode == 2, res.stderr
    assert "--strict: 1 problem(s)" in res.stderr and "a: llm_lora_model_path gone.pt does not exist" in res.stderr
    assert "next: fix them, or serve without --strict" in res.stderr and "Traceback" not in res.stderr


def test_a_reload_of_a_broken_config_keeps_the_voices(server):
    (server.srv / "speaker_config.json").write_text('{"speakers": {')
    try:
        r = server.client.post("/v1/reload", headers=AUTH)
        assert r.status_code == 422 and "is not valid JSON" in r.json()["error"]["message"], r.text
        voices = server.client.get("/v1/voices", headers=AUTH).json()["voices"]
        assert sorted(v["name"] for v in voices if v["status"] == "ready") == ["alice", "bob", "carol", "eve"]
    finally:
        server.write_config(config())
    report = server.client.post("/v1/reload", headers=AUTH).json()
    assert report["unchanged"] == ["alice", "bob", "carol", "eve"] and not report["added"] and not report["removed"]


def test_reload_during_in_flight_requests_loses_none(server):
    """Requests queued before the reload, and requests for the dropped voice sent while it loads (they see the
    old table and queue behind the loading job), all get their own voice's audio; after the swap, 404."""
    results: dict[int, tuple] = {}

    def one(i: int, voice: str, seed: int) -> None:
        with httpx.Client(base_url=server.url, timeout=600) as c:
            r = c.post("/v1/audio/speech", headers=AUTH, json={"input": SHORT, "voice": voice, "seed": seed,
                                                                "response_format": "pcm"})
            results[i] = (voice, seed, r.status_code, r.content)

    first = [(voice, i % 2) for i in range(3) for voice in ("alice", "bob", "carol")]
    threads = [threading.Thread(target=one, args=(i, v, s)) for i, (v, s) in enumerate(first)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    in_flight = len(first) - len(results)
    server.write_config(config(voices=("alice", "dave")))  # bob goes, dave comes
    reloaded: dict = {}
    reloader = threading.Thread(target=lambda: reloaded.update(r=server.client.post("/v1/reload", headers=AUTH)))
    reloader.start()
    try:
        k = len(first)
        while reloader.is_alive() and k < len(first) + 6:  # bob, while the new voices load
            time.sleep(0.3)
            threads.append(threading.Thread(target=one, args=(k, "bob", 0)))
            threads[-1].start()
            k += 1
        reloader.join()
        r = reloaded["r"]
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["added"] == ["dave"] and report["removed"] == ["bob"]
        assert report["unchanged"] == ["alice", "carol", "eve"] and report["changed"] == []
        for t in threads:
            t.join()
        during = [results[i] for i in range(len(first), k)]
        print(f"\nreload posted with {in_flight} of {len(first)} requests in flight; {len(during)} requests for the "
              f"dropped voice sent while it loaded: {sorted(x[2] for x in during)}")
        assert in_flight > 0, "every request had finished before the reload: nothing was tested"
        assert any(x[2] == 200 for x in during), "no request saw the old table during the reload"
        for voice, seed, status, body in [results[i] for i in range(len(first))] + during:
            assert status in (200, 404) and (status == 200 or (voice == "bob" and b"is not in the config" in body))
            if status == 200:
                assert np.array_equal(pcm(body), quantised(server.ref(voice, seed=seed))), (voice, seed)
        assert all(results[i][2] == 200 for i in range(len(first))), "a request queued before the reload was lost"
        r = server.speech(input=SHORT, voice="dave")
        assert r.status_code == 200 and np.array_equal(pcm(r.content), quantised(server.ref("dave")))
        r = server.speech(input=SHORT, voice="bob")
        assert r.status_code == 404 and r.json()["error"]["voices"] == ["alice", "carol", "dave", "eve"]
    finally:
        server.write_config(config())
        assert server.client.post("/v1/reload", headers=AUTH).json()["added"] == ["bob"]
    r = server.speech(input=SHORT, voice="bob", seed=1)
    assert r.status_code == 200 and np.array_equal(pcm(r.content), quantised(server.ref("bob", seed=1)))
