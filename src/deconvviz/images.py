"""Image files into model inputs: the one loader every command and dataset folder uses.

Policy (documented once, here): a file is read with Pillow and converted to the model's
channels -- colour to greyscale by ITU-R 601-2 luma for 1 channel, greyscale repeated for 3 --
then, when a size is asked for, **centre-cropped** to that size's aspect ratio and resized to it
with **bicubic** interpolation; values are ``float32`` in ``[0, 1]`` (no normalisation: the
library's models take ``[0, 1]`` input). :func:`load_image` reads one file, :func:`load_images`
a batch, and :class:`deconvviz.datasets.FolderDataset` reads its items the same way.

Rank 0 (base): imports only torch, NumPy/Pillow (inside the functions) and
:mod:`deconvviz.errors`.

Example::

    from deconvviz.images import load_image, load_images

    x = load_images(["cat.png", "dog.jpg"], channels=3, size=32)   # [2, 3, 32, 32]
    load_image("cat.png", channels=3, size=32).shape              # [3, 32, 32]
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deconvviz.errors import DataError, InputError

__all__ = ["IMAGE_SUFFIXES", "fit_image", "load_image", "load_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""File suffixes taken for images (lower case)."""

_GREY_MODES = ("L", "1", "LA", "I", "I;16", "F")


def _target(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    target = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(target) < 1:
        raise InputError(f"size must be positive, got {size!r}")
    return target


def _check_channels(channels: int | None) -> None:
    if channels is not None and channels not in (1, 3):
        raise InputError(
            f"the model takes {channels}-channel input, which cannot be made from PNG/JPEG images "
            "(grey or RGB); feed such a model tensors through the Python API instead"
        )


def load_image(
    path: str | os.PathLike[str],
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
    *,
    fix: str = "give a PNG or JPEG file",
) -> Tensor:
    """One image file as ``float32 [C, H, W]`` in [0, 1], by the module's policy.

    Args:
        path: the file (any format Pillow reads).
        channels: 1 or 3 (the model's input channels), or ``None`` to keep the image's own
            (grey -> 1, colour -> 3).
        size: ``S`` or ``(H, W)``: centre-crop to its aspect ratio and resize (bicubic) to it;
            ``None`` keeps the image's size.
        fix: what the error message tells the user to do with an unreadable file.

    Raises:
        DataError: the file is missing or not an image.
        InputError: ``channels`` is not 1 or 3, or ``size`` is not positive.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    _check_channels(channels)
    target = _target(size)
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"image {file} does not exist; check the path")
    try:
        with Image.open(file) as im:
            im.load()
            grey = im.mode in _GREY_MODES
            img = im.convert({1: "L", 3: "RGB"}.get(channels or 0, "L" if grey else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read {file} as an image ({exc}); {fix}") from exc
    if target is not None:
        img = fit_image(img, target)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr[None].copy() if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())


def load_images(
    paths: Iterable[str | os.PathLike[str]],
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
) -> Tensor:
    """Read PNG/JPEG (any format Pillow reads) into a float batch ``[N, C, H, W]`` in [0, 1].

    Each file goes through :func:`load_image` (the module's policy: colour to greyscale by luma
    for ``channels=1``, grey repeated for ``channels=3``; with ``size``, centre-cropped to its
    aspect ratio and resized, bicubic). Without ``size``, all images must already have one size.

    Args:
        paths: image files.
        channels: 1 or 3 (the model's input channels), or ``None`` to keep each image's own
            (grey -> 1, colour -> 3).
        size: ``S`` or ``(H, W)`` to resize to, or ``None``.

    Returns:
        ``float32 [N, C, H, W]`` with values in [0, 1].

    Raises:
        DataError: a file is missing or not an image.
        InputError: the model's channel count cannot be made from an image (not 1 or 3), or
            the images have different sizes and no ``size`` is given.
    """
    files = list(paths)
    if not files:
        raise InputError("no image files given; pass at least one (--image PATH)")
    _check_channels(channels)
    _target(size)
    images = [load_image(p, channels, size) for p in files]
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise InputError(
            f"the images have different sizes {sorted(s[1:] for s in shapes)}; give a size to "
            "resize them to (the model's input size)"
        )
    return torch.stack(images)


def fit_image(img: Any, target: tuple[int, int]) -> Any:
    """A PIL image centre-cropped to ``target``'s aspect ratio and resized (bicubic) to
    ``target = (H, W)``; returned as it is when it already has that size."""
    from PIL import Image

    th, tw = target
    w, h = img.size
    if (h, w) == (th, tw):
        return img
    want = tw / th
    if w / h > want:  # too wide: crop the sides
        nw = max(1, round(h * want))
        left = (w - nw) // 2
        img = img.crop((left, 0, left + nw, h))
    elif w / h < want:  # too tall
        nh = max(1, round(w / want))
        top = (h - nh) // 2
        img = img.crop((0, top, w, top + nh))
    return img.resize((tw, th), Image.Resampling.BICUBIC)
