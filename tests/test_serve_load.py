"""16 concurrent clients against a real ``deconvviz serve`` over loopback, for a bounded time.

Each client loops over the page's requests (activations, projection, prediction, top-k, a
thumbnail) for random images and units, with the page's ``client``/``seq`` parameters, for a
few seconds. No request may fail (a ``409 superseded`` is the server dropping a stale request,
which is allowed), and the server's memory may not keep growing: the server is the real
``deconvviz serve`` in its own process (so its RSS is apart from the clients'), measured after a
warm-up round, halfway and at the end. ``DECONVVIZ_LOAD_SECONDS`` lengthens it;
the slow variant runs 60 s.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 16
IMAGES = 500  # the shipped sample
LAYERS = {"relu1": 64, "relu2": 128, "relu3": 256, "relu5": 256}


def _client(base: str, seconds: float, seed: int, out: dict, lock: threading.Lock) -> None:
    rng = random.Random(seed)
    tag = f"{time.monotonic_ns():x}"  # a page's id: new for every page load
    stats = {"ok": 0, "superseded": 0, "errors": [], "lat": []}
    end = time.monotonic() + seconds
    seq = 0
    with httpx.Client(base_url=base, timeout=60) as c:
        while time.monotonic() < end:
            layer = rng.choice(list(LAYERS))
            image, unit = rng.randrange(IMAGES), rng.randrange(LAYERS[layer])
            seq += 1
            who = {"client": f"{tag}-{seed}", "seq": seq}
            for path, params in [
                ("/api/activations", {"image": image, "layer": layer}),
                ("/api/projection", {"image": image, "layer": layer, "unit": unit}),
                ("/api/predict", {"image": image}),
                ("/api/topk", {"layer": layer, "unit": unit}),
                (f"/api/images/{image}.png", {}),
            ]:
                t = time.perf_counter()
                r = c.get(path, params={**params, **(who if params else {})})
                stats["lat"].append(time.perf_counter() - t)
                if r.status_code == 200:
                    stats["ok"] += 1
                elif r.status_code == 409 and "superseded" in r.text:
                    stats["superseded"] += 1
                else:
                    stats["errors"].append(f"{path} {r.status_code} {r.text[:120]}")
    with lock:
        out[seed] = stats


def _load(base: str, seconds: float) -> dict:
    out: dict = {}
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_client, args=(base, seconds, s, out, lock)) for s in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return out


def _server(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """``deconvviz serve`` (the shipped network, its 500 images) in its own process, so that its
    memory is measured apart from the clients'; returns it and its URL once its scan is done."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT / "cli"), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "deconvviz_cli", "serve", "--port", "0", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert " on http://127.0.0.1:" in line, line
    base = line.split(" on ", 1)[1].split()[0].rstrip("/")
    deadline = time.monotonic() + 180
    while not httpx.get(f"{base}/api/model", timeout=60).json()["scan"]["finished"]:
        assert time.monotonic() < deadline, "the background scan did not finish"
        time.sleep(0.5)
    return proc, base


def _rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _run(tmp_path: Path, seconds: float) -> None:
    proc, base = _server(tmp_path)
    try:
        _load(base, 2.0)  # warm-up: caches, allocator pools
        before = _rss_of(proc.pid)
        out = _load(base, seconds / 2)
        middle = _rss_of(proc.pid)
        out2 = _load(base, seconds / 2)
        after = _rss_of(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
    assert proc.returncode == 0
    stats = list(out.values()) + list(out2.values())
    assert len(stats) == 2 * CLIENTS
    errors = [e for s in stats for e in s["errors"]]
    ok = sum(s["ok"] for s in stats)
    lat = sorted(x for s in stats for x in s["lat"])
    p50, p95 = lat[len(lat) // 2], lat[int(len(lat) * 0.95)]
    mib = 2**20
    print(
        f"\nload: {CLIENTS} clients x {seconds:.0f} s: {ok} requests ok "
        f"({ok / seconds:.0f}/s), {len(errors)} errors, "
        f"{sum(s['superseded'] for s in stats)} superseded; latency p50 "
        f"{p50 * 1e3:.0f} ms, p95 {p95 * 1e3:.0f} ms; server RSS after warm-up "
        f"{before / mib:.0f} MiB, then {middle / mib:.0f}, then {after / mib:.0f} MiB"
    )
    assert not errors, errors[:5]
    assert ok >= CLIENTS  # every client got answers
    # each client waits for each answer: none of its requests is ever superseded
    assert sum(s["superseded"] for s in stats) == 0
    assert (after - before) / mib < 48, "the server's memory grew under load"
    assert (after - middle) / mib < 24, "the server's memory kept growing under load"


def test_sixteen_clients_no_errors_no_memory_growth(tmp_path):
    _run(tmp_path, float(os.environ.get("DECONVVIZ_LOAD_SECONDS", "6")))


@pytest.mark.slow
def test_sixteen_clients_for_a_minute(tmp_path):
    _run(tmp_path, 60.0)
