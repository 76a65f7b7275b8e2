"""Image folders as people have them: torchvision ``ImageFolder`` trees and flat folders.

* :class:`FolderDataset` reads images lazily (one file per item), so an ImageNet-sized folder
  streams through a ``DataLoader`` with ``num_workers`` workers instead of being held in memory.
* An ``ImageFolder`` tree is ``ROOT/<class>/*.{jpg,jpeg,png,webp,bmp,gif,tif,tiff}`` (or the same
  under ``ROOT/<split>/``, with ``val`` standing in for ``test``); labels are the class folders in
  sorted order, as torchvision numbers them.
* A flat folder is ``ROOT/*.png`` etc. with no labels (every label is ``-1``).
* Order is deterministic: files sorted by their path relative to the root.
* Resize policy (:mod:`deconvviz.base.images`, the one every command uses): each image is centre-
  cropped to a square and resized (bicubic) to ``image_size``; without ``image_size`` every image
  gets the first image's size that way.
* Files that are not readable images are skipped when the folder is listed (their headers are
  checked); the count and the first few names are kept in ``skipped`` and said in one warning.

Example::

    from deconvviz.sources.datasets import find_image_folder

    ds = find_image_folder("~/data/imagenet", "test", image_size=224, max_images=5000)
    ds.classes[:3], len(ds), ds.skipped
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from deconvviz.analyses.reconstruct import expected_input
from deconvviz.base._util import spread
from deconvviz.base.errors import DataError, InputError, unknown_name
from deconvviz.base.images import IMAGE_SUFFIXES, load_image
from deconvviz.sources.data import (
    ImageDataset,
    choose_dataset,
    dataset_for_config,
    find_datasets,
    load_dataset,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "SAMPLE_SPLIT",
    "FolderDataset",
    "SkippedFilesWarning",
    "dataset_for_model",
    "find_image_folder",
    "load_sample",
    "sample_path",
]

SAMPLE_FILE = "cifar10_sample.npz"
SAMPLE_SPLIT = 400
"""Sample images ``[0, SAMPLE_SPLIT)`` are the demo's training split, the rest its test split."""
_SPLIT_NAMES = {"train": ("train", "Train", "TRAIN"), "test": ("test", "Test", "val", "Val")}


class SkippedFilesWarning(UserWarning):
    """Some files in an image folder could not be read and were left out."""


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path, left_out: list[str] | None = None) -> list[Path]:
    """The class folders of an ``ImageFolder`` tree; each folder left out (hidden: its name
    starts with ``.``, ``..x`` included; or holding no image) is added to ``left_out`` with the
    reason."""
    out = []
    for d in sorted(folder.iterdir()):
        if not d.is_dir():
            continue
        if d.name.startswith("."):
            if left_out is not None:
                left_out.append(f"folder {d.name!r} (hidden: its name starts with '.')")
        elif any(_walk_images(d, first=True)):
            out.append(d)
        elif left_out is not None:
            left_out.append(f"folder {d.name!r} (no image files in it)")
    return out


def _walk_images(folder: Path, first: bool = False) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                out.append(Path(dirpath) / name)
                if first:
                    return out
    return out


def _readable(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


class FolderDataset(Dataset):
    """Images read lazily from files; items ``(float32 [C, S, S] in [0, 1], label)``.

    Attributes:
        files: the image files, in order.
        targets: labels (``-1`` for a flat folder).
        classes: class names (``[]`` for a flat folder).
        name: ``"imagefolder"`` or ``"images"``.
        split, source: the split asked for and the folder read.
        skipped: files left out because they are not readable images.
    """

    def __init__(
        self,
        files: Sequence[Path],
        targets: Sequence[int],
        classes: Sequence[str],
        *,
        channels: int | None = None,
        image_size: int | None = None,
        name: str = "imagefolder",
        split: str = "test",
        source: Path | None = None,
        skipped: Sequence[Path] = (),
    ) -> None:
        if not files:
            raise DataError(f"no readable images under {source}; check the folder")
        self.files = list(files)
        self.targets = torch.tensor(list(targets), dtype=torch.int64)
        self.classes = list(classes)
        self.name, self.split, self.source = name, split, source
        self.skipped = list(skipped)
        self.channels = channels
        if image_size is None:
            first = self._read(self.files[0], None)
            image_size = int(first.shape[-1]) if first.shape[-1] == first.shape[-2] else None
            if image_size is None:
                image_size = int(min(first.shape[-2:]))
        self.image_size = int(image_size)

    def _read(self, path: Path, size: int | None) -> torch.Tensor:
        return load_image(path, self.channels, size, fix="remove or replace the file and run again")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._read(self.files[index], self.image_size), int(self.targets[index])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every item."""
        c = self.channels or int(self[0][0].shape[0])
        return c, self.image_size, self.image_size

    def __repr__(self) -> str:
        return (
            f"FolderDataset(name={self.name!r}, n={len(self)}, classes={len(self.classes)}, "
            f"size={self.image_size}, skipped={len(self.skipped)}, source={str(self.source)!r})"
        )


def find_image_folder(
    data_dir: str | os.PathLike[str],
    split: str = "test",
    *,
    channels: int | None = None,
    image_size: int | None = None,
    max_images: int | None = None,
) -> FolderDataset | None:
    """An ``ImageFolder`` tree or a flat folder of images at ``data_dir``, or ``None``.

    Looks for ``data_dir/<split>/<class>/*`` (``val`` for ``test``), then ``data_dir/<class>/*``,
    then ``data_dir/*`` (no labels). ``max_images`` keeps N files spread evenly over the listing
    (so over the classes) before their headers are checked, so a slice of a huge folder is
    quick.

    Raises:
        InputError: a bad ``max_images``.
    """
    if max_images is not None and max_images < 1:
        raise InputError(f"max_images must be a positive integer, got {max_images!r}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        return None
    base = next((root / s for s in _SPLIT_NAMES.get(split, ()) if (root / s).is_dir()), root)
    listed = _list_images(base)
    if listed is None:
        return None
    files, labels, classes, name = listed
    picked = spread(len(files), max_images)
    if picked is not None:  # spread over the class folders, not the first classes
        files, labels = [files[i] for i in picked], [labels[i] for i in picked]
    keep, skipped = _drop_unreadable(files, root)
    return FolderDataset(
        [files[i] for i in keep],
        [labels[i] for i in keep],
        classes,
        channels=channels,
        image_size=image_size,
        name=name,
        split=split,
        source=base,
        skipped=skipped,
    )


def _list_images(base: Path) -> tuple[list[Path], list[int], list[str], str] | None:
    """``(files, labels, classes, name)`` of the ``ImageFolder`` tree or the flat folder at
    ``base``, or ``None`` when it holds neither."""
    left_out: list[str] = []
    classes_dirs = _class_dirs(base, left_out)
    if classes_dirs and not _images_in(base):
        files: list[Path] = []
        labels: list[int] = []
        for label, d in enumerate(classes_dirs):
            found = _walk_images(d)
            files += found
            labels += [label] * len(found)
        if left_out:
            shown = "; ".join(left_out[:5])
            more = f"; and {len(left_out) - 5} more" if len(left_out) > 5 else ""
            warnings.warn(
                f"the image folder {base} has {len(classes_dirs)} classes; left out: "
                f"{shown}{more}. Rename a folder that holds a class (no leading '.') to use it",
                SkippedFilesWarning,
                stacklevel=4,
            )
        return files, labels, [d.name for d in classes_dirs], "imagefolder"
    files = _images_in(base)
    if not files:
        return None
    return files, [-1] * len(files), [], "images"


def _drop_unreadable(files: Sequence[Path], root: Path) -> tuple[list[int], list[Path]]:
    """The indices of the readable images among ``files`` and the files left out, said in one
    :class:`SkippedFilesWarning` (attributed to :func:`find_image_folder`'s caller)."""
    ok = [_readable(f) for f in files]
    skipped = [f for f, good in zip(files, ok, strict=True) if not good]
    if skipped:
        shown = ", ".join(str(p.relative_to(root)) for p in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        warnings.warn(
            f"skipped {len(skipped)} of {len(files)} files under {root} that are not readable "
            f"images: {shown}{more}",
            SkippedFilesWarning,
            stacklevel=3,
        )
    return [i for i, good in enumerate(ok) if good], skipped


# ------------------------------------------------------------------------------ samples


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
        A :class:`deconvviz.sources.data.ImageDataset` of ``(float32 [3, 32, 32] in [0, 1], label)``
        items with ``classes`` = the CIFAR-10 class names.

    Example:
        >>> ds = load_sample("test")
        >>> len(ds), ds.image_shape, ds.classes[ds[0][1]]
        (100, (3, 32, 32), 'ship')
    """
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


def dataset_for_model(
    model: nn.Module,
    config: Mapping[str, Any],
    data_dir: str | os.PathLike[str] | None,
    dataset: str | None = None,
    split: str = "test",
    max_images: int | None = None,
) -> Any:
    """The dataset that goes with a model: by its run config, else by name, converted to fit it.

    A deconvviz run's config names its data (:func:`deconvviz.sources.data.dataset_for_config`); a
    run
    trained on the shipped CIFAR-10 sample (``deconvviz demo``) gets that sample back when no
    ``data_dir`` is given (or the full CIFAR-10 under ``data_dir``). For a user model (no
    config) the dataset under ``data_dir`` is converted to the model's input channels and size
    where :func:`expected_input` can tell them; where ``data_dir`` holds several datasets, the
    one whose images have that shape is read (:func:`deconvviz.sources.data.choose_dataset`).

    Args:
        model: the loaded model.
        config: the run's config (may be empty for a user model).
        data_dir: where the data is (``None``: only for runs trained on the shipped sample).
        dataset: a dataset name to force (``"auto"``, ``"cifar10"``, ...; ``"imagefolder"``
            or ``"images"`` for a folder of images).
        split: ``"train"`` or ``"test"``.
        max_images: for image folders, list only N files, spread evenly over the classes.

    An ``ImageFolder`` tree or a flat folder of images under ``data_dir`` (see
    :mod:`deconvviz.sources.datasets`) is used when no deconvviz dataset layout is found there.
    """
    model_cfg = config.get("model") if config else None
    trained_on = config.get("dataset") if config else None
    if trained_on == "cifar10-sample" and dataset is None:
        if data_dir is None:
            return load_sample(split)
        dataset = "cifar10"
    if data_dir is None:
        raise DataError(
            "no data folder given; pass --data-dir DIR (data_dir= in Python) pointing at the "
            "dataset (e.g. ../shared/data)"
        )
    if dataset is None and isinstance(model_cfg, Mapping):
        return dataset_for_config(dict(config), data_dir, split)
    return _dataset_to_fit(model, config, data_dir, dataset, split, max_images)


def _dataset_to_fit(
    model: nn.Module,
    config: Mapping[str, Any],
    data_dir: str | os.PathLike[str],
    dataset: str | None,
    split: str,
    max_images: int | None,
) -> Any:
    """The data under ``data_dir`` converted to the model's input channels and size: an image
    folder when asked for (or when no deconvviz dataset layout is there), else the named
    dataset, else the one whose images fit the model."""
    channels, size = expected_input(model, config)
    if dataset in ("imagefolder", "images") or (
        dataset in (None, "auto") and not find_datasets(data_dir)
    ):
        folder = find_image_folder(
            data_dir, split, channels=channels, image_size=size, max_images=max_images
        )
        if folder is not None:
            return folder
    if dataset is None:  # a folder holding several: the one whose images fit the model
        dataset = choose_dataset(data_dir, None, channels, size)
    return load_dataset(
        data_dir,
        dataset,
        split,
        grayscale=None if channels is None else channels == 1,
        image_size=size,
    )
