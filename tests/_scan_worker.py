"""One rank of the 2-process gloo scan test (run by tests/test_scan.py with torchrun's env vars)."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

sys.path[:0] = ["src", "tests"]

from deconvviz.analyses.scan import scan  # noqa: E402
from scan_models import scan_data, scan_model  # noqa: E402


def main(out: str) -> None:
    dist.init_process_group("gloo")
    try:
        model, data = scan_model(), scan_data()
        res = scan(model, data, "conv", k=5, batch_size=6, progress=False)
        torch.save(
            {name: (t.values, t.indices, t.positions) for name, t in res.tops.items()}
            | {"_images": res.images},
            f"{out}.rank{dist.get_rank()}",
        )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
