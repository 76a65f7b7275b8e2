"""Train a GRU (or RNN / LSTM) on MNIST read row by row, as the origin report did.

    python examples/train_rnn.py ../shared/data runs/gru256 gru 256

The same from the command line:

    deconvviz train rnn --cell gru --hidden 256 --data-dir ../shared/data --out runs/gru256
"""

from __future__ import annotations

import sys

from deconvviz.sources.data import load_dataset
from deconvviz.training.train import TrainConfig, train


def main(
    data_dir: str = "../shared/data",
    out_dir: str = "runs/gru256",
    cell: str = "gru",
    hidden: str = "256",
) -> None:
    config = TrainConfig(
        model={"model": "rnn", "cell": cell, "hidden": int(hidden), "init": "course"},
        dataset="mnist",
        optimizer="adam",
        lr=1e-3,
        batch_size=128,
        iterations=390,  # about 50,000 samples
        eval_every=100,
    )
    train_set = load_dataset(data_dir, "mnist", "train")
    test_set = load_dataset(data_dir, "mnist", "test")

    def report(iteration: int, model) -> None:  # called at every evaluation point
        print(f"  iteration {iteration}: {type(model).__name__} in eval mode: {not model.training}")

    result = train(config, train_set, test_set, out_dir=out_dir, callbacks=[report])
    print(
        f"{cell}-{hidden}: test accuracy {result.final_test_acc:.3f} "
        f"({result.status}, {result.wall_seconds:.0f} s); run saved in {out_dir}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:5])
