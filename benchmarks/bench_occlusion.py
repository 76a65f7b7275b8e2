"""Occlusion speed: deconvviz vs captum's Occlusion vs the batched-forward floor.

Run by hand (not part of the tests)::

    python benchmarks/bench_occlusion.py                 # LeNet5 on 28x28, 1 and 16 images, CPU
    python benchmarks/bench_occlusion.py --device cuda --images 1 64

All four methods compute the same probability map (checked before timing) in one process
run; they take turns ``--repeats`` times and the median of each is reported, with ratios.

- ``ours``: ``deconvviz.occlusion`` (batch size from its memory budget; includes building the
  occluded images, the softmax and the top-class map).
- ``captum``: ``captum.attr.Occlusion`` at its default ``perturbations_per_eval=1``.
- ``captum64``: the same with ``perturbations_per_eval=64``.
- ``floor``: one forward pass over all occluded images, built beforehand (not timed).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
from captum.attr import Occlusion

from deconvviz.analyses.occlusion import occluder_starts
from deconvviz.analyses.occlusion import occlusion as deconvviz_occlusion
from deconvviz.sources.models import LeNet5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_times(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of each function.

    The functions take turns in every repeat, in a shuffled order, so a change in the machine's
    load during the run, or the state one leaves behind (e.g. freed memory handed back to the
    system), hits all of them alike.
    """
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            fn = fns[name]
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def all_occluded(x: torch.Tensor, size: int, stride: int, fill: float) -> torch.Tensor:
    """Every occluded image, ``[N * P, C, H, W]``, image-major (the floor's input)."""
    n, c, h, w = x.shape
    out = []
    for i in range(n):
        for y0 in occluder_starts(h, size, stride).tolist():
            for x0 in occluder_starts(w, size, stride).tolist():
                img = x[i].clone()
                img[:, y0 : y0 + size, x0 : x0 + size] = fill
                out.append(img)
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--images",
        type=int,
        nargs="+",
        default=[1, 16],
        help="batch sizes to run, one scenario each",
    )
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--channels", type=int, default=1, help="LeNet5 input channels (1 or 3)")
    ap.add_argument("--side", type=int, default=28, help="image side (28 or 32)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    for images in args.images:
        scenario(args, images)


def scenario(args: argparse.Namespace, images: int) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = LeNet5(in_channels=args.channels, image_size=args.side).to(device).eval()
    x = torch.rand(images, args.channels, args.side, args.side, device=device)
    fill = 0.5
    with torch.no_grad():
        target = model(x).argmax(1)

    def probs(inp: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(inp), dim=1)

    occ = Occlusion(probs)
    window = (args.channels, args.size, args.size)
    strides = (args.channels, args.stride, args.stride)

    def ours() -> torch.Tensor:
        return deconvviz_occlusion(
            model,
            x,
            target=target,
            size=args.size,
            stride=args.stride,
            fill=fill,
            progress=False,
        ).prob

    def captum(ppe: int) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            return occ.attribute(
                x,
                sliding_window_shapes=window,
                strides=strides,
                baselines=fill,
                target=target,
                perturbations_per_eval=ppe,
            )

        return run

    batch = all_occluded(x, args.size, args.stride, fill)

    def floor() -> torch.Tensor:
        with torch.no_grad():
            return model(batch)

    # same answers before timing
    p = ours()
    with torch.no_grad():
        ref = torch.softmax(model(batch), 1).view(images, -1, 10)
    ref = ref.gather(2, target.view(-1, 1, 1).expand(-1, ref.shape[1], 1))[..., 0]
    assert torch.allclose(p.flatten(1), ref.cpu(), atol=1e-5), "ours != floor"
    if args.size == args.stride and args.side % args.size == 0:
        a = captum(64)()[:, 0, :: args.size, :: args.size].cpu()
        with torch.no_grad():
            base = torch.softmax(model(x), 1).gather(1, target[:, None]).cpu()
        assert torch.allclose(base[:, :, None] - p, a, atol=1e-5), "ours != captum"

    t = median_times(
        {
            "ours": ours,
            "captum default (ppe=1)": captum(1),
            "captum ppe=64": captum(64),
            "batched-forward floor": floor,
        },
        args.repeats,
        device,
    )
    n_occ = batch.shape[0]
    print(
        f"LeNet5 {args.channels}x{args.side}x{args.side}, {images} images, occluder "
        f"{args.size} stride {args.stride}: {n_occ} occluded images; device {device}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    for name, sec in t.items():
        print(f"  {name:24s} {1e3 * sec:9.1f} ms   ours is {sec / t['ours']:6.2f}x faster")
    print(
        f"speed-up vs captum default: {t['captum default (ppe=1)'] / t['ours']:.2f}x (goal >= 2); "
        f"ours / floor: {t['ours'] / t['batched-forward floor']:.2f} (goal <= 1.2)"
    )


if __name__ == "__main__":
    main()
