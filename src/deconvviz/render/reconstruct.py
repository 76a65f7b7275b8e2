"""Figures of reconstructions, shown the way Zeiler & Fergus show them (tensors in, figures out).

* :func:`fig2_block` -- one feature map's top-``k`` projections beside the image patches that
  caused them, as one PIL image (the paper's Fig. 2 cell);
* :func:`top_projections_figure` -- those cells for many feature maps of a layer, each titled
  ``ch <channel>: max act <value>``; dead maps (never above 0) drawn as hatched cells and listed;
* :func:`image_projections_figure` -- an input image beside the projections of its strongest
  feature maps, titled the same way;
* :func:`comparison_figure` -- our deconvnet beside captum's attribution methods, per image.

Every reconstruction is contrast-stretched around grey on its own
(:func:`deconvviz.render.images.to_display`): grey is zero, the brightest or darkest pixel is the
largest magnitude. Nothing here writes files; pass the results to :mod:`deconvviz.base._io`.

Example::

    from deconvviz.base._io import save_figure
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

from deconvviz.analyses.topk import canvas_inside
from deconvviz.base.checks import class_label
from deconvviz.base.errors import InputError
from deconvviz.render.images import DPI, dead_tile, display_scale, make_grid, to_display, wrap_text

if TYPE_CHECKING:
    from deconvviz.analyses.compare import Comparison
    from deconvviz.analyses.reconstruct import ImageProjections, LayerReconstructions

__all__ = [
    "OUTSIDE",
    "comparison_figure",
    "draw_dead",
    "fig2_block",
    "image_projections_figure",
    "input_display",
    "outside_mask",
    "top_projections_figure",
    "unit_tiles",
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
    *,
    keep: Tensor | None = None,
    scale: int = 1,
) -> Image.Image:
    """One feature map's projections (left) beside the image patches that caused them (right).

    Args:
        reconstructions: ``[k, C, h, w]`` projections (signed; contrast-stretched here).
        patches: ``[k, C, h, w]`` the input patches, in the model's input space.
        nrow: images per row of each half (default: ``ceil(sqrt(k))``, a 3x3 square for 9).
        padding: pixels between tiles.
        outside: ``[k, h, w]`` True where a patch lies outside its image (drawn light grey,
            :data:`OUTSIDE`, so that it is not mistaken for black pixels).
        keep: ``[k]`` False for entries that are not real activations (the unit did not fire
            on that many images, or the dataset was smaller than ``k``): their tiles are left
            blank (white, like the padding) instead of showing a projection of nothing.
        scale: integer nearest-neighbour enlargement of every tile (not of the padding).

    Returns:
        A PIL image (mode ``"L"`` for one channel, ``"RGB"`` for three).

    Example:
        >>> fig2_block(torch.randn(9, 1, 5, 5), torch.rand(9, 1, 5, 5)).size
        (41, 19)
    """
    k = _check_block_inputs(reconstructions, patches, scale)
    nrow = nrow or max(1, math.ceil(math.sqrt(k)))
    recs = to_display(reconstructions.cpu())
    shown = _grey_outside(input_display(patches), outside)
    recs, shown = _blank_unkept(recs, shown, keep)
    left = make_grid(recs, nrow=nrow, padding=padding, scale=scale)
    right = make_grid(shown, nrow=nrow, padding=padding, scale=scale)
    return _side_by_side(left, right, _GAP * scale)


def _check_block_inputs(reconstructions: Any, patches: Any, scale: Any) -> int:
    """:func:`fig2_block`'s argument checks; returns ``k``, the number of entries."""
    if not isinstance(reconstructions, Tensor) or reconstructions.dim() != 4:
        raise InputError("fig2_block expects reconstructions [k, C, h, w]")
    if not isinstance(patches, Tensor) or patches.shape != reconstructions.shape:
        raise InputError(
            f"fig2_block expects patches of the reconstructions' shape "
            f"{tuple(reconstructions.shape)}, got "
            f"{tuple(patches.shape) if isinstance(patches, Tensor) else type(patches).__name__}"
        )
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise InputError(f"fig2_block: scale must be a positive integer, got {scale!r}")
    return int(reconstructions.shape[0])


def _grey_outside(shown: Tensor, outside: Tensor | None) -> Tensor:
    """``shown`` (``[k, C, h, w]`` patches) with the pixels ``outside`` the image set to
    :data:`OUTSIDE`."""
    if outside is None:
        return shown
    k = shown.shape[0]
    if tuple(outside.shape) != (k, *shown.shape[-2:]):
        raise InputError(
            f"outside must be [k, h, w] = {(k, *shown.shape[-2:])}, got {tuple(outside.shape)}"
        )
    return torch.where(outside.cpu()[:, None], torch.full_like(shown, OUTSIDE), shown)


def _blank_unkept(recs: Tensor, shown: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor]:
    """``recs`` and ``shown`` with the entries that ``keep`` leaves out painted white."""
    if keep is None:
        return recs, shown
    k = recs.shape[0]
    if tuple(keep.shape) != (k,):
        raise InputError(f"keep must be [k] = [{k}], got {tuple(keep.shape)}")
    blank = ~keep.cpu().bool().view(k, 1, 1, 1)
    recs = torch.where(blank, torch.ones_like(recs), recs)
    shown = torch.where(blank, torch.ones_like(shown), shown)
    return recs, shown


def _side_by_side(left: Image.Image, right: Image.Image, gap: int) -> Image.Image:
    """``left`` and ``right`` pasted on one white image, ``gap`` pixels apart (RGB if either is)."""
    mode = "RGB" if "RGB" in (left.mode, right.mode) else "L"
    left, right = left.convert(mode), right.convert(mode)
    fill = 255 if mode == "L" else (255, 255, 255)
    out = Image.new(mode, (left.width + gap + right.width, max(left.height, right.height)), fill)
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


def _show(ax: Any, img: Image.Image | np.ndarray) -> None:
    arr = np.asarray(img)
    if arr.ndim == 2:
        ax.imshow(arr, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(arr, interpolation="nearest")
    _bare(ax)


def _bare(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _images_text(images: int | None) -> str:
    if images is None:
        return "the scanned images"
    return f"{images} image{'' if images == 1 else 's'}"


def draw_dead(ax: Any, height: int, width: int, text: str, fontsize: float = 7) -> None:
    """Draw the dead-unit marker (:func:`deconvviz.render.images.dead_tile`) with ``text``."""
    ax.imshow(dead_tile(height, width), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=fontsize,
        bbox={"facecolor": "white", "edgecolor": "0.4", "boxstyle": "round,pad=0.3"},
    )
    _bare(ax)


def _value(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else "n/a"


def _any_negative(values: Tensor) -> bool:
    """Whether any finite value is below 0 (the layer is taken before its ReLU)."""
    return bool((values[torch.isfinite(values)] < 0).any())


def _grid_figure(width: float, height: float, nrows: int, ncols: int) -> tuple[Figure, np.ndarray]:
    """A ``width`` x ``height`` inch figure with ``nrows`` x ``ncols`` axes, all switched off
    (each cell that is drawn switches its own back on); the axes are returned flat."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    return fig, axes


def _first_entries(rec: LayerReconstructions, n: int) -> LayerReconstructions:
    """``rec`` keeping only its first ``n`` entries per feature map."""
    import dataclasses

    return dataclasses.replace(
        rec,
        values=rec.values[:, :n],
        indices=rec.indices[:, :n],
        positions=rec.positions[:, :n],
        boxes=rec.boxes[:, :n],
        reconstructions=rec.reconstructions[:, :n],
        patches=rec.patches[:, :n],
    )


def top_projections_figure(
    rec: LayerReconstructions,
    channels: Sequence[int] | None = None,
    *,
    ncols: int = 8,
    page: tuple[int, int] | None = None,
    title: str | None = None,
) -> Figure:
    """The paper's Fig. 2 for one layer: per feature map, top-``k`` projections beside patches.

    Tiles are enlarged with nearest-neighbour (:func:`deconvviz.render.images.display_scale`:
    a 32x32 patch is drawn at 96 px). A feature map that never rose above 0 on the scanned
    images (:attr:`LayerReconstructions.dead`) is drawn as a hatched grey cell saying so, and
    the dead maps are listed under the figure; entries of a live map that are not above 0 (it
    fired on fewer than ``k`` images) are left blank.

    Args:
        rec: one layer of :func:`deconvviz.analyses.reconstruct.reconstruct_dataset`'s result.
        channels: which rows of ``rec`` to show (positions in ``rec.channels``; default all).
        ncols: cells per row.
        page: ``(page, pages)`` to add to the title when a layer is split over several figures.
        title: figure title (default: layer, rule, k and what the halves show).

    Returns:
        A matplotlib figure; each live cell is titled ``ch <channel>: max act <value>``
        (the map's strongest activation over the images), each dead one ``ch <channel>: dead``.
        Padding entries (index ``-1``: the dataset had fewer than ``k`` images) are left out.
    """
    rows_sel = _rows_to_show(rec.reconstructions.shape[0], channels)
    asked = rec.k
    found = rec.found
    if 0 < found < asked:  # fewer images than k: drop the padding columns, draw a top-`found`
        rec = _first_entries(rec, found)
    fired = rec.fired
    blocks = _top_blocks(rec, rows_sel)
    ncols = max(1, min(int(ncols), len(blocks)))
    nrows = math.ceil(len(blocks) / ncols)
    bw, bh = blocks[0].size
    cell_w = max(2.0, bw / DPI + 0.2)
    cell_h = bh * (cell_w - 0.2) / bw + 0.45
    width = cell_w * ncols
    dead_rows = [r for r in rows_sel if not bool(fired[r].any())]
    title, footer = _top_texts(rec, dead_rows, asked, found, title, page, width)
    extra = 0.2 * (title.count("\n") + footer.count("\n") + 2) + 0.3
    fig, axes = _grid_figure(width, cell_h * nrows + extra, nrows, ncols)
    for ax, r in zip(axes, rows_sel, strict=False):
        _top_cell(ax, rec, r, blocks[rows_sel.index(r)], dead=r in dead_rows)
    fig.suptitle(title, fontsize=10)
    fig.supxlabel(footer, fontsize=9)
    return fig


def unit_tiles(
    rec: LayerReconstructions, channels: Sequence[int] | None = None
) -> list[tuple[int, Image.Image | None, str]]:
    """The paper's Fig. 2 for one layer as separate per-unit tiles, for a page to lay out.

    Returns:
        ``(channel, block, caption)`` per row of ``rec`` (all, or those in ``channels``):
        ``block`` is :func:`fig2_block` (projections left, patches right, tiles enlarged;
        ``None`` for a dead unit) and ``caption`` is the text a figure draws above it
        (``ch <channel>: max act <value>``, or ``ch <channel>: dead, never > 0 on ...``), for
        the page to show as text.
    """
    rows_sel = _rows_to_show(rec.reconstructions.shape[0], channels)
    if 0 < rec.found < rec.k:
        rec = _first_entries(rec, rec.found)
    fired = rec.fired
    out: list[tuple[int, Image.Image | None, str]] = []
    blocks = _top_blocks(rec, rows_sel)
    for r, block in zip(rows_sel, blocks, strict=True):
        ch = int(rec.channels[r])
        top = float(rec.values.double()[r, 0])
        if not bool(fired[r].any()):
            text = f"ch {ch}: dead, never > 0 on {_images_text(rec.images)}"
            if math.isfinite(top) and top < 0:
                text += f" (max act {_value(top)}, pre-ReLU)"
            out.append((ch, None, text))
            continue
        text = f"ch {ch}: max act {_value(top)}"
        real = int(fired[r].sum())
        if real < rec.k:
            text += f"; only {real} of {rec.k} images > 0"
        out.append((ch, block, text))
    return out


def _rows_to_show(n: int, channels: Sequence[int] | None) -> list[int]:
    """The rows (of ``n`` feature maps) :func:`top_projections_figure` is asked to draw."""
    rows_sel = list(range(n)) if channels is None else [int(c) for c in channels]
    if not rows_sel:
        raise InputError("top_projections_figure needs at least one feature map to show")
    bad = [r for r in rows_sel if not 0 <= r < n]
    if bad:
        raise InputError(f"row {bad[0]} is out of range: the result holds {n} feature maps")
    return rows_sel


def _top_blocks(rec: LayerReconstructions, rows: list[int]) -> list[Image.Image]:
    """One :func:`fig2_block` per row, tiles enlarged to a readable size."""
    h, w = rec.patches.shape[-2:]
    scale = display_scale(max(int(h), int(w)))
    fired = rec.fired
    return [
        fig2_block(
            rec.reconstructions[r],
            rec.patches[r],
            outside=outside_mask(rec, r),
            keep=fired[r],
            scale=scale,
        )
        for r in rows
    ]


def _top_texts(
    rec: LayerReconstructions,
    dead_rows: list[int],
    asked: int,
    found: int,
    title: str | None,
    page: tuple[int, int] | None,
    width: float,
) -> tuple[str, str]:
    """:func:`top_projections_figure`'s title (the default one when ``title`` is None) and its
    footer listing the dead feature maps, both wrapped to ``width`` inches."""
    scanned = _images_text(rec.images)
    if title is None:
        rf = rec.receptive_field
        size = f", receptive field {rf.size[0]}x{rf.size[1]} px" if rf is not None else ""
        few = f" (top-{asked} asked; only {found} images)" if found < asked else ""
        title = (
            f"{rec.layer}: top-{found} activations per feature map{few} over {scanned} "
            f"({rec.rule} projections left, each scaled to its own max |value|, grey = 0; "
            f"image patches right{size}); max act = the map's strongest activation"
        )
        if _any_negative(rec.values.double()):
            title += " (pre-ReLU: can be negative)"
    if page is not None:
        title += f" [page {page[0]}/{page[1]}]"
    title = wrap_text(title, width - 0.3, 10)
    dead_names = ", ".join(str(int(rec.channels[r])) for r in dead_rows) or "none"
    footer = wrap_text(f"dead feature maps (never > 0 on {scanned}): {dead_names}", width - 0.3, 9)
    return title, footer


def _top_cell(
    ax: Any, rec: LayerReconstructions, r: int, block: Image.Image, *, dead: bool
) -> None:
    """Draw row ``r`` of ``rec`` (its ``block``, or the dead marker) in ``ax``, titled."""
    ax.set_axis_on()
    ch = int(rec.channels[r])
    top = float(rec.values.double()[r, 0])
    if dead:
        note = f"dead: never > 0\non {_images_text(rec.images)}"
        if math.isfinite(top) and top < 0:
            note += f"\n(max act {_value(top)}, pre-ReLU)"
        bw, bh = block.size
        draw_dead(ax, bh, bw, note)
        ax.set_title(f"ch {ch}: dead", fontsize=8)
        return
    _show(ax, block)
    label = f"ch {ch}: max act {_value(top)}"
    real = int(rec.fired[r].sum())
    if real < rec.k:
        label += f"\nonly {real} of {rec.k} images > 0"
    ax.set_title(label, fontsize=8)


def outside_mask(rec: LayerReconstructions, row: int) -> Tensor | None:
    """``[k, h, w]`` True where the patches of feature map ``rec.channels[row]`` run off the image.

    ``None`` when the layer has no receptive field (the patches are whole images).
    """
    rf = rec.receptive_field
    if rf is None:
        return None
    k, _, h, w = rec.patches[row].shape
    inside = canvas_inside(rf, rec.positions[row], rec.input_size, (h, w))
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

    Tiles are enlarged with nearest-neighbour so that a 32x32 image is drawn at 96 px or more;
    the title is wrapped to the figure's width. A feature map whose strongest activation on
    this image is not above 0 did not fire on it: its tile is the hatched dead marker, not a
    projection of nothing.

    Args:
        res: one layer of :func:`deconvviz.analyses.reconstruct.reconstruct_images`'s result.
        index: which image.
        max_channels: show the strongest this many feature maps (``None``: every projected one).
        ncols: panels per row.
        title: figure title prefix (e.g. the image's name).

    Returns:
        A matplotlib figure: the input first, then projections ordered by activation value
        (strongest first), each titled ``ch <channel>: max act <value>`` (the map's strongest
        activation on this image).
    """
    n = res.images.shape[0]
    if not 0 <= int(index) < n:
        raise InputError(f"image index {index} is out of range (there are {n} images)")
    values = res.values[index].double()
    order = torch.argsort(values, descending=True, stable=True)
    if max_channels is not None:
        order = order[: max(1, int(max_channels))]
    cells = len(order) + 1
    ncols = max(1, min(int(ncols), cells))
    nrows = math.ceil(cells / ncols)
    h, w = (int(v) for v in res.images.shape[-2:])
    scale = display_scale(max(h, w), min_px=96)
    tile_w = max(1.5, w * scale / DPI + 0.15)
    tile_h = tile_w * h / w + 0.4
    width = max(4.5, tile_w * ncols)
    text = _image_title(res, title, len(order), _any_negative(values))
    text = wrap_text(text, width - 0.3, 10)
    extra = 0.2 * (text.count("\n") + 1) + 0.2
    fig, axes = _grid_figure(width, tile_h * nrows + extra, nrows, ncols)
    axes[0].set_axis_on()
    _show(axes[0], _tile(input_display(res.images[index]), scale))
    axes[0].set_title("input", fontsize=8)
    for ax, o in zip(axes[1:], order.tolist(), strict=False):
        _image_cell(ax, res, index, o, float(values[o]), scale)
    fig.suptitle(text, fontsize=10)
    return fig


def _image_title(res: ImageProjections, title: str | None, shown: int, pre_relu: bool) -> str:
    """:func:`image_projections_figure`'s title (not yet wrapped)."""
    head = f"{title}: " if title else ""
    text = (
        f"{head}{res.layer}, {res.rule} projections of the strongest activation of {shown} "
        f"feature map{'s' if shown != 1 else ''} (each scaled to its own max |value|, "
        "grey = 0); max act = the map's strongest activation on this image"
    )
    if pre_relu:
        text += " (pre-ReLU: can be negative)"
    return text


def _image_cell(ax: Any, res: ImageProjections, index: int, o: int, v: float, scale: int) -> None:
    """Draw the projection of feature map ``res.channels[o]`` (strongest activation ``v``) on
    image ``index`` in ``ax``, or the inactive marker when ``v`` is not above 0."""
    ax.set_axis_on()
    ch = int(res.channels[o])
    if not (math.isfinite(v) and v > 0):
        h, w = (int(n) for n in res.images.shape[-2:])
        note = "not > 0 on\nthis image"
        if math.isfinite(v) and v < 0:
            note += f"\n(pre-ReLU {_value(v)})"
        draw_dead(ax, h * scale, w * scale, note)
        ax.set_title(f"ch {ch}: inactive", fontsize=8)
        return
    _show(ax, _tile(to_display(res.reconstructions[index, o].cpu()), scale))
    ax.set_title(f"ch {ch}: max act {_value(v)}", fontsize=8)


def comparison_figure(
    comp: Comparison,
    class_names: Sequence[str] | None = None,
    *,
    max_images: int | None = 8,
) -> Figure:
    """Our deconvnet beside captum's attribution methods: one row per image, one column per method.

    Args:
        comp: from :func:`deconvviz.analyses.compare.compare_methods`.
        class_names: names of the classes, to label each row's target class.
        max_images: show at most this many images.

    Returns:
        A matplotlib figure; every map is contrast-stretched around grey on its own.
    """
    n = comp.images.shape[0]
    if max_images is not None:
        n = min(n, max(1, int(max_images)))
    cols = 1 + len(comp.methods)
    h, w = (int(v) for v in comp.images.shape[-2:])
    scale = display_scale(max(h, w), min_px=96)
    tile = max(1.7, w * scale / DPI + 0.2)
    fig = Figure(
        figsize=(tile * cols + 0.4, (tile * h / w + 0.1) * n + 0.7), dpi=DPI, layout="constrained"
    )
    axes = np.atleast_2d(fig.subplots(n, cols, squeeze=False))
    for i in range(n):
        t = int(comp.target[i])
        name = class_label(t, class_names)
        _show(axes[i, 0], _tile(input_display(comp.images[i]), scale))
        axes[i, 0].set_ylabel(
            f"target {name}\np({name}) = {float(comp.probability[i]):.2f}", fontsize=8
        )
        for m, method in enumerate(comp.methods):
            _show(axes[i, m + 1], _tile(to_display(comp.attributions[m, i].cpu()), scale))
            if i == 0:
                label = method.replace("_", " ")
                if method == "guided_backprop" and comp.notes:
                    label += "\n(captum: misses F.relu)"
                axes[i, m + 1].set_title(label, fontsize=8)
        if i == 0:
            axes[i, 0].set_title("input", fontsize=8)
    fig.suptitle(
        wrap_text(
            "attributions for the target class (each map scaled to its own max |value|, grey = 0)",
            tile * cols,
            10,
        ),
        fontsize=10,
    )
    return fig


def _tile(t: Tensor, scale: int = 1) -> np.ndarray:
    arr = (t.detach().cpu().double().clamp(0, 1) * 255).round().to(torch.uint8)
    if scale > 1:
        arr = arr.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    if arr.dim() == 3 and arr.shape[0] == 1:
        return arr[0].numpy()
    if arr.dim() == 3:
        return arr.permute(1, 2, 0).numpy()
    return arr.numpy()
