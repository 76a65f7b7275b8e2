"""Pictures of convolution filters: a grid of the filters, and their RMS against the radius."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from deconvviz.analyses.filters import filter_rms, filter_weight
from deconvviz.base.checks import check_positive_int
from deconvviz.base.errors import InputError
from deconvviz.render.images import make_grid, to_display

__all__ = ["filter_grid", "rms_figure"]


def _layout(
    in_c: int,
    per_channel: bool | None,
    max_filters: int | None,
    max_channels: int | None,
    nrow: int | None,
) -> bool:
    """Check :func:`filter_grid`'s options; return whether to lay the filters out per channel."""
    for label, value in (
        ("max_filters", max_filters),
        ("max_channels", max_channels),
        ("nrow", nrow),
    ):
        check_positive_int(label, value, or_none=True)
    if per_channel is None:
        per_channel = in_c not in (1, 3)
    if not per_channel and in_c not in (1, 3):
        raise InputError(
            f"filters with {in_c} input channels cannot be shown as images; use "
            "per_channel=True (one tile per input channel)"
        )
    return per_channel


def filter_grid(
    weight: Tensor | nn.Module,
    *,
    per_channel: bool | None = None,
    max_filters: int | None = None,
    max_channels: int | None = None,
    nrow: int | None = None,
    scale: int = 4,
    padding: int = 1,
    title: str | None = None,
) -> Image.Image:
    """A grid image of a conv layer's filters.

    Each filter is contrast-stretched around grey on its own (:func:`to_display`: 0 is grey,
    its largest-magnitude weight black or white), so its pattern shows whatever its norm.

    A first layer (1 or 3 input channels) is shown one tile per filter, as a greyscale or RGB
    image, ``nrow`` tiles per row (default: a near-square grid). Deeper layers are shown per
    input channel: one row per filter, one column per input channel (all tiles of a row share
    the filter's scale, so you can compare how much each input channel matters).

    Args:
        weight: a ``Conv2d`` layer or its weight ``[out, in, kh, kw]``.
        per_channel: force the per-input-channel layout (True) or the image layout (False;
            needs 1 or 3 input channels). Default: image layout for 1 or 3 input channels.
        max_filters: show only the first filters.
        max_channels: per-channel layout: show only the first input channels.
        nrow: image layout: tiles per row.
        scale: integer enlargement of each kernel pixel (5x5 kernels are tiny).
        padding: pixels between tiles (white).
        title: a name (the layer's) to head the grid with, followed by what the grid shows
            (e.g. ``"conv2: 16 filters (rows) x 6 input channels (columns), 5x5 each ..."``),
            on a white strip above it. Default: no heading.

    Returns:
        A PIL image (mode ``"L"`` or ``"RGB"``).

    Example:
        >>> from deconvviz.sources.models import LeNet5
        >>> filter_grid(LeNet5().conv1, scale=4).size  # 32 5x5 filters, 6 a row, 1 px apart
        (127, 127)
    """
    w = filter_weight(weight).cpu()
    if w.dim() != 4:
        raise InputError(
            f"filter_grid draws Conv2d filters [out, in, kh, kw]; got shape {tuple(w.shape)}"
        )
    per_channel = _layout(int(w.shape[1]), per_channel, max_filters, max_channels, nrow)
    n_out, n_in, kh, kw = (int(v) for v in w.shape)
    if max_filters is not None:
        w = w[:max_filters]
    disp = to_display(w.double())  # per filter: [in, kh, kw] stretched around grey
    if not per_channel:
        grid = make_grid(
            disp, nrow=nrow or math.ceil(math.sqrt(len(disp))), padding=padding, scale=scale
        )
        colour = "RGB" if n_in == 3 else "greyscale"
        shows = f"{_of(len(disp), n_out)} filters, {kh}x{kw} {colour} (0\u00a0=\u00a0grey)"
        return grid if title is None else _headed(grid, f"{title}: {shows}")
    if max_channels is not None:
        disp = disp[:, :max_channels]
    k = disp.shape[1]
    tiles = disp.reshape(-1, 1, *disp.shape[2:])
    grid = make_grid(tiles, nrow=k, padding=padding, scale=scale)
    if title is None:
        return grid
    return _headed(
        grid,
        f"{title}: {_of(len(disp), n_out)} filters (rows) x {_of(k, n_in)} input channels "
        f"(columns), {kh}x{kw} each; 0\u00a0=\u00a0grey, each row scaled to its largest weight",
    )


def _of(shown: int, total: int) -> str:
    return str(total) if shown == total else f"first {shown} of {total}"


def _headed(grid: Image.Image, text: str, size: int = 13) -> Image.Image:
    """``grid`` below a white strip with ``text``, wrapped to the grid's width (at least
    wide enough for 32 characters; the canvas widens for a narrow grid)."""
    font = ImageFont.load_default(size=size)
    width = max(grid.width, int(font.getlength("x" * 32)) + 8)
    lines: list[str] = []
    for word in text.split(" "):  # a no-break space keeps "0 = grey" on one line
        if lines and font.getlength(f"{lines[-1]} {word}") <= width - 12:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    line_h = size + 4
    out = Image.new(grid.mode, (width, grid.height + line_h * len(lines) + 6), "white")
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        # the no-break spaces kept words together; the font has no glyph for them
        draw.text((4, 3 + i * line_h), line.replace("\u00a0", " "), fill="black", font=font)
    out.paste(grid, (0, line_h * len(lines) + 6))
    return out


def rms_figure(
    weight: Tensor | nn.Module, radius: float | None = 0.1, title: str | None = None
) -> Figure:
    """Bar chart of each filter's RMS, with the renormalisation radius as a line.

    Args:
        weight: a conv layer or its weight ``[out, in, *kernel]``.
        radius: draw this radius (None: no line).
        title: figure title.

    Returns:
        A matplotlib figure.
    """
    rms = filter_rms(weight).detach().cpu().double().numpy()
    fig = Figure(figsize=(max(4.0, 0.12 * len(rms) + 1.5), 2.8), layout="constrained")
    ax = fig.subplots()
    idx = np.arange(len(rms))
    colours = ["tab:red" if radius is not None and r > radius else "tab:blue" for r in rms]
    ax.bar(idx, rms, color=colours, width=0.8)
    if radius is not None:
        ax.axhline(radius, color="k", linestyle="--", linewidth=1, label=f"radius {radius:g}")
        ax.legend(fontsize=7)
    ax.set_xlabel("filter index")
    ax.set_ylabel("RMS of the filter's weights")
    ax.set_xlim(-0.6, len(rms) - 0.4)
    if title:
        ax.set_title(title, fontsize=9)
    return fig
