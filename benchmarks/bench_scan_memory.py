"""Benchmark: the scan's peak memory does not grow with the dataset (issue 21).

    python benchmarks/bench_scan_memory.py [--sizes 1000,8000] [--side 32] [--threads 1]

Each size runs in its own child process: a torchvision ResNet18 (random weights) scans every
``Conv2d`` for the top-9 over ``N`` synthetic ``side x side`` images, made on the fly by a
``Dataset`` (so the data itself holds no memory), batch 100. The child reports its peak RSS
(``ru_maxrss``) and its RSS before the scan. Goal: peak RSS of 1,000 and of 8,000 images differ
by less than 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parents[1]


class Synthetic(Dataset):
    """``n`` random images, each made from its index when asked for."""

    def __init__(self, n: int, side: int) -> None:
        self.n, self.side = n, side

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, self.side, self.side, generator=g), 0


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(n: int, side: int, threads: int) -> None:
    import torchvision

    import deconvviz

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    data = Synthetic(n, side)
    base = _rss_mb()
    start = time.perf_counter()
    res = deconvviz.scan(model, data, "conv", k=9, batch_size=100, progress=False)
    took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    units = sum(res[layer].channels for layer in res.layers)
    print(json.dumps({"n": n, "peak_mb": peak, "base_mb": base, "time": took, "units": units}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,8000")
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.side, args.threads)
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "cli")]))
    env["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    for n in (int(v) for v in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--child", str(n), "--side", str(args.side)]
        cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"torch {torch.__version__}; ResNet18 (random weights), every Conv2d, top-9, "
        f"{args.side}x{args.side} synthetic images, batch 100, {args.threads} thread(s)"
    )
    print(f"{'images':>8}{'scan time':>11}{'RSS before':>12}{'peak RSS':>10}")
    for r in rows:
        print(f"{r['n']:>8}{r['time']:>10.1f}s{r['base_mb']:>10.0f}MB{r['peak_mb']:>8.0f}MB")
    lo, hi = rows[0]["peak_mb"], rows[-1]["peak_mb"]
    growth = hi / lo - 1
    verdict = "meets" if abs(growth) < 0.10 else "MISSES"
    print(
        f"peak RSS {rows[-1]['n']} vs {rows[0]['n']} images: {growth:+.1%} (goal < 10%: {verdict})"
    )


if __name__ == "__main__":
    main()
