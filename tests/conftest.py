"""Shared fixtures: tiny datasets written in the real on-disk formats, and the shared data root.

The writers return the arrays they wrote so tests can compare what the loaders read against
them. Image arrays are uint8; class-folder and npz images are HWC / HW as stored on disk.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def quadrant_images(
    n_per_class: int, size: int, classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Learnable greyscale images ``[N, size, size]``: class k lights up quadrant k (plus noise)."""
    rng = np.random.default_rng(seed)
    half = size // 2
    xs, ys = [], []
    for label in range(classes):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, size=(size, size))
            r, c = divmod(label % 4, 2)
            img[r * half : (r + 1) * half, c * half : (c + 1) * half] += 180
            xs.append(np.clip(img, 0, 255).astype(np.uint8))
            ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def write_class_folders(
    root: Path,
    classes: int = 4,
    train_per_class: int = 6,
    test_per_class: int = 3,
    size: int = 8,
    rgb: bool = False,
    class_names: list[str] | None = None,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/Train/<c>/Image%05d.png`` and ``root/Test/<c>/...``; returns {split: (x, y)}."""
    from PIL import Image

    names = class_names or [str(i) for i in range(classes)]
    out = {}
    for split, n, offset in (("Train", train_per_class, 0), ("Test", test_per_class, 100)):
        x, y = quadrant_images(n, size, classes, seed + offset)
        if rgb:
            rng = np.random.default_rng(seed + offset + 7)
            x = np.stack([x, rng.integers(0, 256, x.shape), 255 - x], -1).astype(np.uint8)
        for label, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j, idx in enumerate(np.flatnonzero(y == label)):
                Image.fromarray(x[idx]).save(folder / f"Image{j:05d}.png")
        out[split.lower()] = (x, y)
    return out


def write_cifar_npz(
    path: Path, n_train: int = 20, n_test: int = 10, size: int = 8, classes: int = 10, seed: int = 0
) -> dict[str, np.ndarray]:
    """An npz with ``x_train, y_train, x_test, y_test`` (uint8 NHWC RGB) and ``label_names``."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8),
        "y_train": (np.arange(n_train) % classes).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8),
        "y_test": (np.arange(n_test)[::-1] % classes).astype(np.uint8),
        "label_names": np.asarray([f"class{i}" for i in range(classes)]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


def write_cifar_batches(folder: Path, per_batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """torchvision's ``cifar-10-batches-py``: five data batches, test_batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, fh)
        xs.append(data)
        ys.append(labels)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"name{i}" for i in range(10)]}, fh)
    return {
        "x_train": np.concatenate(xs[:5]).reshape(-1, 3, 32, 32),
        "y_train": np.concatenate(ys[:5]),
        "x_test": xs[5].reshape(-1, 3, 32, 32),
        "y_test": np.asarray(ys[5]),
    }


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_mnist_idx(
    folder: Path,
    n_train: int = 20,
    n_test: int = 10,
    size: int = 28,
    gz: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The four MNIST idx files (gzipped or not) in ``folder``; learnable (quadrant classes)."""
    folder.mkdir(parents=True, exist_ok=True)
    tr_x, tr_y = quadrant_images(max(1, n_train // 4), size, 4, seed)
    te_x, te_y = quadrant_images(max(1, n_test // 4), size, 4, seed + 1)
    arrays = {"x_train": tr_x, "y_train": tr_y, "x_test": te_x, "y_test": te_y}
    names = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    for key, stem in names.items():
        raw = _idx_bytes(arrays[key])
        if gz:
            with gzip.open(folder / f"{stem}.gz", "wb") as fh:
                fh.write(raw)
        else:
            (folder / stem).write_bytes(raw)
    return arrays


@pytest.fixture
def class_folders() -> Callable[..., dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The :func:`write_class_folders` writer."""
    return write_class_folders


@pytest.fixture
def cifar_npz() -> Callable[..., dict[str, np.ndarray]]:
    """The :func:`write_cifar_npz` writer."""
    return write_cifar_npz


@pytest.fixture
def cifar_batches() -> Callable[..., dict[str, np.ndarray]]:
    """The :func:`write_cifar_batches` writer."""
    return write_cifar_batches


@pytest.fixture
def mnist_idx() -> Callable[..., dict[str, np.ndarray]]:
    """The :func:`write_mnist_idx` writer."""
    return write_mnist_idx


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (skips the test when it is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def quadrant_dataset() -> Callable[..., object]:
    """A factory of in-memory ``ImageDataset``s of quadrant images (learnable, 4 classes)."""
    import torch

    from deconvviz.sources.data import ImageDataset

    def make(n_per_class: int = 8, size: int = 8, classes: int = 4, seed: int = 0) -> ImageDataset:
        x, y = quadrant_images(n_per_class, size, classes, seed)
        return ImageDataset(
            torch.from_numpy(x)[:, None],
            torch.from_numpy(y),
            [f"q{i}" for i in range(classes)],
            name="quadrants",
        )

    return make
