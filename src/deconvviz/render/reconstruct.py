"""Figures of reconstructions, shown the way Zeiler & Fergus show them (tensors in, figures out).

* :func:`fig2_block` -- one feature map's top-``k`` projections beside the image patches that
  caused them, as one PIL image (the paper's Fig. 2 cell);
* :func:`top_projections_figure` -- those cells for many feature maps of a layer, each labelled
  with its channel and strongest activation value;
* :func:`image_projections_figure` -- an input image beside the projections of its strongest
  feature maps, labelled with channel and activation value;
* :func:`comparison_figure` -- our deconvnet beside captum's attribution methods, per image.

Every reconstruction is contrast-stretched around grey on its own
(:func:`deconvviz.render.images.to_display`): grey is zero, the brightest or darkest pixel is the
largest magnitude. Nothing here writes files; pass the results to :mod:`deconvviz._io`.

Example::

    from deconvviz._io import save_figure
    from deconvviz.render.reconstruct import top_projections_figure

    save_figure("conv2.png", top_projections_figure(results["conv2"], range(16)))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from deconvviz.errors import InputError
from deconvviz.render.images import make_grid, to_display

if TYPE_CHECKING:
    from deconvviz.compare import Comparison
    from deconvviz.reconstruct import ImageProjections, LayerReconstructions

__all__ = [
    "OUTSIDE",
    "comparison_figure",
    "fig2_block",
    "image_projections_figure",
    "input_display",
    "outside_mask",
    "top_projections_figure",
]

_GAP = 3  # pixels between the projections and the patches of one cell
OUTSIDE = 0.8
"""Grey level of patch pixels that lie outside the image (the receptive field ran off it)."""


def input_display(images: Tensor) -> Tensor:
    """Input images ready for display: kept as they are when in [0, 1], else min-max stretched.

    Args:
        images: ``[..., C, H, W]`` images in the model's input space.

    Returns:
        A float tensor of the same shape with values in [0, 1]; when any value lies outside
        [0, 1] (normalised inputs), each image is stretched from its own minimum to maximum.
    """
    if not isinstance(images, Tensor) or images.dim() < 2:
        raise InputError("input_display expects image tensors [..., C, H, W]")
    t = images.detach().cpu().double()
    if t.numel() == 0 or (float(t.min()) >= 0.0 and float(t.max()) <= 1.0):
        return t
    flat = t.reshape(-1, *t.shape[-3:]) if t.dim() >= 3 else t.reshape(1, 1, *t.shape)
    lo = flat.amin(dim=(1, 2, 3), keepdim=True)
    hi = flat.amax(dim=(1, 2, 3), keepdim=True)
    out = (flat - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return out.reshape(t.shape)


def fig2_block(
    reconstructions: Tensor,
    patches: Tensor,
    nrow: int | None = None,
    padding: int = 1,
    outside: Tensor | None = None,
) -> Image.Image:
    """One feature map's projections (left) beside the image patches that caused them (right).

    Args:
        reconstructions: ``[k, C, h, w]`` projections (signed; contrast-stretched here).
        patches: ``[k, C, h, w]`` the input patches, in the model's input space.
        nrow: images per row of each half (default: ``ceil(sqrt(k))``, a 3x3 square for 9).
        padding: pixels between tiles.
        outside: ``[k, h, w]`` True where a patch lies outside its image (drawn light grey,
            :data:`OUTSIDE`, so that it is not mistaken for black pixels).

    Returns:
        A PIL image (mode ``"L"`` for one channel, ``"RGB"`` for three).

    Example:
        >>> fig2_block(torch.randn(9, 1, 5, 5), torch.rand(9, 1, 5, 5)).size
        (41, 19)
    """
    if not isinstance(reconstructions, Tensor) or reconstructions.dim() != 4:
        raise InputError("fig2_block expects reconstructions [k, C, h, w]")
    if not isinstance(patches, Tensor) or patches.shape != reconstructions.shape:
        raise InputError(
            f"fig2_block expects patches of the reconstructions' shape "
            f"{tuple(reconstructions.shape)}, got "
            f"{tuple(patches.shape) if isinstance(patches, Tensor) else type(patches).__name__}"
        )
    k = reconstructions.shape[0]
    nrow = nrow or max(1, math.ceil(math.sqrt(k)))
    left = make_grid(to_display(reconstructions.cpu()), nrow=nrow, padding=padding)
    shown = input_display(patches)
    if outside is not None:
        if tuple(outside.shape) != (k, *patches.shape[-2:]):
            raise InputError(
                f"outside must be [k, h, w] = {(k, *patches.shape[-2:])}, "
                f"got {tuple(outside.shape)}"
            )
        shown = torch.where(outside.cpu()[:, None], torch.full_like(shown, OUTSIDE), shown)
    right = make_grid(shown, nrow=nrow, padding=padding)
    mode = "RGB" if "RGB" in (left.mode, right.mode) else "L"
    left, right = left.convert(mode), right.convert(mode)
    fill = 255 if mode == "L" else (255, 255, 255)
    out = Image.new(mode, (left.width + _GAP + right.width, max(left.height, right.height)), fill)
    out.paste(left, (0, 0))
    out.paste(right, (left.width + _GAP, 0))
    return out


def _show(ax: Any, img: Image.Image | np.ndarray) -> None:
    arr = np.asarray(img)
    if arr.ndim == 2:
        ax.imshow(arr, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(arr, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def top_projections_figure(
    rec: LayerReconstructions,
    channels: Sequence[int] | None = None,
    *,
    ncols: int = 8,
    page: tuple[int, int] | None = None,
    title: str | None = None,
) -> Figure:
    """The paper's Fig. 2 for one layer: per feature map, top-``k`` projections beside patches.

    Args:
        rec: one layer of :func:`deconvviz.reconstruct.reconstruct_dataset`'s result.
        channels: which rows of ``rec`` to show (positions in ``rec.channels``; default all).
        ncols: cells per row.
        page: ``(page, pages)`` to add to the title when a layer is split over several figures.
        title: figure title (default: layer, rule, k and what the halves show).

    Returns:
        A matplotlib figure; each cell is titled ``ch <channel> · <strongest activation>``.
        Padding entries (index ``-1``: the dataset had fewer than ``k`` images) are left out.
    """
    n = rec.reconstructions.shape[0]
    rows_sel = list(range(n)) if channels is None else [int(c) for c in channels]
    if not rows_sel:
        raise InputError("top_projections_figure needs at least one feature map to show")
    bad = [r for r in rows_sel if not 0 <= r < n]
    if bad:
        raise InputError(f"row {bad[0]} is out of range: the result holds {n} feature maps")
    blocks = []
    for r in rows_sel:
        # only the real entries: padding (fewer images than k, index -1) is never drawn as a tile
        real = rec.indices[r] >= 0
        if not bool(real.any()):
            raise InputError(f"feature map row {r} has no top activation to draw (no images)")
        outside = outside_mask(rec, r)
        blocks.append(
            fig2_block(
                rec.reconstructions[r][real],
                rec.patches[r][real],
                nrow=max(1, math.ceil(math.sqrt(int(real.sum())))),
                outside=None if outside is None else outside[real],
            )
        )
    ncols = max(1, min(int(ncols), len(blocks)))
    nrows = math.ceil(len(blocks) / ncols)
    bw, bh = blocks[0].size
    cell_w = 2.0
    cell_h = cell_w * bh / bw + 0.32
    fig = Figure(figsize=(cell_w * ncols, cell_h * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, r, block in zip(axes, rows_sel, blocks, strict=False):
        ax.set_axis_on()
        _show(ax, block)
        v = float(rec.values[r, 0])
        value = f"{v:.3g}" if math.isfinite(v) else "n/a"
        ax.set_title(f"ch {int(rec.channels[r])} · {value}", fontsize=8)
    if title is None:
        rf = rec.receptive_field
        size = f", receptive field {rf.size[0]}x{rf.size[1]} px" if rf is not None else ""
        found = int((rec.indices[rows_sel] >= 0).sum(dim=1).max())
        few = f" (top-{rec.k} asked; only {found} images)" if found < rec.k else ""
        title = (
            f"{rec.layer}: top-{found} activations per feature map{few} ({rec.rule} "
            f"projections left, image patches right{size})"
        )
    if page is not None:
        title += f" [page {page[0]}/{page[1]}]"
    fig.suptitle(title, fontsize=10)
    return fig


def outside_mask(rec: LayerReconstructions, row: int) -> Tensor | None:
    """``[k, h, w]`` True where the patches of feature map ``rec.channels[row]`` run off the image.

    ``None`` when the layer has no receptive field (the patches are whole images).
    """
    rf = rec.receptive_field
    if rf is None:
        return None
    k, _, h, w = rec.patches[row].shape
    height, width = rec.input_size
    y0 = rec.positions[row, :, 0] * rf.jump[0] + rf.start[0]  # [k] unclipped box origin
    x0 = rec.positions[row, :, 1] * rf.jump[1] + rf.start[1]
    ys = torch.arange(h).view(1, h) + y0.view(k, 1)  # [k, h] image row of each patch row
    xs = torch.arange(w).view(1, w) + x0.view(k, 1)
    row_in = (ys >= 0) & (ys < height)
    col_in = (xs >= 0) & (xs < width)
    inside = row_in[:, :, None] & col_in[:, None, :]
    missing = rec.indices[row] < 0  # k larger than the dataset: nothing there
    return ~inside | missing.view(k, 1, 1)


def image_projections_figure(
    res: ImageProjections,
    index: int = 0,
    *,
    max_channels: int | None = 64,
    ncols: int = 8,
    title: str | None = None,
) -> Figure:
    """One image beside the projections of its strongest feature maps of one layer.

    Args:
        res: one layer of :func:`deconvviz.reconstruct.reconstruct_images`'s result.
        index: which image.
        max_channels: show the strongest this many feature maps (``None``: every projected one).
        ncols: panels per row.
        title: figure title prefix (e.g. the image's name).

    Returns:
        A matplotlib figure: the input first, then projections ordered by activation value
        (strongest first), each titled ``ch <channel>`` and its activation value.
    """
    n = res.images.shape[0]
    if not 0 <= int(index) < n:
        raise InputError(f"image index {index} is out of range (there are {n} images)")
    values = res.values[index]
    order = torch.argsort(values, descending=True, stable=True)
    if max_channels is not None:
        order = order[: max(1, int(max_channels))]
    tiles = [input_display(res.images[index])]
    labels = ["input"]
    for o in order.tolist():
        tiles.append(to_display(res.reconstructions[index, o].cpu()))
        labels.append(f"ch {int(res.channels[o])}\n{float(values[o]):.3g}")
    fig = make_grid(tiles, nrow=ncols, labels=labels)
    head = f"{title}: " if title else ""
    shown = len(order)
    fig.suptitle(
        f"{head}{res.layer}, strongest activation of {shown} feature map"
        f"{'s' if shown != 1 else ''} ({res.rule} projections)",
        fontsize=10,
    )
    return fig


def comparison_figure(
    comp: Comparison,
    class_names: Sequence[str] | None = None,
    *,
    max_images: int | None = 8,
) -> Figure:
    """Our deconvnet beside captum's attribution methods: one row per image, one column per method.

    Args:
        comp: from :func:`deconvviz.compare.compare_methods`.
        class_names: names of the classes, to label each row's target class.
        max_images: show at most this many images.

    Returns:
        A matplotlib figure; every map is contrast-stretched around grey on its own.
    """
    n = comp.images.shape[0]
    if max_images is not None:
        n = min(n, max(1, int(max_images)))
    cols = 1 + len(comp.methods)
    fig = Figure(figsize=(1.7 * cols, 1.8 * n + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, cols, squeeze=False))
    for i in range(n):
        t = int(comp.target[i])
        name = class_names[t] if class_names is not None and 0 <= t < len(class_names) else str(t)
        _show(axes[i, 0], _tile(input_display(comp.images[i])))
        axes[i, 0].set_ylabel(f"{name}\np={float(comp.probability[i]):.2f}", fontsize=8)
        for m, method in enumerate(comp.methods):
            _show(axes[i, m + 1], _tile(to_display(comp.attributions[m, i].cpu())))
            if i == 0:
                axes[i, m + 1].set_title(method.replace("_", " "), fontsize=8)
        if i == 0:
            axes[i, 0].set_title("input", fontsize=8)
    fig.suptitle("attributions for the target class (grey = 0)", fontsize=10)
    return fig


def _tile(t: Tensor) -> np.ndarray:
    arr = (t.detach().cpu().double().clamp(0, 1) * 255).round().to(torch.uint8)
    if arr.dim() == 3 and arr.shape[0] == 1:
        return arr[0].numpy()
    if arr.dim() == 3:
        return arr.permute(1, 2, 0).numpy()
    return arr.numpy()
