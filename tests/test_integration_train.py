"""Brief training on the real data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deconvviz.sources.checkpoint import load_run
from deconvviz.sources.data import ImageDataset, dataset_for_config, load_dataset
from deconvviz.training.train import TrainConfig, evaluate, train, train_from_data


def _head(ds: ImageDataset, n: int) -> ImageDataset:
    return ImageDataset(ds.data[:n], ds.targets[:n], ds.classes, ds.name, ds.split, ds.source)


def test_gru_learns_mnist_rows_in_a_few_steps(shared_data: Path, tmp_path: Path) -> None:
    train_set = load_dataset(shared_data, "mnist", "train")
    test_set = _head(load_dataset(shared_data, "mnist", "test"), 2000)
    cfg = TrainConfig(
        model={"model": "rnn", "cell": "gru", "hidden": 64},
        dataset="mnist",
        batch_size=128,
        iterations=80,
        eval_every=80,
    )
    result = train(cfg, train_set, test_set, out_dir=tmp_path / "gru", progress=False)
    assert result.status == "ok"
    assert result.history.test_acc[0][1] < 0.25  # untrained: about chance (0.1)
    assert result.final_test_acc > 0.45  # 80 steps of the report's setup: clearly above chance
    run = load_run(tmp_path / "gru")
    same_data = dataset_for_config(run.config, shared_data, "test")
    assert same_data.name == "mnist" and len(same_data) == 10_000
    assert evaluate(run.model, _head(same_data, 2000)) == result.final_test_acc


@pytest.mark.slow
def test_lenet5_learns_the_course_cifar_variant(shared_data: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        model={"model": "lenet5"},
        dataset="cifar10-course",
        per_class=500,
        batch_size=50,
        iterations=300,
        eval_every=100,
    )
    result = train_from_data(cfg, shared_data, tmp_path / "lenet5", progress=False)
    assert result.status == "ok" and result.final_test_acc > 0.22  # chance is 0.10
    run = load_run(tmp_path / "lenet5")
    assert run.config["dataset"] == "cifar10-course" and run.config["per_class"] == 500
    test_set = dataset_for_config(run.config, shared_data, "test")
    assert len(test_set) == 1000
    assert evaluate(run.model, test_set) == result.final_test_acc
    x = test_set.batch(torch.arange(4))[0]
    assert run.model(x).shape == (4, 10)


@pytest.mark.slow
def test_lenet5_on_colour_cifar10_npz(shared_data: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        model={"model": "lenet5", "in_channels": 3, "image_size": 32},
        dataset="cifar10",
        per_class=300,
        batch_size=50,
        iterations=200,
        eval_every=200,
    )
    result = train_from_data(cfg, shared_data, tmp_path / "c10", progress=False)
    assert result.status == "ok" and result.final_test_acc > 0.18
