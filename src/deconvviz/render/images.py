"""Display helpers shared by every renderer: contrast stretching, tensor -> PIL, image grids.

Nothing here writes files; pass what these return to :mod:`deconvviz.base._io` (``save_image``,
``save_figure``) to write them.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import overload

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from deconvviz.base.errors import InputError

__all__ = [
    "DPI",
    "MIN_TILE_PX",
    "dead_tile",
    "display_scale",
    "make_grid",
    "min_text_px",
    "to_display",
    "to_image",
    "wrap_text",
]

_TOL = 1e-6
DPI = 100
"""Dots per inch every figure here is laid out for (the report saves at this resolution)."""
MIN_TILE_PX = 48
"""Smallest side, in screen pixels, a projection or patch tile is drawn at."""


def min_text_px(fig: Figure, dpi: float) -> float | None:
    """Height in pixels of the smallest text ``fig`` draws when saved at ``dpi`` (font size in
    points times ``dpi / 72``); ``None`` when it has no text.

    A page that shows the PNG at ``w`` of its ``W`` pixels shows that text at
    ``min_text_px * w / W`` pixels: the report keeps it at 11 px or more.
    """
    from matplotlib.text import Text

    sizes = [
        float(t.get_fontsize())
        for t in fig.findobj(lambda a: isinstance(a, Text))
        if isinstance(t, Text) and t.get_visible() and t.get_text().strip()
    ]
    return min(sizes) * dpi / 72.0 if sizes else None


def display_scale(side: int, min_px: int = MIN_TILE_PX, min_factor: int = 3) -> int:
    """Integer nearest-neighbour enlargement that makes a ``side``-pixel tile readable.

    At least ``min_factor`` screen pixels per image pixel and at least ``min_px`` pixels per
    tile: a 32x32 image is drawn at 96 px, a 5x5 patch at 50 px.

    Example:
        >>> display_scale(32), display_scale(5), display_scale(200)
        (3, 10, 3)
    """
    side = max(1, int(side))
    return max(int(min_factor), math.ceil(int(min_px) / side))


def wrap_text(text: str, width_in: float, fontsize: float) -> str:
    """``text`` wrapped (at spaces) to fit ``width_in`` inches at ``fontsize`` points.

    The width of a character is taken as 0.6 of the font size, a safe bound for the default
    sans-serif font, so that wrapped titles never run off the figure.
    """
    chars = max(12, int(width_in * 72 / (0.6 * float(fontsize))))
    return "\n".join(
        textwrap.fill(line, chars, break_long_words=False, break_on_hyphens=False) or line
        for line in str(text).split("\n")
    )


def dead_tile(height: int, width: int) -> np.ndarray:
    """The marker drawn for a dead feature map: light grey with darker diagonal hatching.

    Returns:
        ``uint8 [height, width]``: 215 on the background, 160 on stripes 3 pixels wide every
        12 pixels (``(row + col) % 12 < 3``). Tests compare drawn cells with this array.
    """
    rows = np.arange(int(height))[:, None]
    cols = np.arange(int(width))[None, :]
    return np.where((rows + cols) % 12 < 3, 160, 215).astype(np.uint8)


def to_display(t: torch.Tensor) -> torch.Tensor:
    """Contrast-stretch reconstructions around grey, as Zeiler & Fergus display them.

    Each image is mapped independently: 0 becomes grey (0.5) and the value with the largest
    magnitude becomes 0 or 1, i.e. ``0.5 + t / (2 * max|t|)``, so the result lies in [0, 1]
    and the sign of every pixel is kept (darker than grey = negative). An all-zero image
    becomes uniform grey.

    Args:
        t: one image ``[H, W]`` or ``[C, H, W]``, or a batch ``[..., C, H, W]`` (every
            leading index is a separate image).

    Returns:
        A floating tensor of the same shape with values in [0, 1].

    Example:
        >>> to_display(torch.tensor([[[-2.0, 0.0, 1.0]]]))
        tensor([[[0.0000, 0.5000, 0.7500]]])
    """
    if not isinstance(t, torch.Tensor):
        raise InputError(f"to_display expects a torch.Tensor, got {type(t).__name__}")
    if t.dim() < 2:
        raise InputError(
            f"to_display expects an image [H, W], [C, H, W] or a batch [..., C, H, W]; "
            f"got shape {tuple(t.shape)}"
        )
    t = t.detach()
    if not t.is_floating_point():
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise InputError("to_display got NaN or infinite values; check the reconstruction")
    image_dims = min(t.dim(), 3)
    flat = t.reshape(-1, *t.shape[t.dim() - image_dims :]) if t.dim() > 3 else t.unsqueeze(0)
    scale = flat.abs().amax(dim=tuple(range(1, flat.dim())), keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    out = 0.5 + flat / (2 * scale)
    return out.clamp(0.0, 1.0).reshape(t.shape)


def to_image(t: torch.Tensor) -> Image.Image:
    """Turn an image tensor with values in [0, 1] into a PIL image.

    Args:
        t: ``[H, W]``, ``[1, H, W]`` (greyscale, mode ``"L"``) or ``[3, H, W]`` (mode
            ``"RGB"``), values in [0, 1] (use :func:`to_display` first for signed data).

    Returns:
        An 8-bit PIL image; values are rounded to the nearest of 256 levels.
    """
    if not isinstance(t, torch.Tensor):
        raise InputError(f"to_image expects a torch.Tensor, got {type(t).__name__}")
    t = t.detach().cpu()
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise InputError(
            f"to_image expects [H, W], [1, H, W] or [3, H, W]; got shape {tuple(t.shape)}; "
            "pick one image of a batch with t[i]"
        )
    t = t.double()
    if not bool(torch.isfinite(t).all()):
        raise InputError("to_image got NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -_TOL or hi > 1 + _TOL:
        raise InputError(
            f"to_image expects values in [0, 1], got [{lo:.4g}, {hi:.4g}]; pass signed data "
            "(reconstructions, filters) through to_display() first, or rescale it"
        )
    arr = (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(arr[:, :, 0]), mode="L")
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def _as_tiles(tensors: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        if tensors.dim() == 3:  # [B, H, W]: a batch of greyscale images
            tensors = tensors.unsqueeze(1)
        if tensors.dim() != 4:
            raise InputError(
                f"make_grid expects a batch [B, C, H, W] or [B, H, W] or a list of images; "
                f"got shape {tuple(tensors.shape)}"
            )
        items = list(tensors.unbind(0))
    else:
        items = list(tensors)
    tiles = []
    for i, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            raise InputError(f"make_grid: item {i} is a {type(item).__name__}, not a tensor")
        item = item.detach().cpu().double()
        if item.dim() == 2:
            item = item.unsqueeze(0)
        if item.dim() != 3 or item.shape[0] not in (1, 3):
            raise InputError(
                f"make_grid: item {i} has shape {tuple(item.shape)}; each image must be "
                "[H, W], [1, H, W] or [3, H, W]"
            )
        lo, hi = float(item.min()), float(item.max())
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -_TOL or hi > 1 + _TOL:
            raise InputError(
                f"make_grid: item {i} has values in [{lo:.4g}, {hi:.4g}], expected [0, 1]; "
                "pass signed data through to_display() first"
            )
        tiles.append(item.clamp(0, 1))
    if not tiles:
        raise InputError("make_grid got no images")
    return tiles


@overload
def make_grid(
    tensors: torch.Tensor | Sequence[torch.Tensor],
    nrow: int = ...,
    padding: int = ...,
    labels: None = ...,
    *,
    pad_value: float = ...,
    scale: int = ...,
) -> Image.Image: ...


@overload
def make_grid(
    tensors: torch.Tensor | Sequence[torch.Tensor],
    nrow: int = ...,
    padding: int = ...,
    labels: Sequence[str] = ...,
    *,
    pad_value: float = ...,
    scale: int = ...,
) -> Figure: ...


def make_grid(
    tensors: torch.Tensor | Sequence[torch.Tensor],
    nrow: int = 8,
    padding: int = 2,
    labels: Sequence[str] | None = None,
    *,
    pad_value: float = 1.0,
    scale: int = 1,
) -> Image.Image | Figure:
    """Lay images out in a grid, ``nrow`` images per row (torchvision's convention).

    Without ``labels`` the grid is one PIL image, pixel for pixel (each image enlarged
    ``scale`` times with nearest-neighbour, handy for 5x5 filters), tiles separated by
    ``padding`` pixels of ``pad_value``. Images of different sizes are placed top-left in
    tiles of the largest size; greyscale images are shown as grey when mixed with RGB ones.
    With ``labels`` (one string per image) the grid is a matplotlib figure with each label
    as the title of its image.

    Args:
        tensors: a batch ``[B, C, H, W]`` / ``[B, H, W]`` or a list of ``[C, H, W]`` /
            ``[H, W]`` images with values in [0, 1], C being 1 or 3.
        nrow: images per row.
        padding: pixels between tiles (and around the border).
        labels: optional titles, one per image; switches the output to a figure.
        pad_value: grey level of the padding, in [0, 1].
        scale: integer enlargement of every image (PIL output only).

    Returns:
        ``PIL.Image.Image`` when ``labels`` is None, else ``matplotlib.figure.Figure``.

    Example:
        >>> make_grid(torch.rand(10, 3, 8, 8), nrow=5, padding=1).size
        (46, 19)
    """
    if int(nrow) < 1 or int(padding) < 0 or int(scale) < 1:
        raise InputError(
            f"make_grid needs nrow >= 1, padding >= 0 and scale >= 1; "
            f"got nrow={nrow}, padding={padding}, scale={scale}"
        )
    if not 0.0 <= float(pad_value) <= 1.0:
        raise InputError(f"make_grid: pad_value must be in [0, 1], got {pad_value}")
    tiles = _as_tiles(tensors)
    n = len(tiles)
    ncol = min(int(nrow), n)
    rows = math.ceil(n / ncol)
    if labels is not None:
        labels = list(labels)
        if len(labels) != n:
            raise InputError(f"make_grid got {len(labels)} labels for {n} images; give one each")
        return _labelled_figure(tiles, labels, ncol, rows)
    return _pixel_grid(tiles, ncol, rows, padding, float(pad_value), scale)


def _pixel_grid(
    tiles: list[torch.Tensor], ncol: int, rows: int, padding: int, pad_value: float, scale: int
) -> Image.Image:
    """The tiles laid out pixel for pixel, each enlarged ``scale`` times, top-left in its cell."""
    channels = 3 if any(t.shape[0] == 3 for t in tiles) else 1
    th = max(t.shape[1] for t in tiles) * scale
    tw = max(t.shape[2] for t in tiles) * scale
    grid = torch.full(
        (channels, rows * (th + padding) + padding, ncol * (tw + padding) + padding),
        pad_value,
        dtype=torch.float64,
    )
    for k, tile in enumerate(tiles):
        if scale > 1:
            tile = tile.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
        r, c = divmod(k, ncol)
        y, x = padding + r * (th + padding), padding + c * (tw + padding)
        grid[:, y : y + tile.shape[1], x : x + tile.shape[2]] = tile.expand(channels, -1, -1)
    return to_image(grid)


def _labelled_figure(tiles: list[torch.Tensor], labels: list[str], ncol: int, rows: int) -> Figure:
    side = max(max(t.shape[1], t.shape[2]) for t in tiles)
    tile_in = max(1.6, side * display_scale(side) / DPI + 0.2)
    lines = max(str(label).count("\n") + 1 for label in labels)
    fig = Figure(
        figsize=(tile_in * ncol, (tile_in + 0.16 * lines) * rows), dpi=DPI, layout="constrained"
    )
    axes = np.atleast_1d(fig.subplots(rows, ncol, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, tile, label in zip(axes, tiles, labels, strict=False):
        if tile.shape[0] == 1:
            ax.imshow(tile[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(tile.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(str(label), fontsize=8)
    return fig
