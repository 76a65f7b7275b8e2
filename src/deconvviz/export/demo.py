"""The one-command demo: the whole report of a network that has learned, in under a minute.

By default it needs no training and no data: it loads the Zeiler & Fergus-style network shipped
with deconvviz (:func:`deconvviz.sources.pretrained.load_pretrained`, trained on the full CIFAR-10
by
``deconvviz train zfnet-cifar``) and analyses a small **real** CIFAR-10 sample shipped inside the
package (the first 500 official test images, exact pixels; :func:`load_sample`). With
``data_dir`` it analyses CIFAR-10's test split found there instead.

``train=True`` keeps the origin report's setup: LeNet5 trained from scratch for a few hundred
iterations (on 400 sample images, or the full CIFAR-10 with ``data_dir``) -- a model that has
learned little, which is what its pictures show.

Example::

    from deconvviz.export.demo import run_demo

    result = run_demo("out/demo")          # under a minute on a laptop CPU
    result.report.index                    # out/demo/index.html
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deconvviz.export.report import write_report
from deconvviz.sources.data import load_dataset

# The shipped sample is example data, read in deconvviz.sources.datasets; re-exported here, where
# the
# demo's users have always found it.
from deconvviz.sources.datasets import SAMPLE_SPLIT, load_sample, sample_path
from deconvviz.sources.pretrained import load_pretrained, pretrained_path
from deconvviz.training.train import TrainConfig, _resolve_device, train

__all__ = ["SAMPLE_SPLIT", "ZF_LAYERS", "DemoResult", "load_sample", "run_demo", "sample_path"]


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` did.

    Attributes:
        out_dir: the demo folder (``index.html``, ``manifest.json``, ``figures/``, ``run/``).
        run_dir: the training run directory (``checkpoint.pt``, ``metrics.json``...), or
            ``None`` for the shipped model.
        report: the written :class:`deconvviz.export.report.Report`.
        final_test_acc: the model's test accuracy (for the shipped model: on the full
            CIFAR-10 test set, from its model card).
        data: ``"sample"`` (the shipped sample) or the data folder used.
        model: ``"zfnet-cifar"`` (shipped) or ``"lenet5"`` (trained now).
    """

    out_dir: Path
    run_dir: Path | None
    report: Any
    final_test_acc: float
    data: str
    model: str = "zfnet-cifar"


ZF_LAYERS = ("relu1", "relu2", "relu3", "relu4", "relu5")
"""The shipped model's rectified feature maps, one per conv layer (what the paper projects)."""

DEMO_CHANNELS = 64
"""Feature maps per layer whose top-9 the demo draws (as the paper's Fig. 2 shows a subset);
``deconvviz reconstruct`` and ``deconvviz atlas`` draw every one."""


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    train: bool = False,
    iterations: int = 300,
    batch_size: int = 50,
    lr: float = 1e-3,
    seed: int = 0,
    images: int = 4,
    k: int = 9,
    max_images: int = 500,
    device: str = "cpu",
    progress: bool = True,
) -> DemoResult:
    """Write the whole report of the shipped network (or, with ``train``, of LeNet5 trained now).

    Args:
        out_dir: where everything goes: ``index.html``, ``manifest.json``, ``figures/`` (and
            ``run/``, the trained model, with ``train``).
        data_dir: a folder holding CIFAR-10 (``cifar10.npz`` or ``cifar-10-batches-py``):
            analyse its test split (``max_images`` of it, spread evenly over the split);
            with ``train``, also train on its full train split. Default: the shipped sample.
        train: train LeNet5 from scratch (the origin report's setup) instead of loading the
            shipped network.
        iterations: training iterations (Adam), with ``train``.
        batch_size: training batch size, with ``train``.
        lr: Adam's learning rate, with ``train``.
        seed: seeds the initialisation and the batch order, with ``train``.
        images: images that get occlusion maps and the method comparison.
        k: top activations per feature map in the reconstructions.
        max_images: images scanned for statistics, reconstructions and selectivity.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        progress: show progress bars.

    Returns:
        A :class:`DemoResult`.
    """
    if train:
        return _train_demo(
            out_dir,
            data_dir=data_dir,
            iterations=iterations,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            images=images,
            k=k,
            max_images=max_images,
            device=device,
            progress=progress,
        )
    return _shipped_demo(
        out_dir,
        data_dir=data_dir,
        images=images,
        k=k,
        max_images=max_images,
        device=device,
        progress=progress,
    )


def _shipped_demo(
    out_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None,
    images: int,
    k: int,
    max_images: int,
    device: str,
    progress: bool,
) -> DemoResult:
    """The report of the shipped ``zfnet-cifar`` network (:func:`run_demo` without ``train``)."""
    out = Path(out_dir)
    model, info = load_pretrained("zfnet-cifar")
    model = model.to(_resolve_device(device))
    report_set, data = _report_images(data_dir, max_images)
    acc = float(info.get("test_accuracy", float("nan")))
    metrics = dict(info.get("metrics") or {})
    metrics["final_test_acc"] = acc
    report = write_report(
        out,
        model,
        report_set,
        config=info.get("config"),
        metrics=metrics,
        run_path=pretrained_path("zfnet-cifar"),
        layers=ZF_LAYERS,
        images=images,
        k=k,
        max_images=max_images,
        max_channels=DEMO_CHANNELS,
        title=f"deconvviz demo: a Zeiler & Fergus-style network on CIFAR-10 ({data})",
        progress=progress,
    )
    return DemoResult(out, None, report, acc, data, "zfnet-cifar")


def _report_images(data_dir: str | os.PathLike[str] | None, max_images: int) -> tuple[Any, str]:
    """The images the shipped network's report analyses, and what the title calls them: the
    shipped sample, or CIFAR-10's test split under ``data_dir`` (``ceil(max_images / 10)``
    images per class)."""
    if data_dir is None:
        return load_sample(), "sample"

    per_class = max(1, -(-max_images // 10))
    return load_dataset(data_dir, "cifar10", "test", per_class=per_class), str(data_dir)


def _train_demo(
    out_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None,
    iterations: int,
    batch_size: int,
    lr: float,
    seed: int,
    images: int,
    k: int,
    max_images: int,
    device: str,
    progress: bool,
) -> DemoResult:
    out = Path(out_dir)
    if data_dir is None:
        train_set, test_set = load_sample("train"), load_sample("test")
        report_set = load_sample()
        dataset_name, data = "cifar10-sample", "sample"
    else:
        from deconvviz.sources.data import load_dataset

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
        title=f"deconvviz demo: LeNet5 trained now on CIFAR-10 ({data})",
        progress=progress,
    )
    return DemoResult(out, run_dir, report, float(result.final_test_acc), data, "lenet5")
