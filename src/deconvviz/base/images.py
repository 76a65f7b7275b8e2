"""Image files into model inputs: the one loader every command and dataset folder uses.

Policy (documented once, here): a file is read with Pillow, turned upright by its EXIF
orientation, and converted to the model's channels -- colour to greyscale by ITU-R 601-2 luma for
1 channel, greyscale repeated for 3 -- then, when a size is asked for, **centre-cropped** to that
size's aspect ratio and resized to it with **bicubic** interpolation; values are ``float32`` in
``[0, 1]`` (no normalisation: the library's models take ``[0, 1]`` input).

Every Pillow mode is read at its own depth (:func:`image_array`):

=================  ===========================================================================
mode               read as
=================  ===========================================================================
``1``, ``L``       ``/ 255`` (``1``: 0 or 1)
``RGB``, ``P``     ``/ 255`` (a palette through its colours)
``I;16*``          16-bit grey, ``/ 65535`` (a 16-bit PNG)
``I``              32-bit integer grey, ``/ 65535`` (Pillow's mode for 16-bit data from several
                   formats), clipped to ``[0, 1]``
``F``              float grey: as it is when in ``[0, 1]``, else ``/ 255`` when at most 255,
                   else ``/ 65535``; clipped to ``[0, 1]``
``LA``, ``RGBA``,  transparency composited over **white** (a transparent pixel is white, not
``PA``, ``P`` +    the colour stored under it)
transparency
``CMYK``           ``R = (1 - C)(1 - K)``, the same for G (M) and B (Y)
other              Pillow's conversion to ``RGB``
=================  ===========================================================================

:func:`load_image` reads one file, :func:`load_images` a batch, and
:class:`deconvviz.sources.datasets.FolderDataset` reads its items the same way.

Rank 0 (base): imports only torch, NumPy/Pillow (inside the functions) and
:mod:`deconvviz.base.errors`.

Example::

    from deconvviz.base.images import load_image, load_images

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

from deconvviz.base.errors import DataError, InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "eight_bit",
    "fit_image",
    "image_array",
    "load_image",
    "load_images",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""File suffixes taken for images (lower case)."""

_GREY_MODES = ("L", "1", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_HIGH_DEPTH = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


def _has_alpha(im: Any) -> bool:
    return bool(im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info))


def image_array(im: Any, channels: int | None = None) -> Any:
    """A PIL image as a ``float32`` array in ``[0, 1]``, ``[H, W]`` (grey) or ``[H, W, 3]``,
    by the module's table of modes (EXIF orientation applied; ``channels`` 1 or 3 converts
    grey <-> colour, ``None`` keeps the image's own)."""
    import numpy as np
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im) or im
    grey = im.mode in _GREY_MODES
    if im.mode in _HIGH_DEPTH:
        arr = np.asarray(im).astype(np.float64)
        if im.mode == "F":
            finite = arr[np.isfinite(arr)]
            top = float(finite.max()) if finite.size else 0.0
            low = float(finite.min()) if finite.size else 0.0
            scale = 1.0 if (low >= 0 and top <= 1) else 255.0 if top <= 255 else 65535.0
        else:
            scale = 65535.0
        out = np.clip(np.nan_to_num(arr / scale), 0.0, 1.0)
    elif im.mode == "CMYK":
        cmyk = np.asarray(im).astype(np.float64) / 255.0
        out = (1.0 - cmyk[..., :3]) * (1.0 - cmyk[..., 3:4])
    else:
        if _has_alpha(im):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, rgba).convert("L" if grey else "RGB")
        out = np.asarray(im.convert("L" if grey else "RGB")).astype(np.float64) / 255.0
    if channels == 1 and out.ndim == 3:
        out = out @ np.asarray(_LUMA)
    elif channels == 3 and out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return out.astype(np.float32)


def _fit_array(arr: Any, target: tuple[int, int]) -> Any:
    """:func:`fit_image` on a float array ``[H, W]`` or ``[H, W, 3]``, channel by channel
    (Pillow's float mode ``F``: no rounding to 8 bits), clipped to ``[0, 1]``."""
    import numpy as np
    from PIL import Image

    planes = [arr] if arr.ndim == 2 else [arr[..., c] for c in range(arr.shape[2])]
    fitted = [
        np.asarray(fit_image(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32)), target))
        for p in planes
    ]
    out = fitted[0] if arr.ndim == 2 else np.stack(fitted, axis=2)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


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
    from PIL import Image, ImageOps, UnidentifiedImageError

    _check_channels(channels)
    target = _target(size)
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"image {file} does not exist; check the path")
    try:
        with Image.open(file) as im:
            im.load()
            if eight_bit(im):  # the common case: 8-bit resizing, as Pillow does it
                upright = ImageOps.exif_transpose(im) or im
                grey = upright.mode in _GREY_MODES
                img = upright.convert({1: "L", 3: "RGB"}.get(channels or 0, "L" if grey else "RGB"))
                arr = None
            else:
                arr = image_array(im, channels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read {file} as an image ({exc}); {fix}") from exc
    if arr is None:
        if target is not None:
            img = fit_image(img, target)
        arr = np.asarray(img, dtype=np.float32) / 255.0
    elif target is not None:
        arr = _fit_array(arr, target)
    return torch.from_numpy(arr[None].copy() if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())


def eight_bit(im: Any) -> bool:
    """Whether Pillow's own 8-bit conversion reads ``im`` right (no alpha, depth or CMYK)."""
    return im.mode in ("1", "L", "RGB", "P", "YCbCr", "LAB", "HSV") and not _has_alpha(im)


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
