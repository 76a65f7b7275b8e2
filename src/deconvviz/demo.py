"""The one-command demo: train LeNet5 briefly on CIFAR-10 and write the whole report.

Offline by default: it trains on a small **real** CIFAR-10 sample shipped inside the package
(the first 500 official test images, exact pixels; :func:`load_sample`), 400 for training and
100 for testing. With ``data_dir`` it uses the full CIFAR-10 found there instead.

Example::

    from deconvviz.demo import run_demo

    result = run_demo("out/demo")          # about a minute or two on a laptop CPU
    result.report.index                    # out/demo/index.html
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deconvviz.errors import DataError, InputError, unknown_name

__all__ = ["SAMPLE_SPLIT", "DemoResult", "load_sample", "run_demo", "sample_path"]

SAMPLE_FILE = "cifar10_sample.npz"
SAMPLE_SPLIT = 400
"""Sample images ``[0, SAMPLE_SPLIT)`` are the demo's training split, the rest its test split."""


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` did.

    Attributes:
        out_dir: the demo folder (``index.html``, ``manifest.json``, ``figures/``, ``run/``).
        run_dir: the training run directory (``checkpoint.pt``, ``metrics.json``...).
        report: the written :class:`deconvviz.report.Report`.
        final_test_acc: test accuracy after training.
        data: ``"sample"`` (the shipped sample) or the data folder used.
    """

    out_dir: Path
    run_dir: Path
    report: Any
    final_test_acc: float
    data: str


def sample_path() -> Path:
    """Path of the CIFAR-10 sample shipped inside the package."""
    return Path(str(resources.files("deconvviz").joinpath("assets", SAMPLE_FILE)))


def load_sample(split: str | None = None) -> Any:
    """The small real CIFAR-10 sample shipped with deconvviz, as a dataset.

    It holds the first 500 official CIFAR-10 test images (exact pixels, official order) with
    their labels; ``scripts/make_cifar_sample.py`` made it.

    Args:
        split: ``None`` (all 500), ``"train"`` (the first 400) or ``"test"`` (the last 100).

    Returns:
        A :class:`deconvviz.data.ImageDataset` of ``(float32 [3, 32, 32] in [0, 1], label)``
        items with ``classes`` = the CIFAR-10 class names.

    Example:
        >>> ds = load_sample("test")
        >>> len(ds), ds.image_shape, ds.classes[ds[0][1]]
        (100, (3, 32, 32), 'ship')
    """
    from deconvviz.data import ImageDataset

    splits = ("train", "test")
    if split is not None and split not in splits:
        raise InputError(unknown_name("split", str(split), splits))
    path = sample_path()
    if not path.is_file():
        raise DataError(
            f"the CIFAR-10 sample {path} is missing from this installation; reinstall "
            "deconvviz, or run scripts/make_cifar_sample.py in a source checkout"
        )
    with np.load(path, allow_pickle=False) as d:
        x, y = d["x"], d["y"]
        names = [str(n) for n in d["label_names"]]
    sl = {None: slice(None), "train": slice(0, SAMPLE_SPLIT), "test": slice(SAMPLE_SPLIT, None)}
    part = sl[split]
    data = torch.from_numpy(np.ascontiguousarray(x[part].transpose(0, 3, 1, 2)))
    targets = torch.from_numpy(y[part].astype(np.int64))
    return ImageDataset(
        data, targets, names, name="cifar10-sample", split=split or "all", source=path
    )


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    iterations: int = 300,
    batch_size: int = 50,
    lr: float = 1e-3,
    seed: int = 0,
    images: int = 4,
    k: int = 9,
    max_images: int = 1000,
    device: str = "cpu",
    progress: bool = True,
) -> DemoResult:
    """Train LeNet5 (3x32x32 CIFAR-10 input) briefly and write the whole report.

    Args:
        out_dir: where everything goes: ``run/`` (the trained model), ``index.html``,
            ``manifest.json`` and ``figures/``.
        data_dir: a folder holding CIFAR-10 (``cifar10.npz`` or ``cifar-10-batches-py``); train
            on its full train split, test on the first 100 test images per class. Default:
            the shipped sample (train on 400 images, test on 100).
        iterations: training iterations (Adam).
        batch_size: training batch size.
        lr: Adam's learning rate.
        seed: seeds the initialisation and the batch order.
        images: images that get occlusion maps and the method comparison.
        k: top activations per feature map in the reconstructions.
        max_images: images scanned for statistics and reconstructions.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        progress: show progress bars.

    Returns:
        A :class:`DemoResult`.
    """
    from deconvviz.report import write_report
    from deconvviz.train import TrainConfig, train

    out = Path(out_dir)
    if data_dir is None:
        train_set, test_set = load_sample("train"), load_sample("test")
        report_set = load_sample()
        dataset_name, data = "cifar10-sample", "sample"
    else:
        from deconvviz.data import load_dataset

        train_set = load_dataset(data_dir, "cifar10", "train", progress=progress)
        test_set = load_dataset(data_dir, "cifar10", "test", per_class=100, progress=progress)
        report_set = test_set
        dataset_name, data = "cifar10", str(data_dir)
    config = TrainConfig(
        model={"model": "lenet5", "in_channels": 3, "image_size": 32, "init": "pytorch"},
        dataset=dataset_name,
        optimizer="adam",
        lr=lr,
        batch_size=batch_size,
        iterations=iterations,
        eval_every=max(1, iterations // 5),
        seed=seed,
        device=device,
    )
    run_dir = out / "run"
    result = train(config, train_set, test_set, out_dir=run_dir, progress=progress, overwrite=True)
    metrics = result.metrics()
    metrics["train_size"], metrics["test_size"] = len(train_set), len(test_set)
    report = write_report(
        out,
        result.model,
        report_set,
        config=config.to_dict(),
        metrics=metrics,
        run_path=run_dir / "checkpoint.pt",
        images=images,
        k=k,
        max_images=max_images,
        title=f"deconvviz demo: LeNet5 on CIFAR-10 ({data})",
        progress=progress,
    )
    return DemoResult(out, run_dir, report, float(result.final_test_acc), data)
