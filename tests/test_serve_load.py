"""16 concurrent clients against a real ``deconvviz serve`` over loopback, for a bounded time.

Each client loops over the page's requests (activations, projection, prediction, top-k, a
thumbnail) for random images and units, with the page's ``client``/``seq`` parameters, for a
few seconds. No request may fail (a ``409 superseded`` is the server dropping a stale request,
which is allowed), and the server's memory (this process's RSS) may not keep growing: it is
measured after a warm-up round and again at the end. ``DECONVVIZ_LOAD_SECONDS`` lengthens it;
the slow variant runs 60 s.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from deconvviz.datasets import load_sample  # noqa: E402
from deconvviz.pretrained import load_pretrained  # noqa: E402
from deconvviz.serve.app import create_app  # noqa: E402
from deconvviz.serve.explorer import Explorer  # noqa: E402
from serve_server import running  # noqa: E402

CLIENTS = 16
IMAGES = 100  # the sample's test split: its background scan is done in a second
LAYERS = {"relu1": 64, "relu2": 128, "relu3": 256, "relu5": 256}


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _client(base: str, seconds: float, seed: int, out: dict, lock: threading.Lock) -> None:
    rng = random.Random(seed)
    stats = {"ok": 0, "superseded": 0, "errors": [], "lat": []}
    end = time.monotonic() + seconds
    seq = 0
    with httpx.Client(base_url=base, timeout=60) as c:
        while time.monotonic() < end:
            layer = rng.choice(list(LAYERS))
            image, unit = rng.randrange(IMAGES), rng.randrange(LAYERS[layer])
            seq += 1
            who = {"client": f"c{seed}", "seq": seq}
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


def _run(tmp_path, seconds: float) -> None:
    model, info = load_pretrained()
    ex = Explorer(model, load_sample("test"), classes=info["classes"])
    app = create_app(ex, cache_dir=tmp_path / "cache")
    with running(app) as base:
        assert ex.wait_scan(120)
        _load(base, 1.0)  # warm-up: caches, allocator pools
        before = _rss()
        out = _load(base, seconds)
        after = _rss()
    assert len(out) == CLIENTS
    errors = [e for s in out.values() for e in s["errors"]]
    ok = sum(s["ok"] for s in out.values())
    lat = sorted(x for s in out.values() for x in s["lat"])
    p50, p95 = lat[len(lat) // 2], lat[int(len(lat) * 0.95)]
    grew = (after - before) / 2**20
    print(
        f"\nload: {CLIENTS} clients x {seconds:.0f} s: {ok} requests ok "
        f"({ok / seconds:.0f}/s), {len(errors)} errors, "
        f"{sum(s['superseded'] for s in out.values())} superseded; latency p50 "
        f"{p50 * 1e3:.0f} ms, p95 {p95 * 1e3:.0f} ms; RSS {before / 2**20:.0f} -> "
        f"{after / 2**20:.0f} MiB ({grew:+.1f})"
    )
    assert not errors, errors[:5]
    assert ok >= CLIENTS  # every client got answers
    assert grew < 64, f"RSS grew by {grew:.1f} MiB under load"


def test_sixteen_clients_no_errors_no_memory_growth(tmp_path):
    import os

    _run(tmp_path, float(os.environ.get("DECONVVIZ_LOAD_SECONDS", "4")))


@pytest.mark.slow
def test_sixteen_clients_for_a_minute(tmp_path):
    _run(tmp_path, 60.0)
