"""Benchmark: project every channel of a layer for 8 images (run by hand).

    python benchmarks/bench_engine.py [--repeats 5] [--device cpu|cuda]

Measured in one process run, median of repeats, three ways over the same seeds (for each image
and channel, the strongest activation of that channel):

* ``deconvviz``: one ``Deconvnet.project(x, layer, all_channels)`` call;
* ``captum loop``: captum's ``NeuronDeconvolution`` called once per channel (how captum users
  do it; its neuron selector picks each image's strongest activation of the channel);
* ``plain backward``: one dense autograd backward over all N x K seeds (the layers up to the
  target run on the N x K replicated batch; the ReLU backward is not even replaced), the floor
  for a dense batched implementation.

Goals (issue 2): at least 10x faster than the captum loop, within 1.5x of the plain backward.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torchvision
from captum.attr import NeuronDeconvolution
from torch import nn

import deconvviz
from deconvviz.sources.models import LeNet5


def _time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _bench(
    name: str,
    model: nn.Module,
    prefix: nn.Module,
    target: nn.Module,
    layer: str,
    x: torch.Tensor,
    repeats: int,
) -> dict[str, float]:
    model.eval()
    device = x.device
    with torch.no_grad():
        channels = prefix(x).shape[1]
    dn = deconvviz.attach(model)

    def ours() -> torch.Tensor:
        return dn.project(x, layer, list(range(channels)))

    def captum_loop() -> None:
        deconv = NeuronDeconvolution(model, target)
        xi = x.clone().requires_grad_(True)
        for c in range(channels):
            deconv.attribute(
                xi, neuron_selector=lambda out, c=c: out[:, c].flatten(1).max(1).values
            )

    def plain() -> torch.Tensor:
        n = x.shape[0]
        xr = x.repeat_interleave(channels, 0).requires_grad_(True)
        out = prefix(xr)
        flat = out.flatten(2)
        chan = torch.arange(channels, device=device).repeat(n)
        rows = torch.arange(n * channels, device=device)
        best = flat[rows, chan].argmax(1)
        seed = torch.zeros_like(flat)
        seed[rows, chan, best] = flat[rows, chan, best].detach()
        (g,) = torch.autograd.grad(out, xr, seed.view_as(out))
        return g

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_ours = _time(ours, repeats, device)
        t_plain = _time(plain, repeats, device)
        t_captum = _time(captum_loop, max(1, repeats // 2), device)
    dn.detach()
    print(
        f"{name:<28} {channels:>4} ch x {x.shape[0]} img | deconvviz {t_ours * 1e3:8.1f} ms | "
        f"captum loop {t_captum * 1e3:9.1f} ms ({t_captum / t_ours:5.1f}x slower) | "
        f"plain backward {t_plain * 1e3:8.1f} ms (ours/plain = {t_ours / t_plain:4.2f})"
    )
    return {"ours": t_ours, "captum": t_captum, "plain": t_plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"median of {args.repeats}"
    )

    lenet = LeNet5(in_channels=3, image_size=32).to(device)
    x = torch.rand(args.images, 3, 32, 32, device=device)
    prefix = nn.Sequential(lenet.conv1, lenet.relu1, lenet.pool1, lenet.conv2)
    r1 = _bench("LeNet5 conv2 (3x32x32)", lenet, prefix, lenet.conv2, "conv2", x, args.repeats)

    alex = torchvision.models.alexnet(weights=None).to(device)
    xa = torch.rand(args.images, 3, 224, 224, device=device)
    r2 = _bench(
        "AlexNet features.3 (224)",
        alex,
        alex.features[:4],
        alex.features[3],
        "features.3",
        xa,
        args.repeats,
    )

    ok = True
    for name, r in (("LeNet5", r1), ("AlexNet", r2)):
        speedup, vs_plain = r["captum"] / r["ours"], r["ours"] / r["plain"]
        verdict = "meets" if speedup >= 10 and vs_plain <= 1.5 else "MISSES"
        ok &= verdict == "meets"
        print(
            f"{name}: {speedup:.1f}x faster than the captum loop (goal >= 10x), "
            f"{vs_plain:.2f}x the plain backward (goal <= 1.5x): {verdict} the goals"
        )
    print("all goals met" if ok else "some goals missed")


if __name__ == "__main__":
    main()
