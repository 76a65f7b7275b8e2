"""Datasets for the example targets, read from disk in their usual formats (never written to).

:func:`load_dataset` finds a dataset under a directory and returns an :class:`ImageDataset`
whose items are ``(image float32 [C, H, W] in [0, 1], label int)``. Formats it understands:

- ``cifar10-course``: class folders ``Train/<label>/*.png`` and ``Test/<label>/*.png`` (the
  course's 28x28 greyscale CIFAR-10 variant; any class-folder dataset works the same way);
- ``cifar10``: ``cifar10.npz`` with ``x_train, y_train, x_test, y_test`` (uint8, NHWC), or
  torchvision's ``cifar-10-batches-py`` (``download=True`` fetches it, and MNIST, where the
  network allows);
- ``mnist``: the idx files (gzipped or not) in ``MNIST/raw``, ``raw`` or the directory itself.

``data_dir`` may be the folder of one dataset or a root holding several (like ``shared/data``);
then ``name`` picks one. Example::

    from deconvviz.sources.data import load_dataset

    train = load_dataset("../shared/data", "cifar10-course", split="train", per_class=500)
    image, label = train[0]          # float32 [1, 28, 28], int
    train.classes[label]             # 'airplane'
"""

from __future__ import annotations

import gzip
import os
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from deconvviz.base.checks import check_positive_int
from deconvviz.base.errors import DataError, InputError, unknown_name
from deconvviz.base.images import eight_bit, image_array

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "ImageDataset",
    "MNIST_CLASSES",
    "choose_dataset",
    "dataset_for_config",
    "find_datasets",
    "load_dataset",
]

DATASETS = ("auto", "cifar10-course", "cifar10", "mnist")
SPLITS = ("train", "test")
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

_HOW_TO_GET = {
    "cifar10-course": (
        "put the course's CIFAR-10 variant there as class folders Train/<label>/*.png and "
        "Test/<label>/*.png (e.g. the CIFAR10/ folder of github.com/cicconet/MachineLearning)"
    ),
    "cifar10": (
        "put cifar10.npz (arrays x_train, y_train, x_test, y_test) or torchvision's "
        "cifar-10-batches-py folder there, or fetch it with torchvision (download=True in "
        "Python; deconvviz train zfnet-cifar --download fetches it before training)"
    ),
    "mnist": (
        "put the four MNIST idx files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) in DIR/MNIST/raw, or fetch "
        "them on a machine with network access (download=True in Python; deconvviz train "
        "lenet5 --download fetches them before training)"
    ),
}


class ImageDataset(Dataset):
    """Images held in memory as uint8 ``[N, C, H, W]`` with integer labels.

    Items are ``(image float32 [C, H, W] in [0, 1], label int)``. :meth:`batch` returns a
    stacked batch without a DataLoader.

    Attributes:
        data: uint8 tensor ``[N, C, H, W]``.
        targets: int64 tensor ``[N]``.
        classes: class names, indexed by label.
        name: dataset name (``"cifar10-course"``, ``"cifar10"``, ``"mnist"`` or ``"folder"``).
        split: ``"train"`` or ``"test"``.
        source: the file or folder it was read from.
    """

    def __init__(
        self,
        data: torch.Tensor,
        targets: torch.Tensor,
        classes: Sequence[str],
        name: str = "custom",
        split: str = "train",
        source: str | os.PathLike[str] | None = None,
    ) -> None:
        if data.dtype != torch.uint8 or data.dim() != 4:
            raise InputError(
                f"data must be a uint8 tensor [N, C, H, W], got {data.dtype} {tuple(data.shape)}"
            )
        if targets.dim() != 1 or len(targets) != len(data):
            raise InputError(f"targets must be [N] with N={len(data)}, got {tuple(targets.shape)}")
        self.data = data
        self.targets = targets.to(torch.int64)
        self.classes = list(classes)
        self.name = name
        self.split = split
        self.source = None if source is None else Path(source)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.data[index].to(torch.float32) / 255.0, int(self.targets[index])

    def batch(self, indices: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``float32 [B, C, H, W]`` in [0, 1] and labels ``int64 [B]`` at ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.data[idx].to(torch.float32) / 255.0, self.targets[idx]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        c, h, w = self.data.shape[1:]
        return int(c), int(h), int(w)

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"image=[{c}, {h}, {w}], classes={len(self.classes)}, source={str(self.source)!r})"
        )


# --------------------------------------------------------------------------------- locating


def _has_class_folders(path: Path) -> bool:
    return _split_dir(path, "train") is not None and _split_dir(path, "test") is not None


def _split_dir(path: Path, split: str) -> Path | None:
    for cand in (split.capitalize(), split, split.upper()):
        if (path / cand).is_dir():
            return path / cand
    return None


def _npz_candidates(path: Path) -> list[Path]:
    if path.suffix == ".npz":
        return [path]
    return [path / "cifar10.npz", path / "cifar10" / "cifar10.npz"]


def _batches_candidates(path: Path) -> list[Path]:
    if path.name == "cifar-10-batches-py":
        return [path]
    return [path / "cifar-10-batches-py", path / "cifar10" / "cifar-10-batches-py"]


def _mnist_candidates(path: Path) -> list[Path]:
    return [path / "MNIST" / "raw", path / "mnist" / "raw", path / "raw", path]


def _mnist_file(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    # torchvision's older spelling
    alt = stem.replace("-idx", ".idx")
    for cand in (folder / alt, folder / f"{alt}.gz"):
        if cand.is_file():
            return cand
    return None


def _mnist_dir(folder: Path) -> bool:
    return all(
        _mnist_file(folder, s) is not None for s in _MNIST_FILES["train"] + _MNIST_FILES["test"]
    )


def _locate(data_dir: Path, name: str) -> tuple[str, Path] | None:
    """Where dataset ``name`` lives under ``data_dir``: (format, path), or None."""
    if name == "cifar10-course":
        for cand in (data_dir, data_dir / "cifar10-course"):
            if cand.is_dir() and _has_class_folders(cand):
                return "folder", cand
        return None
    if name == "cifar10":
        for cand in _npz_candidates(data_dir):
            if cand.is_file():
                return "npz", cand
        for cand in _batches_candidates(data_dir):
            if (cand / "test_batch").is_file():
                return "batches", cand
        return None
    if name == "mnist":
        for cand in _mnist_candidates(data_dir):
            if cand.is_dir() and _mnist_dir(cand):
                return "idx", cand
        return None
    raise InputError(unknown_name("dataset", name, DATASETS))


def _looked_for(data_dir: Path, name: str) -> str:
    if name == "cifar10-course":
        places = [
            f"{c}/Train/<label>/*.png and {c}/Test/<label>/*.png"
            for c in (data_dir, data_dir / "cifar10-course")
        ]
    elif name == "cifar10":
        places = [str(c) for c in _npz_candidates(data_dir)]
        places += [f"{c}/test_batch" for c in _batches_candidates(data_dir)]
    else:
        folders = ", ".join(str(c) for c in _mnist_candidates(data_dir))
        return f"the four MNIST idx files in {folders}"
    return "; ".join(places)


def find_datasets(data_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """The datasets found under ``data_dir``: ``{name: path}`` (names as for ``load_dataset``)."""
    root = Path(data_dir)
    found: dict[str, Path] = {}
    for name in DATASETS[1:]:
        hit = _locate(root, name)
        if hit is not None:
            found[name] = hit[1]
    return found


def _native_shape(name: str, path: Path) -> tuple[int, int] | None:
    """``(channels, size)`` of the images of dataset ``name`` found at ``path``, if square."""
    if name == "cifar10":
        return 3, 32
    if name == "mnist":
        return 1, 28
    from PIL import Image, UnidentifiedImageError

    split_dir = _split_dir(path, "test")
    first = None
    if split_dir is not None:
        first = next(
            (
                f
                for d in sorted(p for p in split_dir.iterdir() if p.is_dir())
                for f in sorted(d.iterdir())
                if f.suffix.lower() in _IMAGE_SUFFIXES
            ),
            None,
        )
    if first is None:
        return None
    try:
        with Image.open(first) as im:
            grey = im.mode in ("L", "1", "LA", "I", "I;16", "F")
            w, h = im.size
    except (UnidentifiedImageError, OSError):
        return None
    return (1 if grey else 3, w) if w == h else None


def choose_dataset(
    data_dir: str | os.PathLike[str],
    model: str | None = None,
    channels: int | None = None,
    size: int | None = None,
) -> str:
    """The dataset under ``data_dir`` that goes with a model, for a folder holding several.

    Where ``data_dir`` holds at most one dataset this returns ``"auto"`` (:func:`load_dataset`
    then finds it, or says what is missing). Where it holds several, the choice follows the
    model: ``"rnn"`` reads MNIST; ``"lenet5"`` reads the course's CIFAR-10 variant when its input
    is 1x28x28 (or not given) and CIFAR-10 otherwise; any other model the one dataset whose
    images have its input ``channels`` (and ``size``, where given).

    Args:
        data_dir: as for :func:`load_dataset`.
        model: ``"lenet5"``, ``"rnn"`` or ``None`` (a user model).
        channels: the model's input channels, where known.
        size: the model's input size, where known.

    Returns:
        A dataset name for :func:`load_dataset`, or ``"auto"``.

    Raises:
        DataError: the folder holds several datasets and nothing above tells which (the message
            says to choose with ``--dataset NAME``).
    """
    root = Path(data_dir).expanduser()
    found = find_datasets(root) if root.is_dir() else {}
    if len(found) <= 1:
        return "auto"
    pick: str | None = None
    if model == "rnn" and "mnist" in found:
        pick = "mnist"
    elif model == "lenet5":
        course = channels in (None, 1) and size in (None, 28)
        order = ("cifar10-course", "cifar10") if course else ("cifar10", "cifar10-course")
        pick = next((n for n in order if n in found), None)
    elif model is None and (channels is not None or size is not None):
        fits = []
        for name, path in sorted(found.items()):
            shape = _native_shape(name, path)
            if shape is not None and channels in (None, shape[0]) and size in (None, shape[1]):
                fits.append(name)
        pick = fits[0] if len(fits) == 1 else None
    if pick is None:
        raise DataError(
            f"{root} holds several datasets ({', '.join(sorted(found))}) and the model does not "
            "tell which it goes with; choose one with --dataset NAME"
        )
    return pick


# --------------------------------------------------------------------------------- readers


def _folder_classes(split_dir: Path) -> list[str]:
    names = [p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if all(n.isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _read_folder(
    root: Path, split: str, per_class: int | None, progress: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    split_dir = _split_dir(root, split)
    assert split_dir is not None
    train_dir = _split_dir(root, "train")
    assert train_dir is not None
    classes = _folder_classes(train_dir)
    if not classes:
        raise DataError(f"{train_dir} has no class folders; expected {train_dir}/<label>/*.png")
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        folder = split_dir / cls
        if not folder.is_dir():
            raise DataError(
                f"class folder {folder} is missing (the train split has class {cls!r}); "
                f"the dataset under {root} is incomplete: restore it"
            )
        names = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if per_class is not None:
            names = names[:per_class]
        files += [(p, label) for p in names]
    if not files:
        raise DataError(
            f"no images (*.png) in the class folders of {split_dir}; restore the dataset"
        )
    images = []
    for path, _ in tqdm(files, desc=f"reading {split_dir.name}", unit="img", disable=not progress):
        try:
            with Image.open(path) as im:
                im.load()
                grey = im.mode in ("L", "1", "LA", "I", "I;16", "F") or (
                    im.mode == "P" and _is_grey(im)
                )
                if eight_bit(im):
                    arr = np.asarray(im.convert("L" if grey else "RGB"))
                else:  # 16-bit, float, alpha, CMYK: read right, then stored as 8 bits
                    arr = np.rint(image_array(im, 1 if grey else 3) * 255).astype(np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(
                f"cannot read image {path}: {exc}; the file is damaged: restore or delete it"
            ) from exc
        images.append(arr)
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        if {len(s) for s in shapes} == {2, 3}:  # a few palette images were colour: go RGB
            images = [np.stack([a] * 3, -1) if a.ndim == 2 else a for a in images]
            shapes = {a.shape for a in images}
        if len(shapes) != 1:
            raise DataError(
                f"the images under {split_dir} have different sizes {sorted(shapes)}; "
                "resize them to one size first"
            )
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    y = np.asarray([label for _, label in files], dtype=np.int64)
    return x, y, classes


def _is_grey(im: Any) -> bool:
    pal = im.getpalette() or []
    rgb = np.asarray(pal, dtype=np.int64).reshape(-1, 3)
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def _read_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    kx, ky = f"x_{split}", f"y_{split}"
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as d:
            missing = [k for k in (kx, ky) if k not in d.files]
            if missing:
                raise DataError(
                    f"{path} lacks the arrays {missing} (has {d.files}); it must hold "
                    "x_train, y_train, x_test, y_test: rebuild it"
                )
            x = d[kx]
            y = d[ky]
            names = [str(n) for n in d["label_names"]] if "label_names" in d.files else None
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(
            f"cannot read {path}: {exc}; the file is damaged: download it again"
        ) from exc
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype != np.uint8:
        raise DataError(
            f"{path}: {kx} must be uint8 [N, H, W, C] with C 1 or 3, got {x.dtype} {x.shape}; "
            "rebuild the file"
        )
    y = y.reshape(-1)
    if len(y) != len(x):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels in {ky}; rebuild the file")
    n_classes = int(y.max()) + 1 if len(y) else 0
    if names is None:
        names = list(CIFAR10_CLASSES) if n_classes <= 10 else [str(i) for i in range(n_classes)]
    return x.transpose(0, 3, 1, 2), y.astype(np.int64), names


def _read_batches(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for fname in files:
        path = folder / fname
        if not path.is_file():
            raise DataError(
                f"{path} is missing from torchvision's CIFAR-10 folder; {_HOW_TO_GET['cifar10']}"
            )
        try:
            with open(path, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8)
            labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(labels)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, OSError) as exc:
            raise DataError(
                f"cannot read {path}: {exc}; the file is damaged: download CIFAR-10 again"
            ) from exc
    names = list(CIFAR10_CLASSES)
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as fh:
                names = [str(n) for n in pickle.load(fh, encoding="latin1")["label_names"]]
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, OSError):
            pass
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) != len(y):
        raise DataError(f"{folder}: {len(x)} images but {len(y)} labels; download CIFAR-10 again")
    return x, y, names


def _read_idx(path: Path) -> np.ndarray:
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(
            f"cannot read {path}: {exc}; the file is damaged: download it again"
        ) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(
            f"{path} is not an unsigned-byte idx file (bad magic number {raw[:4].hex()}); "
            "download it again"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (no complete header); download it again")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(
            f"{path} has {len(raw)} bytes, its header {dims} says {expected}: "
            "the file is truncated or damaged; download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_mnist(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    stem_x, stem_y = _MNIST_FILES[split]
    px, py = _mnist_file(folder, stem_x), _mnist_file(folder, stem_y)
    assert px is not None and py is not None
    x, y = _read_idx(px), _read_idx(py)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataError(
            f"{px} ({x.shape}) and {py} ({y.shape}) do not match: expected images [N, H, W] and "
            "labels [N]; download MNIST again"
        )
    return x[:, None].copy(), y.astype(np.int64), list(MNIST_CLASSES)


def _torchvision_download(data_dir: Path, dataset: str, name: str, folder: str) -> None:
    """Download torchvision's ``dataset`` class (``"CIFAR10"``, ``"MNIST"``) into ``data_dir``;
    a failure is a :class:`DataError` naming ``name`` and the ``folder`` to copy by hand."""
    import torchvision

    try:
        getattr(torchvision.datasets, dataset)(str(data_dir), train=False, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(
            f"downloading {name} into {data_dir} failed ({type(exc).__name__}: {exc}); "
            f"download it on a machine with network access and copy {folder} there"
        ) from exc


def _download_cifar10(data_dir: Path) -> Path:
    _torchvision_download(data_dir, "CIFAR10", "CIFAR-10", "cifar-10-batches-py")
    return data_dir / "cifar-10-batches-py"


def _download_mnist(data_dir: Path) -> None:
    # fetches all four idx files into data_dir/MNIST/raw
    _torchvision_download(data_dir, "MNIST", "MNIST", "MNIST/raw")


# --------------------------------------------------------------------------------- transforms


def _first_per_class(y: np.ndarray, per_class: int) -> np.ndarray:
    keep = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        keep[np.flatnonzero(y == label)[:per_class]] = True
    return np.flatnonzero(keep)


def _to_grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, as PIL's ``convert("L")`` (integer, rounded)."""
    if x.shape[1] == 1:
        return x
    r, g, b = (x[:, i].to(torch.int32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)[:, None]


def _resize(x: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    import torch.nn.functional as F

    out = []
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].to(torch.float32)
        part = F.interpolate(
            part, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out.append(part.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else x[:, :, :size, :size]


# --------------------------------------------------------------------------------- public


def _check_load_args(name: str, split: str, per_class: int | None, image_size: int | None) -> None:
    """Reject an unknown dataset name or split, and a bad ``per_class`` or ``image_size``."""
    if name not in DATASETS:
        raise InputError(unknown_name("dataset", str(name), DATASETS))
    if split not in SPLITS:
        raise InputError(unknown_name("split", str(split), SPLITS))
    for label, value in (("per_class", per_class), ("image_size", image_size)):
        check_positive_int(label, value, or_none=True)


def _auto_name(root: Path, download: bool) -> str:
    """The one dataset under ``root`` (CIFAR-10 to download when there is none and may be)."""
    found = find_datasets(root)
    if not found and download:
        return "cifar10"
    if not found:
        raise DataError(
            f"no dataset found under {root}: looked for class folders Train/<label>/*.png + "
            "Test/<label>/*.png, cifar10.npz, cifar-10-batches-py and MNIST idx files "
            "(MNIST/raw, raw, or the folder itself); pass --data-dir pointing at one of "
            "these, or fetch CIFAR-10 into it (download=True in Python; deconvviz train "
            "zfnet-cifar --download fetches it before training)"
        )
    if len(found) > 1:
        raise DataError(
            f"{root} holds several datasets ({', '.join(sorted(found))}); "
            "choose one with --dataset NAME"
        )
    return next(iter(found))


def _find_source(root: Path, name: str, download: bool) -> tuple[str, Path]:
    """``(format, path)`` of dataset ``name`` under ``root``, downloading it if allowed."""
    hit = _locate(root, name)
    if hit is None and name == "cifar10" and download:
        hit = ("batches", _download_cifar10(root))
    elif hit is None and name == "mnist" and download:
        _download_mnist(root)
        hit = _locate(root, name)
    if hit is None:
        how = _HOW_TO_GET[name].replace("DIR", str(root))
        raise DataError(
            f"no {name} dataset under {root}: looked for {_looked_for(root, name)}; "
            f"to get it, {how}"
        )
    return hit


def _read_source(
    fmt: str, path: Path, name: str, split: str, per_class: int | None, progress: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images ``[N, C, H, W]`` uint8, labels and class names of ``split``, ``per_class`` applied.

    Raises DataError when a label is not one of the classes.
    """
    if fmt == "folder":
        x, y, classes = _read_folder(path, split, per_class, progress)
        if name == "cifar10-course" and classes == [str(i) for i in range(10)]:
            classes = list(CIFAR10_CLASSES)
        per_class = None  # already applied while listing the files
    elif fmt == "npz":
        x, y, classes = _read_npz(path, split)
    elif fmt == "batches":
        x, y, classes = _read_batches(path, split)
    else:
        x, y, classes = _read_mnist(path, split)
    if len(y) and (y.min() < 0 or y.max() >= max(len(classes), 1)):
        raise DataError(
            f"{path}: labels range {int(y.min())}..{int(y.max())} but there are {len(classes)} "
            "classes; the labels are damaged: restore the dataset"
        )
    if per_class is not None:
        keep = _first_per_class(y, per_class)
        x, y = x[keep], y[keep]
    return x, y, classes


def _convert(data: torch.Tensor, grayscale: bool | None, image_size: int | None) -> torch.Tensor:
    """Images made grey or colour as ``grayscale`` asks, and resized to ``image_size``."""
    if grayscale is True:
        data = _to_grey(data)
    elif grayscale is False and data.shape[1] == 1:
        data = data.expand(-1, 3, -1, -1).contiguous()
    if image_size is not None and tuple(data.shape[-2:]) != (image_size, image_size):
        data = _resize(data, image_size)
    return data


def load_dataset(
    data_dir: str | os.PathLike[str],
    name: str = "auto",
    split: str = "train",
    per_class: int | None = None,
    grayscale: bool | None = None,
    image_size: int | None = None,
    download: bool = False,
    progress: bool = False,
) -> ImageDataset:
    """Load a dataset from ``data_dir``, detecting its on-disk format.

    Args:
        data_dir: the dataset's folder (or ``.npz`` file), or a root holding several datasets
            (``cifar10-course/``, ``cifar10/``, ``MNIST/``) such as ``shared/data``.
        name: ``"auto"`` (the only dataset found), ``"cifar10-course"`` (class folders),
            ``"cifar10"`` (npz or ``cifar-10-batches-py``) or ``"mnist"`` (idx files).
        split: ``"train"`` or ``"test"``.
        per_class: keep only the first ``per_class`` images of every class (in stored order).
        grayscale: ``True`` converts colour to one channel (ITU-R 601-2 luma), ``False`` makes
            greyscale images 3-channel, ``None`` keeps them as stored.
        image_size: resize to ``image_size`` x ``image_size`` (bilinear, antialiased).
        download: for CIFAR-10 and MNIST: fetch ``cifar-10-batches-py`` (or ``MNIST/raw``)
            into ``data_dir`` with torchvision if it is not there (needs network access).
        progress: show a progress bar while reading image files.

    Returns:
        An :class:`ImageDataset` of ``(float32 [C, H, W] in [0, 1], int label)`` items.

    Raises:
        DataError: the dataset is missing (the message lists where it looked and how to get
            it), ambiguous, or damaged.
        InputError: an unknown ``name``/``split`` or a bad ``per_class``/``image_size``.
    """
    _check_load_args(name, split, per_class, image_size)
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DataError(
            f"data directory {root} does not exist; pass the folder that holds the dataset "
            "(for the shipped data: --data-dir ../shared/data)"
        )
    if root.is_file() and root.suffix != ".npz":  # a CIFAR-10 .npz may be named itself
        raise DataError(
            f"--data-dir {root} is a file, not a folder: give the folder that holds the images "
            "or the dataset (class folders, cifar10.npz, cifar-10-batches-py or MNIST's idx "
            "files)"
        )
    if name == "auto":
        name = _auto_name(root, download)
    fmt, path = _find_source(root, name, download)
    x, y, classes = _read_source(fmt, path, name, split, per_class, progress)
    data = _convert(torch.from_numpy(np.ascontiguousarray(x)), grayscale, image_size)
    return ImageDataset(data, torch.from_numpy(y), classes, name=name, split=split, source=path)


def _split_config(config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model config, run config)`` of a run's config; a model config has an empty run part."""
    model_cfg = config.get("model") if isinstance(config, dict) else None
    run_cfg: dict[str, Any] = config if isinstance(model_cfg, dict) else {}
    if not isinstance(model_cfg, dict):
        model_cfg = config
    if not isinstance(model_cfg, dict) or "model" not in model_cfg:
        raise InputError(
            f"cannot tell which dataset goes with config {config!r}: it has no model name; "
            "pass a run's config (load_run(...).config) or a model's .config"
        )
    return model_cfg, run_cfg


def dataset_for_config(
    config: dict[str, Any],
    data_dir: str | os.PathLike[str],
    split: str = "test",
    per_class: int | None = None,
    download: bool = False,
    progress: bool = False,
) -> ImageDataset:
    """The dataset a model with this config was (or would be) trained on.

    Args:
        config: a run's config (``Run.config``, with a ``"model"`` sub-dict and maybe a
            ``"dataset"`` name) or a model config (``model.config``).
        data_dir: as for :func:`load_dataset`.
        split: ``"train"`` or ``"test"``.
        per_class: as for :func:`load_dataset`; ``None`` uses the run's ``per_class`` for the
            train split and everything for the test split.
        download: as for :func:`load_dataset`.
        progress: as for :func:`load_dataset`.

    Returns:
        LeNet5 with 1x28x28 input: the course variant (or, where that is missing, CIFAR-10
        converted to greyscale and resized); other LeNet5 shapes: CIFAR-10 converted to the
        model's channels and size; RNN: MNIST.
    """
    model_cfg, run_cfg = _split_config(config)
    if per_class is None and split == "train":
        per_class = run_cfg.get("per_class")
    dataset = run_cfg.get("dataset")
    kind = model_cfg["model"]
    if kind == "rnn":
        return load_dataset(
            data_dir, dataset or "mnist", split, per_class=per_class, progress=progress
        )
    if kind not in ("lenet5", "zfnet-cifar"):
        raise InputError(
            f"no default dataset for model {kind!r}; load one with "
            "deconvviz.sources.data.load_dataset"
        )
    channels = int(model_cfg.get("in_channels", 1))
    size = int(model_cfg.get("image_size", 28))
    grey = channels == 1
    if dataset in (None, "auto") and channels == 1 and size == 28:
        root = Path(data_dir)
        if _locate(root, "cifar10-course") is not None or _locate(root, "cifar10") is None:
            dataset = "cifar10-course"
    ds = load_dataset(
        data_dir,
        dataset if dataset not in (None, "auto") else "cifar10",
        split,
        per_class=per_class,
        grayscale=grey,
        image_size=size,
        download=download,
        progress=progress,
    )
    if ds.image_shape[0] != channels:
        raise DataError(
            f"the {ds.name} data under {data_dir} has {ds.image_shape[0]} channels but the "
            f"model takes {channels}; use a matching dataset"
        )
    return ds
