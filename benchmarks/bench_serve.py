"""``deconvviz serve`` latency: the library call alone vs the same view through the server.

Run by hand (not part of the tests)::

    python benchmarks/bench_serve.py                  # shipped zfnet-cifar + resnet50 at 224 px
    python benchmarks/bench_serve.py --repeats 100 --skip-resnet

For each view, three ways, taking turns on random images and units (so nothing is cached):

- ``floor`` (projection only): one plain autograd forward and backward through the whole
  model, to the input: what any full-image projection costs at least (a reference);
- ``engine``: the bare engine call (``Deconvnet.layer_output`` / ``Deconvnet.project``);
- ``explorer``: what the server computes for the answer (the engine call plus the per-unit
  maxima, the grid PNG or the projection PNG), :class:`deconvviz.serve.explorer.Explorer`;
  for a projection, ``cold`` (the layer's maps computed too) and ``after grid`` (as on the page:
  picking the image computed the layer's maps, which the explorer keeps);
- ``server``: an HTTP GET over loopback to a uvicorn server in this process, including the
  worker thread hand-off, JSON/PNG encoding and the HTTP client (a projection: after the
  activations request the page makes first, untimed).

The views: *activations* (image -> every feature map of a layer, the grid PNG and per-unit
maxima) and *projection* (unit click -> its projection PNG). Targets (issue 20, 2 CPU cores):
shipped model activations p95 < 100 ms and projection p95 < 50 ms; resnet50 at 224 px
projection p95 < 600 ms. torchvision's resnet50 has random weights here (no download): the
timing does not depend on the weights.
"""

from __future__ import annotations

import argparse
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import torch


class _Images(torch.utils.data.Dataset):  # type: ignore[misc]
    """``n`` random images of ``shape`` (for resnet50: no ImageNet here)."""

    def __init__(self, n: int, shape: tuple[int, int, int]) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand((n, *shape), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], 0


def _serve(app: Any) -> tuple[str, Callable[[], None]]:
    import uvicorn

    # IPPROTO_TCP: asyncio sets TCP_NODELAY on the connections (no 40 ms Nagle stalls)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(30)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def _floor(ex: Any, i: int) -> Any:
    """One plain autograd pass, forward and backward to the input, through the whole model: no
    projection can cost less where the receptive field covers the image (a reference)."""
    x = ex.image(i).requires_grad_(True)
    out = ex.model(x)
    return torch.autograd.grad(out[0, 0], x)[0]


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def bench(name: str, ex: Any, layer: str, repeats: int, rng: random.Random, views: list[str]):
    import httpx

    from deconvviz.serve.app import create_app

    base, stop = _serve(create_app(ex, scan=False))
    n, units = len(ex.dataset), ex.layers[layer].shape[0]
    dn = ex.dn()
    rows = []
    try:
        with httpx.Client(base_url=base, timeout=120) as http:
            cold = ex._maps.clear  # forget the layer outputs kept for the next projection

            def page_flow(i: int, u: int) -> None:  # the page asked for the layer's maps first
                cold()
                http.get("/api/activations", params={"image": i, "layer": layer})

            def explorer_flow(i: int, u: int) -> None:
                cold()
                ex.activations(i, layer)

            def clear(i: int, u: int) -> None:
                cold()

            # view -> way -> (untimed preparation, timed call)
            ways: dict[str, dict[str, tuple[Callable[[int, int], Any], ...]]] = {
                "activations": {
                    "engine": (clear, lambda i, u: dn.layer_output(ex.image(i), layer)),
                    "explorer": (clear, lambda i, u: ex.activations(i, layer)),
                    "server": (
                        clear,
                        lambda i, u: http.get(
                            "/api/activations", params={"image": i, "layer": layer}
                        ).raise_for_status(),
                    ),
                },
                "projection": {
                    "floor": (clear, lambda i, u: _floor(ex, i)),
                    "engine": (clear, lambda i, u: dn.project(ex.image(i), layer, u)),
                    "explorer cold": (
                        clear,
                        lambda i, u: ex.projection_png(ex.projection(i, layer, u)[0]),
                    ),
                    "explorer after grid": (
                        explorer_flow,
                        lambda i, u: ex.projection_png(ex.projection(i, layer, u)[0]),
                    ),
                    "server after grid": (
                        page_flow,
                        lambda i, u: http.get(
                            "/api/projection", params={"image": i, "layer": layer, "unit": u}
                        ).raise_for_status(),
                    ),
                },
            }
            for view in views:
                times: dict[str, list[float]] = {w: [] for w in ways[view]}
                for r in range(repeats + 3):
                    i, u = rng.randrange(n), rng.randrange(units)
                    for way, (prep, fn) in ways[view].items():
                        prep(i, u)
                        t = time.perf_counter()
                        fn(i, u)
                        if r >= 3:  # warm-up rounds not counted
                            times[way].append(time.perf_counter() - t)
                for way, xs in times.items():
                    rows.append((name, layer, view, way, _pct(xs, 0.5), _pct(xs, 0.95)))
    finally:
        stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--resnet-repeats", type=int, default=20)
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--skip-zfnet", action="store_true")
    args = ap.parse_args()

    from deconvviz.serve.explorer import Explorer
    from deconvviz.sources.datasets import load_sample
    from deconvviz.sources.pretrained import load_pretrained

    rng = random.Random(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    model, info = load_pretrained()
    ex = Explorer(model, load_sample(), classes=info["classes"])
    rows = []
    for layer in () if args.skip_zfnet else ("relu1", "relu3", "relu5"):
        rows += bench(
            "zfnet-cifar 32px", ex, layer, args.repeats, rng, ["activations", "projection"]
        )
    if not args.skip_resnet:
        import torchvision

        net = torchvision.models.resnet50(weights=None).eval()
        ex50 = Explorer(net, _Images(16, (3, 224, 224)))
        for layer in ("layer2.3.relu:2", "layer4.2.relu:2"):
            rows += bench(
                "resnet50 224px",
                ex50,
                layer,
                args.resnet_repeats,
                rng,
                ["activations", "projection"],
            )
    print(
        "\n| model | layer | view | way | p50 ms | p95 ms |\n| --- | --- | --- | --- | --- | --- |"
    )
    for name, layer, view, way, p50, p95 in rows:
        print(f"| {name} | {layer} | {view} | {way} | {p50 * 1e3:.1f} | {p95 * 1e3:.1f} |")


if __name__ == "__main__":
    main()
