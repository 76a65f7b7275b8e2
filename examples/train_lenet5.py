"""Train the course's LeNet5 on the course's CIFAR-10 variant, as the origin report did.

    python examples/train_lenet5.py ../shared/data runs/lenet5

The same from the command line:

    deconvviz train lenet5 --data-dir ../shared/data --dataset cifar10-course \
        --per-class 500 --out runs/lenet5
"""

from __future__ import annotations

import sys

from deconvviz.sources.checkpoint import load_run
from deconvviz.training.train import TrainConfig, train_from_data


def main(data_dir: str = "../shared/data", out_dir: str = "runs/lenet5") -> None:
    config = TrainConfig(
        model={"model": "lenet5", "in_channels": 1, "image_size": 28, "init": "course"},
        dataset="cifar10-course",
        per_class=500,  # the first 500 training images of every class
        optimizer="adam",
        lr=1e-3,
        batch_size=50,
        iterations=2000,
        eval_every=100,  # accuracy on all 1000 test images every 100 iterations
    )
    result = train_from_data(config, data_dir, out_dir)
    print(
        f"{result.status}: test accuracy {result.final_test_acc:.3f} "
        f"in {result.wall_seconds:.0f} s; run saved in {out_dir}"
    )
    run = load_run(out_dir)  # what the visualisation commands load
    print(type(run.model).__name__, "from", run.path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
