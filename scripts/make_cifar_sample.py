"""Make ``src/deconvviz/assets/cifar10_sample.npz``, the real CIFAR-10 sample we ship.

It takes the first 500 official CIFAR-10 test images (``x_test[0:500]`` of the shared
``cifar10.npz``: the part whose pixels are exact, in the official order) with their labels and
label names. Run it from the repository root::

    python scripts/make_cifar_sample.py [--source ../shared/data/cifar10/cifar10.npz] [--count 500]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10.npz"
DEST = ROOT / "src" / "deconvviz" / "assets" / "cifar10_sample.npz"
EXACT_TEST_IMAGES = 1000  # x_test[0:1000] hold the exact official test images 0..999


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--dest", type=Path, default=DEST)
    args = parser.parse_args(argv)
    if not 1 <= args.count <= EXACT_TEST_IMAGES:
        parser.error(f"--count must be in 1..{EXACT_TEST_IMAGES} (only those pixels are exact)")
    with np.load(args.source, allow_pickle=False) as d:
        exact = d["test_exact"][: args.count]
        official = d["test_official_order"][: args.count]
        if not (exact.all() and official.all()):
            sys.exit("the source's first test images are not the exact official ones; wrong file?")
        x = np.ascontiguousarray(d["x_test"][: args.count], dtype=np.uint8)
        y = np.ascontiguousarray(d["y_test"][: args.count], dtype=np.uint8)
        names = np.asarray([str(n) for n in d["label_names"]])
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        x=x,
        y=y,
        label_names=names,
        source_indices=np.arange(args.count, dtype=np.int32),
    )
    sys.path.insert(0, str(ROOT / "src"))
    from deconvviz.base._io import write_bytes

    write_bytes(args.dest, buf.getvalue())
    print(
        f"wrote {args.dest} ({args.dest.stat().st_size / 1e6:.2f} MB): x {x.shape} uint8, "
        f"labels per class {np.bincount(y, minlength=len(names)).tolist()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
