"""Images in every Pillow mode, each with its reference conversion (NumPy, float64).

``CASES`` maps a name to a function ``(folder) -> (path, reference [H, W] or [H, W, 3])``: the
file is written with Pillow, the reference is computed from the array it was made from, by the
policy of :mod:`deconvviz.base.images` (16-bit / 65535, transparency over white, CMYK as
``(1 - C)(1 - K)``, EXIF orientation applied).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 6, 9


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def i16(folder: Path) -> tuple[Path, np.ndarray]:
    a = _rng().integers(0, 65536, (H, W)).astype(np.uint16)
    a[0, 0], a[0, 1] = 0, 65535
    path = folder / "i16.png"
    Image.fromarray(a).save(path)  # Pillow reads it back as "I;16"
    return path, a / 65535.0


def i32(folder: Path) -> tuple[Path, np.ndarray]:
    a = _rng().integers(0, 65536, (H, W)).astype(np.int32)
    path = folder / "i32.tif"
    Image.fromarray(a).save(path)  # mode "I"
    return path, a / 65535.0


def float_unit(folder: Path) -> tuple[Path, np.ndarray]:
    a = _rng().random((H, W)).astype(np.float32)
    path = folder / "f.tif"
    Image.fromarray(a).save(path)  # mode "F", values in [0, 1]
    return path, a.astype(np.float64)


def float_255(folder: Path) -> tuple[Path, np.ndarray]:
    a = (_rng().random((H, W)) * 255).astype(np.float32)
    path = folder / "f255.tif"
    Image.fromarray(a).save(path)
    return path, a.astype(np.float64) / 255.0


def palette_transparent(folder: Path) -> tuple[Path, np.ndarray]:
    idx = _rng().integers(0, 4, (H, W)).astype(np.uint8)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [40, 200, 90]], np.uint8)
    im = Image.frombytes("P", (W, H), idx.tobytes())
    im.putpalette(colours.ravel().tolist() + [0] * (768 - 12))
    path = folder / "p.png"
    im.save(path, transparency=0)  # palette entry 0 (black) is transparent
    ref = colours[idx] / 255.0
    ref[idx == 0] = 1.0  # transparent: white, not the black stored under it
    return path, ref


def grey_alpha(folder: Path) -> tuple[Path, np.ndarray]:
    rng = _rng()
    lum = rng.integers(0, 256, (H, W)).astype(np.uint8)
    alpha = rng.integers(0, 256, (H, W)).astype(np.uint8)
    path = folder / "la.png"
    Image.merge("LA", [Image.fromarray(lum), Image.fromarray(alpha)]).save(path)
    a = alpha / 255.0
    return path, (lum / 255.0) * a + (1 - a)


def rgba(folder: Path) -> tuple[Path, np.ndarray]:
    rng = _rng()
    rgb = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    alpha = rng.integers(0, 256, (H, W)).astype(np.uint8)
    path = folder / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha])).save(path)
    a = (alpha / 255.0)[..., None]
    return path, (rgb / 255.0) * a + (1 - a)


def cmyk(folder: Path) -> tuple[Path, np.ndarray]:
    c = _rng().integers(0, 256, (H, W, 4)).astype(np.uint8)
    path = folder / "cmyk.tif"
    Image.frombytes("CMYK", (W, H), c.tobytes()).save(path)
    f = c / 255.0
    return path, (1 - f[..., :3]) * (1 - f[..., 3:4])


def exif_rotated(folder: Path) -> tuple[Path, np.ndarray]:
    # a smooth picture (JPEG keeps it), stored sideways with EXIF orientation 6 (rotate 90
    # clockwise to view): the loader must return it upright
    y, x = np.mgrid[0:24, 0:40]
    upright = np.dstack([x / 39.0, y / 23.0, np.full((24, 40), 0.5)])
    stored = np.rot90(upright, k=1)  # 90 counter-clockwise: what the camera wrote
    im = Image.fromarray((stored * 255).round().astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = folder / "rotated.jpg"
    im.save(path, quality=95, exif=exif)
    return path, upright


def rgb8(folder: Path) -> tuple[Path, np.ndarray]:
    a = _rng().integers(0, 256, (H, W, 3)).astype(np.uint8)
    path = folder / "rgb.png"
    Image.fromarray(a).save(path)
    return path, a / 255.0


CASES: dict[str, tuple[str, Callable[[Path], tuple[Path, np.ndarray]], float]] = {
    # name: (Pillow mode as read, maker, tolerance)
    "16-bit grey PNG": ("I;16", i16, 1e-6),
    "32-bit int TIFF": ("I", i32, 1e-6),
    "float TIFF in [0, 1]": ("F", float_unit, 1e-6),
    "float TIFF in [0, 255]": ("F", float_255, 1e-6),
    "palette PNG with transparency": ("P", palette_transparent, 1e-6),
    "grey + alpha PNG": ("LA", grey_alpha, 1.0 / 255),
    "RGBA PNG": ("RGBA", rgba, 1.0 / 255),
    "CMYK TIFF": ("CMYK", cmyk, 1e-6),
    "EXIF-rotated JPEG": ("RGB", exif_rotated, 0.03),
    "8-bit RGB PNG": ("RGB", rgb8, 1e-6),
}
