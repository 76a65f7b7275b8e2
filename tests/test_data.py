"""Datasets: every on-disk format read back exactly, auto-detection, clear errors, no writes."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deconvviz.base.errors import DataError, InputError
from deconvviz.sources.data import (
    CIFAR10_CLASSES,
    ImageDataset,
    dataset_for_config,
    find_datasets,
    load_dataset,
)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


# ------------------------------------------------------------------------------ class folders


def test_class_folders_read_back_exactly_in_class_major_order(
    tmp_path: Path, class_folders
) -> None:
    written = class_folders(tmp_path / "course", classes=4, train_per_class=5, test_per_class=2)
    before = _snapshot(tmp_path)
    for split in ("train", "test"):
        ds = load_dataset(tmp_path / "course", split=split)
        x, y = written[split]
        order = np.argsort(y, kind="stable")  # files are listed class by class
        assert isinstance(ds, ImageDataset) and ds.name == "cifar10-course"
        assert ds.data.shape == (len(y), 1, 8, 8) and ds.data.dtype == torch.uint8
        assert np.array_equal(ds.data[:, 0].numpy(), x[order])
        assert np.array_equal(ds.targets.numpy(), y[order])
        image, label = ds[0]
        assert image.dtype == torch.float32 and image.shape == (1, 8, 8)
        assert torch.allclose(image, torch.from_numpy(x[order][0]).float()[None] / 255)
        assert label == int(y[order][0]) and isinstance(label, int)
    assert _snapshot(tmp_path) == before  # nothing written into the data folder


def test_per_class_keeps_the_first_files_of_every_class(tmp_path: Path, class_folders) -> None:
    class_folders(tmp_path, classes=3, train_per_class=5)
    ds = load_dataset(tmp_path, "cifar10-course", "train", per_class=2)
    assert ds.targets.tolist() == [0, 0, 1, 1, 2, 2]
    first = np.asarray(Image.open(tmp_path / "Train" / "1" / "Image00000.png"))
    second = np.asarray(Image.open(tmp_path / "Train" / "1" / "Image00001.png"))
    assert np.array_equal(ds.data[2, 0].numpy(), first)
    assert np.array_equal(ds.data[3, 0].numpy(), second)


def test_course_variant_gets_cifar_class_names_and_other_folders_keep_theirs(
    tmp_path: Path, class_folders
) -> None:
    class_folders(tmp_path / "c10", classes=10, train_per_class=1, test_per_class=1)
    assert load_dataset(tmp_path / "c10", "cifar10-course").classes == list(CIFAR10_CLASSES)
    class_folders(tmp_path / "pets", classes=2, class_names=["dog", "cat"])
    pets = load_dataset(tmp_path / "pets")
    assert pets.classes == ["cat", "dog"]  # sorted folder names, label = index
    assert np.array_equal(pets.targets.unique().numpy(), [0, 1])


def test_rgb_folders_and_grayscale_conversion_match_pil(tmp_path: Path, class_folders) -> None:
    class_folders(tmp_path, classes=2, rgb=True)
    colour = load_dataset(tmp_path, split="test")
    assert colour.image_shape == (3, 8, 8)
    grey = load_dataset(tmp_path, split="test", grayscale=True)
    files = sorted((tmp_path / "Test" / "0").glob("*.png")) + sorted(
        (tmp_path / "Test" / "1").glob("*.png")
    )
    oracle = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
    assert np.array_equal(grey.data[:, 0].numpy(), oracle)


def test_corrupt_png_names_the_file(tmp_path: Path, class_folders) -> None:
    class_folders(tmp_path, classes=2)
    bad = tmp_path / "Train" / "1" / "Image00002.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"Image00002\.png.*damaged"):
        load_dataset(tmp_path)


def test_missing_test_class_folder_is_reported(tmp_path: Path, class_folders) -> None:
    class_folders(tmp_path, classes=3)
    for f in (tmp_path / "Test" / "2").iterdir():
        f.unlink()
    (tmp_path / "Test" / "2").rmdir()
    with pytest.raises(DataError, match=r"class folder .*Test/2 is missing"):
        load_dataset(tmp_path, split="test")


# ------------------------------------------------------------------------------ CIFAR-10


@pytest.mark.parametrize("where", ["folder", "subfolder", "file"])
def test_cifar_npz_is_found_and_transposed_to_chw(tmp_path: Path, cifar_npz, where: str) -> None:
    path = (
        tmp_path / "cifar10" / "cifar10.npz" if where == "subfolder" else tmp_path / "cifar10.npz"
    )
    arrays = cifar_npz(path)
    data_dir = path if where == "file" else tmp_path
    ds = load_dataset(data_dir, split="test")
    assert ds.name == "cifar10" and ds.classes == [f"class{i}" for i in range(10)]
    assert np.array_equal(ds.data.numpy(), arrays["x_test"].transpose(0, 3, 1, 2))
    assert np.array_equal(ds.targets.numpy(), arrays["y_test"])


def test_cifar_npz_per_class_grayscale_and_resize(tmp_path: Path, cifar_npz) -> None:
    arrays = cifar_npz(tmp_path / "cifar10.npz", n_train=30, size=8)
    ds = load_dataset(tmp_path, "cifar10", "train", per_class=2)
    y = arrays["y_train"]
    keep = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(10)])
    assert np.array_equal(ds.targets.numpy(), y[np.sort(keep)])  # stored order is kept
    grey = load_dataset(tmp_path, "cifar10", "train", grayscale=True)
    oracle = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in arrays["x_train"]])
    assert np.array_equal(grey.data[:, 0].numpy(), oracle)
    small = load_dataset(tmp_path, "cifar10", "train", grayscale=True, image_size=4)
    resized = np.stack(
        [np.asarray(Image.fromarray(im).resize((4, 4), Image.Resampling.BILINEAR)) for im in oracle]
    )
    assert small.data.shape == (30, 1, 4, 4)
    assert np.abs(small.data[:, 0].numpy().astype(int) - resized.astype(int)).max() <= 1


def test_grayscale_false_makes_three_channels(tmp_path: Path, class_folders) -> None:
    class_folders(tmp_path, classes=2)
    ds = load_dataset(tmp_path, grayscale=False)
    assert ds.image_shape == (3, 8, 8)
    assert torch.equal(ds.data[:, 0], ds.data[:, 2])


def test_cifar_npz_missing_arrays_is_damaged(tmp_path: Path) -> None:
    np.savez(tmp_path / "cifar10.npz", x_train=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"lacks the arrays \['x_test', 'y_test'\]"):
        load_dataset(tmp_path, "cifar10", "test")
    (tmp_path / "cifar10.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(DataError, match="damaged"):
        load_dataset(tmp_path, "cifar10", "test")


def test_torchvision_cifar_batches_are_read(tmp_path: Path, cifar_batches) -> None:
    arrays = cifar_batches(tmp_path / "cifar-10-batches-py", per_batch=3)
    train = load_dataset(tmp_path, "cifar10", "train")
    assert np.array_equal(train.data.numpy(), arrays["x_train"])
    assert np.array_equal(train.targets.numpy(), arrays["y_train"])
    test = load_dataset(tmp_path / "cifar-10-batches-py", split="test")
    assert np.array_equal(test.data.numpy(), arrays["x_test"])
    assert test.classes == [f"name{i}" for i in range(10)]
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match=r"data_batch_3.*damaged"):
        load_dataset(tmp_path, "cifar10", "train")


def test_download_only_when_asked_and_failures_are_data_errors(
    tmp_path: Path, cifar_batches, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision

    calls = []

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append(download)
            cifar_batches(Path(root) / "cifar-10-batches-py", per_batch=2)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    with pytest.raises(DataError, match="download=True"):
        load_dataset(tmp_path, "cifar10")
    assert calls == []
    ds = load_dataset(tmp_path, "cifar10", "test", download=True)
    assert calls == [True] and len(ds) == 2

    class Offline:
        def __init__(self, *a: object, **k: object) -> None:
            raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="network unreachable.*network access"):
        load_dataset(empty, "cifar10", download=True)


def test_mnist_download_only_when_asked(
    tmp_path: Path, mnist_idx, monkeypatch: pytest.MonkeyPatch
) -> None:
    # train rnn --download fetches MNIST, as its help says
    import torchvision

    calls = []

    class FakeMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append(download)
            mnist_idx(Path(root) / "MNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    with pytest.raises(DataError, match="--download"):
        load_dataset(tmp_path, "mnist")
    assert calls == []
    ds = load_dataset(tmp_path, "mnist", "test", download=True)
    assert calls == [True] and ds.name == "mnist" and len(ds) > 0


# ------------------------------------------------------------------------------ MNIST


@pytest.mark.parametrize(
    ("where", "gz"), [("MNIST/raw", True), ("raw", False), ("", True), ("", False)]
)
def test_mnist_idx_gz_or_raw_in_every_place(
    tmp_path: Path, mnist_idx, where: str, gz: bool
) -> None:
    arrays = mnist_idx(tmp_path / where if where else tmp_path, gz=gz)
    before = _snapshot(tmp_path)
    for split in ("train", "test"):
        ds = load_dataset(tmp_path, split=split)
        assert ds.name == "mnist" and ds.classes == [str(d) for d in range(10)]
        assert np.array_equal(ds.data[:, 0].numpy(), arrays[f"x_{split}"])
        assert np.array_equal(ds.targets.numpy(), arrays[f"y_{split}"])
    assert _snapshot(tmp_path) == before  # gzip is read in memory, never staged beside the data


def test_damaged_mnist_files_are_reported(tmp_path: Path, mnist_idx) -> None:
    mnist_idx(tmp_path, gz=False)
    images = tmp_path / "t10k-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:-10])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_dataset(tmp_path, "mnist", "test")
    images.write_bytes(b"\x00\x00\x09\x03" + good[4:])
    with pytest.raises(DataError, match="bad magic"):
        load_dataset(tmp_path, "mnist", "test")
    images.unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08 not gzip")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*damaged"):
        load_dataset(tmp_path, "mnist", "test")


def test_mnist_label_count_mismatch(tmp_path: Path, mnist_idx) -> None:
    mnist_idx(tmp_path, gz=True)
    labels = np.zeros(3, np.uint8)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + labels.tobytes())
    with pytest.raises(DataError, match="do not match"):
        load_dataset(tmp_path, "mnist", "test")


# ------------------------------------------------------------------------------ detection, errors


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path, "mnist")
    msg = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg
    assert "deconvviz train lenet5 --download" in msg and "download=True in Python" in msg
    with pytest.raises(DataError, match=r"Train/<label>/\*\.png.*cicconet"):
        load_dataset(tmp_path, "cifar10-course")
    with pytest.raises(DataError, match="no dataset found"):
        load_dataset(tmp_path)
    assert isinstance(info.value, FileNotFoundError)


def test_a_root_with_several_datasets_needs_a_name(
    tmp_path: Path, class_folders, cifar_npz, mnist_idx
) -> None:
    class_folders(tmp_path / "cifar10-course", classes=10, train_per_class=1, test_per_class=1)
    cifar_npz(tmp_path / "cifar10" / "cifar10.npz")
    mnist_idx(tmp_path / "MNIST" / "raw")
    assert set(find_datasets(tmp_path)) == {"cifar10-course", "cifar10", "mnist"}
    with pytest.raises(DataError, match="several datasets.*--dataset"):
        load_dataset(tmp_path)
    assert load_dataset(tmp_path, "cifar10-course").image_shape == (1, 8, 8)
    assert load_dataset(tmp_path, "cifar10").image_shape == (3, 8, 8)
    assert load_dataset(tmp_path, "mnist").image_shape == (1, 28, 28)


def test_bad_arguments_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="did you mean 'mnist'"):
        load_dataset(tmp_path, "mnst")
    with pytest.raises(InputError, match="did you mean 'test'"):
        load_dataset(tmp_path, split="tset")
    with pytest.raises(InputError, match="per_class"):
        load_dataset(tmp_path, per_class=0)


def test_dataset_for_config_picks_the_data_a_model_was_trained_on(
    tmp_path: Path, class_folders, cifar_npz, mnist_idx
) -> None:
    cifar_npz(tmp_path / "cifar10" / "cifar10.npz", size=32)
    mnist_idx(tmp_path / "MNIST" / "raw")
    lenet_course = {
        "model": {"model": "lenet5", "in_channels": 1, "image_size": 28},
        "per_class": 1,
    }
    # no course folders: greyscale CIFAR-10 resized to 28
    ds = dataset_for_config(lenet_course, tmp_path, "train")
    assert ds.name == "cifar10" and ds.image_shape == (1, 28, 28)
    assert torch.bincount(ds.targets).tolist() == [1] * 10  # the run's per_class
    class_folders(
        tmp_path / "cifar10-course", classes=10, size=28, train_per_class=1, test_per_class=1
    )
    ds = dataset_for_config(lenet_course, tmp_path, "test")
    assert ds.name == "cifar10-course" and ds.image_shape == (1, 28, 28)
    colour = dataset_for_config({"model": "lenet5", "in_channels": 3, "image_size": 32}, tmp_path)
    assert colour.name == "cifar10" and colour.image_shape == (3, 32, 32)
    rnn = dataset_for_config(
        {"model": {"model": "rnn", "cell": "gru"}, "dataset": "mnist"}, tmp_path
    )
    assert rnn.name == "mnist" and len(rnn) == 8
    with pytest.raises(InputError, match="no model name"):
        dataset_for_config({"lr": 1}, tmp_path)


# ------------------------------------------------------------------------------ the real data


def test_shared_data_counts_and_first_labels(shared_data: Path) -> None:
    course = load_dataset(shared_data, "cifar10-course", "test")
    assert len(course) == 1000 and torch.bincount(course.targets).tolist() == [100] * 10
    assert course.classes[0] == "airplane" and course.image_shape == (1, 28, 28)
    mnist = load_dataset(shared_data, "mnist", "train")
    assert len(mnist) == 60000 and mnist.targets[:5].tolist() == [5, 0, 4, 1, 9]
    assert abs(mnist.data.float().mean().item() / 255 - 0.1307) < 1e-3
    assert os.access(shared_data, os.R_OK)
