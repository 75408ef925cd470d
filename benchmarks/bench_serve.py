"""`cosyext serve`: N LoRA voices on one base vs one merged model per voice, side by side in one run.

For N in (1, 3, 10) voices it starts the real server (`cosyext serve`, a child process, 1 torch
thread) twice: once with N `"type": "lora"` voices (one tiny CosyVoice2 base, N adapter pairs) and
once with N `"type": "merged"` voices (N serve dirs with the same adapters merged in, as `cosyext
export --serve` writes them). It reports the resident memory after start-up (VmRSS) and its peak
(VmHWM), the start-up time, and requests/s and p50/p95 latency of the same request mix (one-word
texts, round-robin over the voices, a few clients at once), then the lora/merged ratios.

The models are tiny (base ~60 MB, flow 56 MB of it; an adapter pair ~0.4 MB), so absolute numbers
say little about a real 0.5B base (~2 GB per merged copy); the growth per voice is what to compare.

    python benchmarks/bench_serve.py --upstream ~/CosyVoice [--voices 1,3,10] [--requests 20] [--clients 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def build(root: Path, tree: Path, n: int) -> None:
    import torch

    from cosyvoice_ext.synth import loader
    from cosyvoice_ext.tiny.adapters import make_adapters, make_merged_dir
    from cosyvoice_ext.tiny.inference import make_inference_dir

    torch.set_num_threads(1)
    loader.import_tree(loader.verify(tree))
    names = [f"v{i}" for i in range(n)]
    pre = make_inference_dir(root / "pretrained", family="cosyvoice2", upstream=tree, speakers=tuple(names))
    info = torch.load(pre.root / "spk2info.pt", weights_only=True)
    for i, name in enumerate(names):
        ads = make_adapters(pre.root, root / "runs" / name, seed=i + 1)
        torch.save(info[name]["embedding"], root / "runs" / name / "spk.pt")
        make_merged_dir(pre.root, root / "merged" / name, ads)
        print(f"[bench] built voice {name}", file=sys.stderr, flush=True)


def config(root: Path, kind: str, n: int) -> Path:
    speakers = {}
    for i in range(n):
        name = f"v{i}"
        if kind == "lora":
            speakers[name] = {"type": "lora", "llm_lora_model_path": f"runs/{name}/llm.pt",
                              "flow_lora_model_path": f"runs/{name}/flow.pt", "spk_embedding_path": f"runs/{name}/spk.pt"}
        else:
            speakers[name] = {"type": "merged", "model_dir": f"merged/{name}", "spk_id": name}
    path = root / f"{kind}-{n}.json"
    path.write_text(json.dumps({"default_speaker": "v0", "pretrained_dir": "pretrained", "speakers": speakers}))
    return path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def run_server(cfg: Path, tree: Path, n: int, requests: int, clients: int) -> dict:
    import httpx

    port = _port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "cosyvoice_ext.cli", "serve", str(cfg), "--upstream", str(tree),
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=2).json().get("voices") == n:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        startup = time.time() - t0
        after_start = _mem(proc.pid)
        with httpx.Client(base_url=url, timeout=600) as c:  # warm-up: first request of the process
            c.post("/v1/audio/speech", json={"input": "a", "voice": "v0", "response_format": "pcm"}).raise_for_status()
        jobs = [f"v{i % n}" for i in range(requests)]
        lat: list[float] = []
        lock = threading.Lock()

        def client(k: int) -> None:
            with httpx.Client(base_url=url, timeout=600) as c:
                for i in range(k, len(jobs), clients):
                    t = time.time()
                    r = c.post("/v1/audio/speech", json={"input": "a", "voice": jobs[i], "seed": i,
                                                         "response_format": "pcm"})
                    r.raise_for_status()
                    with lock:
                        lat.append(time.time() - t)

        t1 = time.time()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - t1
        end = _mem(proc.pid)
        return {"startup_s": startup, "rss_mb": after_start["VmRSS"], "peak_mb": end["VmHWM"],
                "req_s": len(lat) / wall, "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95))}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", type=Path, default=os.environ.get("COSYEXT_UPSTREAM"), required="COSYEXT_UPSTREAM"
                   not in os.environ, help="a verified upstream tree at ace7c47 (cosyext vendor DIR)")
    p.add_argument("--voices", default="1,3,10", help="voice counts (default 1,3,10)")
    p.add_argument("--requests", type=int, default=20, help="timed requests per server (default 20)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("--keep", type=Path, help="build into this dir and keep it (default: a temporary dir)")
    args = p.parse_args()
    counts = [int(x) for x in args.voices.split(",")]
    tree = Path(args.upstream).resolve()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        t = time.time()
        res = subprocess.run([sys.executable, __file__, "--build", str(root), str(tree), str(max(counts))],
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        if res.returncode:
            return res.returncode
        print(f"built {max(counts)} voices (adapters and merged dirs) in {time.time() - t:.0f} s", file=sys.stderr)
        base = _size(root)
        rows = []
        for n in counts:
            for kind in ("lora", "merged"):
                r = run_server(config(root, kind, n), tree, n, args.requests, args.clients)
                rows.append((n, kind, r))
                print(f"[bench] {kind} x{n}: {r}", file=sys.stderr, flush=True)
    print(f"cosyext serve, tiny CosyVoice2 (base {base}), {args.requests} requests of one word, "
          f"{args.clients} clients, 1 torch thread, this machine ({os.cpu_count()} cores)")
    print(f"{'voices':>6} {'kind':>7} {'RSS MB':>8} {'peak MB':>8} {'start s':>8} {'req/s':>6} {'p50 s':>6} {'p95 s':>6}")
    for n, kind, r in rows:
        print(f"{n:>6} {kind:>7} {r['rss_mb']:>8.0f} {r['peak_mb']:>8.0f} {r['startup_s']:>8.1f} {r['req_s']:>6.2f} "
              f"{r['p50_s']:>6.2f} {r['p95_s']:>6.2f}")
    print("lora / merged at the same voice count:")
    for n in counts:
        lo = next(r for m, k, r in rows if m == n and k == "lora")
        me = next(r for m, k, r in rows if m == n and k == "merged")
        print(f"  {n:>2} voices: RSS {lo['rss_mb'] / me['rss_mb']:.2f}x, peak {lo['peak_mb'] / me['peak_mb']:.2f}x, "
              f"start-up {lo['startup_s'] / me['startup_s']:.2f}x, req/s {lo['req_s'] / me['req_s']:.2f}x, "
              f"p50 {lo['p50_s'] / me['p50_s']:.2f}x")
    first = {k: next(r for m, kk, r in rows if m == counts[0] and kk == k) for k in ("lora", "merged")}
    last = {k: next(r for m, kk, r in rows if m == counts[-1] and kk == k) for k in ("lora", "merged")}
    if len(counts) > 1:
        span = counts[-1] - counts[0]
        print("memory per added voice (RSS, from the smallest to the largest count): "
              + ", ".join(f"{k} {(last[k]['rss_mb'] - first[k]['rss_mb']) / span:.1f} MB" for k in ("lora", "merged")))
    return 0


def _size(root: Path) -> str:
    total = sum(f.stat().st_size for f in (root / "pretrained").rglob("*") if f.is_file()) if root.exists() else 0
    return f"{total / 2**20:.0f} MB" if total else "tiny"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--build":
        build(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
