"""Benchmark: the atlas of a 224 px torchvision ResNet18, against plain-PyTorch floors (issue 21).

    python benchmarks/bench_atlas_projections.py [--images 64] [--k 9] [--repeats 3]
        [--layers layer1.0.conv1,layer2.0.conv1] [--deep-layer layer4.1.conv2]
        [--deep-units 16] [--threads 1] [--precision fp32] [--device cpu]

ResNet18 with random weights (speed does not depend on them; BatchNorm statistics randomised so
that units are not all alike), ``--images`` random 224 x 224 images. In one run it reports:

* **scan / forward**: :func:`deconvviz.scan` over every chosen layer against one plain forward
  pass over the same images, stopped after the deepest of them (``torch.no_grad``);
* **projections / floor**, per layer: :func:`deconvviz.analyses.scan.project_layer` (every top-``k``
  activation of every unit, patches and projections assembled as the atlas needs them) against
  the floor: the same seeds, on the same receptive-field crops the engine chose, as **one plain
  batched** ``torch.autograd.grad`` per group of equally sized crops (forward to the layer with
  ``requires_grad`` on the input, a one-hot seed per crop, no deconvnet rule, no tracer, no
  bookkeeping), chunked as the engine chunks them. Where the receptive field covers the whole
  image (``--deep-layer``), the floor is one plain forward per image and one
  ``autograd.grad`` per "slot" of seeds sharing it -- the whole-image batching, in plain
  PyTorch. The deep layer projects its first ``--deep-units`` units only (every whole-image seed
  is a whole backward pass: 512 units x k seeds would take most of an hour on 2 cores);
* **whole atlas**: images/s for scan + projections + :func:`deconvviz.export.atlas.write_atlas` of
those
  layers (the deep layer's first ``--deep-units`` units);
* **peak RSS** of the process (``ru_maxrss``).

Times are CPU seconds of this process (``time.process_time``) with ``--threads`` torch threads,
median of ``--repeats``: on a shared machine wall time follows the other jobs' load, CPU time far
less. Wall times are printed beside them. Goal: projections within 1.5x of the floor.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset


class _Stop(Exception):
    pass


def _model(device: torch.device) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval().to(device)


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, Any]:
    """Median CPU and wall seconds of ``fn`` over ``repeats`` runs (after one warm-up)."""
    out = fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall), out


def _forward_to(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    """A plain forward pass stopped after ``layer`` (a forward hook raises)."""
    got: list[Tensor] = []

    def hook(module: nn.Module, args: Any, out: Tensor) -> None:
        got.append(out)
        raise _Stop

    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0]


def _floor_forward(model: nn.Module, data: TensorDataset, layer: str, batch: int) -> None:
    x = data.tensors[0]
    with torch.no_grad():
        for i in range(0, len(x), batch):
            _forward_to(model, layer, x[i : i + batch])


def _plan(model: nn.Module, top: Any, size: tuple[int, int]) -> tuple[list[Any], bool]:
    """The seeds of ``top`` grouped as the engine groups them: ``(boxes, seeds)`` per crop
    size; and whether the layer runs on whole images."""
    import deconvviz
    from deconvviz.engine.crops import crop_boxes

    dn = deconvviz.attach(model, warn=False)
    rf = dn.receptive_field(top.layer, (1, 3, *size))
    seeds = [(c, j) for c in range(top.channels) for j in range(top.k) if top.indices[c, j] >= 0]
    rows = torch.tensor([int(top.positions[c, j, 0]) for c, j in seeds])
    cols = torch.tensor([int(top.positions[c, j, 1]) for c, j in seeds])
    boxes = crop_boxes(rf, rows, cols, size)
    whole = all(b == (0, 0, *size) for b in boxes)
    jump = rf.jump if rf is not None else (1, 1)
    groups: dict[tuple[int, int], list[tuple[int, int, int, int, int, Any]]] = {}
    for (c, j), r, q, box in zip(seeds, rows.tolist(), cols.tolist(), boxes, strict=True):
        i = int(top.indices[c, j])
        key = (box[2] - box[0], box[3] - box[1])
        groups.setdefault(key, []).append(
            (i, c, r - box[0] // jump[0], q - box[1] // jump[1], 0, box)
        )
    return list(groups.items()), whole


def _floor_crops(model: nn.Module, x: Tensor, layer: str, groups: list[Any], chunk: int) -> None:
    """One plain batched ``autograd.grad`` per chunk of equally sized crops."""
    for _, members in groups:
        for s in range(0, len(members), chunk):
            part = members[s : s + chunk]
            crops = torch.stack([x[i, :, b[0] : b[2], b[1] : b[3]] for i, _, _, _, _, b in part])
            crops.requires_grad_(True)
            out = _forward_to(model, layer, crops)
            seed = torch.zeros_like(out)
            n = torch.arange(len(part))
            ch = torch.tensor([p[1] for p in part])
            r = torch.tensor([p[2] for p in part])
            q = torch.tensor([p[3] for p in part])
            seed[n, ch, r, q] = out[n, ch, r, q].detach()
            torch.autograd.grad(out, crops, seed)


def _floor_whole(model: nn.Module, x: Tensor, layer: str, top: Any, chunk: int) -> None:
    """One plain forward per image, one ``autograd.grad`` per slot of seeds sharing it."""
    by_img: dict[int, list[tuple[int, int, int]]] = {}
    for c in range(top.channels):
        for j in range(top.k):
            i = int(top.indices[c, j])
            if i >= 0:
                r, q = top.positions[c, j].tolist()
                by_img.setdefault(i, []).append((c, r, q))
    imgs = sorted(by_img)
    for s in range(0, len(imgs), chunk):
        part = imgs[s : s + chunk]
        xin = x[part].clone().requires_grad_(True)
        out = _forward_to(model, layer, xin)
        slots = max(len(by_img[i]) for i in part)
        for slot in range(slots):
            ns = [n for n, i in enumerate(part) if len(by_img[i]) > slot]
            seed = torch.zeros_like(out)
            for n in ns:
                c, r, q = by_img[part[n]][slot]
                seed[n, c, r, q] = out[n, c, r, q].detach()
            torch.autograd.grad(out, xin, seed, retain_graph=slot < slots - 1)


def _subset(top: Any, units: int) -> Any:
    """``top`` restricted to its first ``units`` channels."""
    from dataclasses import replace

    return replace(
        top,
        values=top.values[:units],
        indices=top.indices[:units],
        positions=top.positions[:units],
        boxes=top.boxes[:units],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layers", default="layer1.0.conv1,layer1.1.conv2,layer2.0.conv1")
    parser.add_argument("--deep-layer", default="layer4.1.conv2")
    parser.add_argument("--deep-units", type=int, default=16)
    parser.add_argument("--floor-chunk", type=int, default=64, help="seeds per plain backward")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    import deconvviz
    from deconvviz.analyses.scan import Scan, project_layer
    from deconvviz.export.atlas import write_atlas

    device = torch.device(args.device)
    model = _model(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, 224, 224, generator=g)
    data = TensorDataset(x, torch.zeros(args.images, dtype=torch.long))
    xd = x.to(device)
    layers = [name for name in args.layers.split(",") if name]
    every = [*layers, args.deep_layer] if args.deep_layer else layers
    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, device "
        f"{device}, precision {args.precision}, load {load[0]:.1f}; torchvision ResNet18 "
        f"(random weights) at 224 px, top-{args.k} over {args.images} images, median of "
        f"{args.repeats} (CPU s of this process; wall s in brackets)"
    )

    # only given when asked for, so that the script also runs on versions without the option
    prec: dict[str, Any] = {} if args.precision == "fp32" else {"precision": args.precision}

    def run_scan() -> Any:
        return deconvviz.scan(
            model,
            data,
            every,
            args.k,
            batch_size=args.batch_size,
            progress=False,
            **prec,
        )

    deepest = every[-1]
    f_cpu, f_wall, _ = _timed(
        lambda: _floor_forward(model, TensorDataset(xd), deepest, args.batch_size), args.repeats
    )
    s_cpu, s_wall, result = _timed(run_scan, args.repeats)
    print(
        f"\nscan of {len(every)} layers {s_cpu:.2f} s ({s_wall:.2f}) / forward to {deepest} "
        f"{f_cpu:.2f} s ({f_wall:.2f}) = {s_cpu / f_cpu:.2f}x"
    )

    print(f"\n{'layer':<18}{'seeds':>7}{'crop':>9}{'project':>16}{'floor':>16}{'ratio':>8}")
    tops: dict[str, Any] = {}
    total_proj = 0.0
    worst = 0.0
    for layer in every:
        top = result[layer]
        if layer == args.deep_layer:
            top = _subset(top, args.deep_units)
        tops[layer] = top
        groups, whole = _plan(model, top, tuple(x.shape[-2:]))  # type: ignore[arg-type]
        seeds = sum(len(m) for _, m in groups)
        p_cpu, p_wall, _ = _timed(
            lambda top=top: project_layer(model, data, top, progress=False, **prec),
            args.repeats,
        )
        if whole:
            fl = lambda top=top, layer=layer: _floor_whole(model, xd, layer, top, 8)  # noqa: E731
            crop = "whole"
        else:
            fl = lambda groups=groups, layer=layer: _floor_crops(  # noqa: E731
                model, xd, layer, groups, args.floor_chunk
            )
            crop = "x".join(str(v) for v in groups[0][0]) + ("+" if len(groups) > 1 else "")
        fl_cpu, fl_wall, _ = _timed(fl, args.repeats)
        total_proj += p_cpu
        worst = max(worst, p_cpu / fl_cpu)
        print(
            f"{layer:<18}{seeds:>7}{crop:>9}{p_cpu:>9.2f} ({p_wall:5.1f}){fl_cpu:>9.2f} "
            f"({fl_wall:5.1f}){p_cpu / fl_cpu:>7.2f}x"
        )
    verdict = "meets" if worst <= 1.5 else "MISSES"
    print(f"worst projections / floor = {worst:.2f}x (goal <= 1.5x: {verdict})")

    scan_view = Scan(tops, result.images, result.k)

    def atlas() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            res = run_scan()
            projs = (
                project_layer(
                    model,
                    data,
                    _subset(res[layer], args.deep_units)
                    if layer == args.deep_layer
                    else res[layer],
                    progress=False,
                    **prec,
                )
                for layer in every
            )
            write_atlas(tmp, scan_view, projs)

    c = time.process_time()
    w = time.perf_counter()
    atlas()
    a_cpu, a_wall = time.process_time() - c, time.perf_counter() - w
    units = sum(t.channels for t in tops.values())
    print(
        f"\nwhole atlas ({len(every)} layers, {units} units): {a_cpu:.1f} CPU s ({a_wall:.1f} wall)"
        f" = {args.images / a_cpu:.2f} images/s per CPU s ({args.images / a_wall:.2f} wall)"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MB")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB")
    if not math.isfinite(worst):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
