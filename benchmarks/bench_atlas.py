"""Benchmark: the atlas scan and its projections (issue 12), in one run (run by hand).

    python benchmarks/bench_atlas.py [--images 500] [--k 8] [--repeats 3] [--threads 1]

A CIFAR-10 ResNet20 (random weights: speed does not depend on them), all 19 ``Conv2d`` layers,
top-``k`` per channel, over the first ``--images`` CIFAR-10 test images (``../shared/data``, or
random images when that is absent). Each method runs in its own child process (so that its peak
memory is its own), median of ``--repeats``:

* ``floor``: one plain forward over the data, every layer's per-channel max recorded by hooks;
* ``deconvviz scan``: :func:`deconvviz.scan` (exact top-k with positions, boxes, ties);
* ``zennit-crp``: ``FeatureVisualization.run`` over the same layers (``pip install
  'deconvviz[bench]'``; skipped with a message when missing). It also computes relevances.

Then projections, deconvviz against captum's ``NeuronDeconvolution`` called once per seed (the
captum loop is timed on ``--captum-seeds`` seeds and scaled to all of them):

* all top-``k`` seeds of a shallow layer (receptive-field crops);
* a deep layer whose receptive field covers the whole image: every channel x 4 images (each
  image's forward shared by its seeds), as ``Deconvnet.project`` and ``project_seeds``.

Goals: scan within 1.2x of the floor (so >= 4x faster than zennit-crp); projections >= 10x faster
than the captum loop on the shallow layer, >= 2x on the deep one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- ResNet20 (He et al.)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin if stride != 1 or cin != cout else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.pad:  # option A: subsample and zero-pad the channels
            short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
        return F.relu(out + short)


class ResNet20(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers = []
        cin = 16
        for i, cout in enumerate((16, 32, 64)):
            blocks = []
            for j in range(3):
                blocks.append(_Block(cin, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = ResNet20()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _data(n: int) -> TensorDataset:
    path = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10.npz"
    if path.exists():
        import numpy as np

        with np.load(path) as z:
            x = torch.from_numpy(z["x_test"][:n]).permute(0, 3, 1, 2).float() / 255
            y = torch.from_numpy(z["y_test"][:n].astype("int64"))
    else:
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(n, 3, 32, 32, generator=g), torch.zeros(n, dtype=torch.long)
    mean = torch.tensor([0.491, 0.482, 0.447]).view(1, 3, 1, 1)
    std = torch.tensor([0.247, 0.243, 0.262]).view(1, 3, 1, 1)
    return TensorDataset((x - mean) / std, y)


def _convs(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _time(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------------- the methods (children)


def _floor(model: nn.Module, data: TensorDataset, args: Any) -> Callable[[], object]:
    names = _convs(model)
    modules = dict(model.named_modules())

    def run() -> object:
        maxima: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        handles = [
            modules[n].register_forward_hook(
                lambda m, a, out, n=n: maxima[n].append(out.flatten(2).amax(2))
            )
            for n in names
        ]
        try:
            with torch.no_grad():
                for xb, _ in DataLoader(data, batch_size=args.batch_size):
                    model(xb)
        finally:
            for h in handles:
                h.remove()
        return maxima

    return run


def _scan(model: nn.Module, data: TensorDataset, args: Any) -> Callable[[], object]:
    import deconvviz

    return lambda: deconvviz.scan(
        model, data, "conv", k=args.k, batch_size=args.batch_size, progress=False
    )


def _crp(model: nn.Module, data: TensorDataset, args: Any) -> Callable[[], object]:
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.visualization import FeatureVisualization
    from zennit.composites import EpsilonPlusFlat

    names = _convs(model)

    def run() -> object:
        with tempfile.TemporaryDirectory() as tmp:
            attribution = CondAttribution(model, no_param_grad=True)
            fv = FeatureVisualization(
                attribution,
                data,
                {n: ChannelConcept() for n in names},
                path=tmp,
                max_target="max",
            )
            fv.RelMax.SAMPLE_SIZE = args.k  # keep top-k, as the others do
            fv.ActMax.SAMPLE_SIZE = args.k
            with open(os.devnull, "w") as null:
                old = sys.stdout
                sys.stdout = null
                try:
                    fv.run(EpsilonPlusFlat(), 0, len(data), args.batch_size, 10**6)
                finally:
                    sys.stdout = old
        return None

    return run


def child(method: str, args: Any) -> None:
    torch.set_num_threads(args.threads)
    model, data = _model(), _data(args.images)
    make = {"floor": _floor, "scan": _scan, "crp": _crp}[method]
    fn = make(model, data, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = _rss_mb()
        t = _time(fn, args.repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"time": t, "peak_mb": peak, "base_mb": base}))


def _run_child(method: str, args: Any) -> dict[str, float] | None:
    cmd = [sys.executable, __file__, "--child", method]
    for key in ("images", "k", "repeats", "threads", "batch_size"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "cli")]))
    env["OMP_NUM_THREADS"] = str(args.threads)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        print(f"  {method} failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- projections


def _projections(args: Any) -> list[tuple[str, float, float]]:
    import deconvviz
    from deconvviz.analyses.scan import project_layer, scan

    try:
        from captum.attr import NeuronDeconvolution
    except ImportError:
        print("captum is not installed: projections not compared (pip install captum)")
        return []
    torch.set_num_threads(args.threads)
    model, data = _model(), _data(args.images)
    x_all = data.tensors[0]
    modules = dict(model.named_modules())
    rows = []
    warnings.simplefilter("ignore")

    # 1. all top-k seeds of a shallow layer, from the scan
    layer = args.shallow_layer
    top = scan(model, data, [layer], k=args.k, batch_size=args.batch_size, progress=False)[layer]
    t_ours = _time(lambda: project_layer(model, data, top, progress=False), args.repeats)
    seeds = [(c, j) for c in range(top.channels) for j in range(top.k)]
    deconv = NeuronDeconvolution(model, modules[layer])
    some = seeds[: args.captum_seeds]

    def captum_seeds() -> None:
        for c, j in some:
            i = int(top.indices[c, j])
            r, q = top.positions[c, j].tolist()
            deconv.attribute(x_all[i : i + 1].clone().requires_grad_(True), (c, r, q))

    t_captum = _time(captum_seeds, args.repeats) * len(seeds) / len(some)
    rows.append((f"{layer}: all {len(seeds)} top-{args.k} seeds (crops)", t_ours, t_captum))

    # 2. a deep layer (receptive field = the whole image): every channel x 4 images
    layer = args.deep_layer
    x = x_all[:4]
    with torch.no_grad():
        channels = deconvviz.layer_output(model, x[:1], layer).shape[1]
    dn = deconvviz.attach(model, warn=False)
    t_proj = _time(lambda: dn.project(x, layer, list(range(channels))), args.repeats)
    img = torch.arange(4).repeat_interleave(channels)
    chan = torch.arange(channels).repeat(4)
    t_seeds = _time(lambda: dn.project_seeds(x, layer, img, chan), args.repeats)
    deconv = NeuronDeconvolution(model, modules[layer])
    some_c = list(range(min(channels, max(1, args.captum_seeds // 4))))

    def captum_channels() -> None:
        xi = x.clone().requires_grad_(True)
        for c in some_c:
            deconv.attribute(
                xi, neuron_selector=lambda out, c=c: out[:, c].flatten(1).max(1).values
            )

    t_captum = _time(captum_channels, args.repeats) * channels / len(some_c)
    what = f"{layer}: {channels} ch x 4 img (whole image)"
    rows.append((what + ", project", t_proj, t_captum))
    rows.append((what + ", project_seeds", t_seeds, t_captum))
    return rows


def _resnet50(args: Any) -> None:
    """The deep case of issue 12: the receptive field covers the whole image, so crops cannot
    help; each image's forward is shared by its 64 seeds. captum's loop is timed on 8 channels
    and scaled to 64 (its cost is linear in the channels)."""
    import torchvision
    from captum.attr import NeuronDeconvolution

    import deconvviz

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()  # random weights: speed does not depend on them
    x = torch.rand(4, 3, 224, 224)
    layer = "layer3.5"
    dn = deconvviz.attach(model, warn=False)
    dn.project(x[:1], layer, [0])  # warm-up
    t_ours = _time(lambda: dn.project(x, layer, list(range(64))), args.repeats, warm_up=False)
    deconv = NeuronDeconvolution(model, dict(model.named_modules())[layer])
    some = list(range(8))

    def loop() -> None:
        xi = x.clone().requires_grad_(True)
        for c in some:
            deconv.attribute(
                xi, neuron_selector=lambda out, c=c: out[:, c].flatten(1).max(1).values
            )

    t_captum = _time(loop, args.repeats) * 64 / len(some)
    print(
        f"ResNet50 224 px {layer}, 64 channels x 4 images (whole-image receptive field): "
        f"deconvviz {t_ours:.1f} s, captum loop {t_captum:.1f} s, speed-up "
        f"{t_captum / t_ours:.2f}x (goal >= 2x: {'meets' if t_captum >= 2 * t_ours else 'MISSES'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shallow-layer", default="layer1.0.conv1")
    parser.add_argument("--deep-layer", default="layer3.2.conv2")
    parser.add_argument("--captum-seeds", type=int, default=32)
    parser.add_argument("--projections-only", action="store_true", help="skip the scan table")
    parser.add_argument(
        "--resnet50",
        action="store_true",
        help="only the issue's deep case: ResNet50 at 224 px, layer3.5, 64 channels x 4 images",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, load "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}; ResNet20, 19 Conv2d layers, top-{args.k} "
        f"over {args.images} images, batch {args.batch_size}, median of {args.repeats}"
    )
    if args.resnet50:
        _resnet50(args)
        return
    if args.projections_only:
        _print_projections(args)
        return
    try:
        import crp  # noqa: F401
    except ImportError:
        have_crp = False
        print("zennit-crp is not installed (pip install 'deconvviz[bench]'): its row is skipped")
    else:
        have_crp = True
    results = {}
    for method in ("floor", "scan", *(("crp",) if have_crp else ())):
        results[method] = _run_child(method, args)
    floor = results["floor"]
    print(f"\n{'method':<34}{'time':>9}{'x floor':>9}{'peak RSS':>11}{'over base':>11}")
    names = {
        "floor": "floor (forward + hooks, max only)",
        "scan": "deconvviz scan",
        "crp": "zennit-crp FeatureVisualization",
    }
    for method, r in results.items():
        if r is None:
            continue
        ratio = r["time"] / floor["time"] if floor else float("nan")
        print(
            f"{names[method]:<34}{r['time']:8.2f}s{ratio:8.2f}x{r['peak_mb']:9.0f}MB"
            f"{r['peak_mb'] - r['base_mb']:9.0f}MB"
        )
    if floor and results.get("scan"):
        ratio = results["scan"]["time"] / floor["time"]
        print(f"scan / floor = {ratio:.2f} (goal <= 1.2): {'meets' if ratio <= 1.2 else 'MISSES'}")
    if results.get("crp") and results.get("scan"):
        speed = results["crp"]["time"] / results["scan"]["time"]
        print(
            f"zennit-crp / scan = {speed:.1f}x (goal >= 4x): {'meets' if speed >= 4 else 'MISSES'}"
        )

    _print_projections(args)


def _print_projections(args: Any) -> None:
    rows = _projections(args)
    if rows:
        print(f"\n{'projections':<58}{'deconvviz':>10}{'captum loop':>13}{'speed-up':>10}")
        for i, (what, ours, theirs) in enumerate(rows):
            goal = 10 if i == 0 else 2
            verdict = "meets" if theirs / ours >= goal else "MISSES"
            print(
                f"{what:<58}{ours:9.2f}s{theirs:12.2f}s{theirs / ours:9.1f}x  "
                f"(goal >= {goal}x: {verdict})"
            )
    load = os.getloadavg()
    print(f"\nload at the end: {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")


if __name__ == "__main__":
    main()
