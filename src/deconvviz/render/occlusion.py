"""Figures for occlusion sensitivity, laid out like Zeiler & Fergus's Fig. 7.

Each map is drawn beside the image it was measured on, at the image's scale: map cell ``(i, j)``
covers the pixels that are nearer to occluder ``(i, j)``'s centre than to any other's, so the
maps line up with the image whatever the occluder size and stride. Maps are opaque by default,
so that their colours are the colour bar's (a map blended over the image is not); pass
``alpha < 1`` to draw them over the image instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from torch import Tensor

from deconvviz.analyses.occlusion import OcclusionResult
from deconvviz.base.checks import class_label
from deconvviz.base.errors import InputError
from deconvviz.render.images import to_display

__all__ = [
    "display_image",
    "draw_map",
    "map_edges",
    "occlusion_figure",
    "probability_maps_figure",
]


def display_image(image: Tensor) -> np.ndarray:
    """An input image ``[C, H, W]`` as an array matplotlib can show (``[H, W]`` or ``[H, W, 3]``).

    Images already in [0, 1] are shown as they are; others (normalised inputs) are min-max
    stretched to [0, 1].
    """
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] not in (1, 3):
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise InputError(f"expected one image [1 or 3, H, W], got {got}")
    img = image.detach().cpu().double()
    lo, hi = float(img.min()), float(img.max())
    if lo < 0 or hi > 1:
        img = (img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)
    arr = img.permute(1, 2, 0).numpy()
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def map_edges(result: OcclusionResult) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-space cell edges ``(row_edges [Hp+1], col_edges [Wp+1])`` of the occlusion maps.

    Cell edges lie halfway between neighbouring occluder centres and at the image border, in
    matplotlib's image coordinates (pixel ``k`` spans ``k - 0.5 .. k + 0.5``).
    """
    centers = result.centers.numpy()
    h, w = result.image_size

    def edges(c: np.ndarray, length: int) -> np.ndarray:
        mids = (c[:-1] + c[1:]) / 2
        return np.concatenate([[-0.5], mids, [length - 0.5]])

    return edges(centers[:, 0, 0], h), edges(centers[0, :, 1], w)


def draw_map(
    ax: Axes,
    result: OcclusionResult,
    values: Tensor,
    image: Tensor | None = None,
    *,
    alpha: float = 0.65,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
) -> QuadMesh:
    """Draw one ``[Hp, Wp]`` map on ``ax``, over ``image`` when given; returns the mappable.

    ``cmap`` should be perceptually uniform: ``"viridis"``/``"magma"`` for magnitudes, a
    diverging map such as ``"RdBu_r"`` with ``vmin = -vmax`` for signed values.
    """
    rows, cols = map_edges(result)
    if image is not None:
        _show_image(ax, image)
    mesh = ax.pcolormesh(
        cols,
        rows,
        values.detach().cpu().double().numpy(),
        cmap=cmap,
        alpha=alpha if image is not None else 1.0,
        vmin=vmin,
        vmax=vmax,
        shading="flat",
    )
    h, w = result.image_size
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return mesh


def _show_image(ax: Axes, image: Tensor) -> None:
    """Draw ``image`` on ``ax`` as it is (grey when it has one channel)."""
    arr = display_image(image)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")


def _check_figure_inputs(result: OcclusionResult, x: Tensor, index: int) -> None:
    """Reject images other than the ones ``result`` was computed on, or an index out of range."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise InputError("x must be the images [N, C, H, W] the occlusion result was computed on")
    n = result.prob.shape[0]
    if x.shape[0] != n or tuple(x.shape[2:]) != tuple(result.image_size):
        raise InputError(
            f"x has shape {tuple(x.shape)} but the result is for {n} images of size "
            f"{result.image_size}; pass the same images"
        )
    if not -n <= index < n:
        raise InputError(f"index {index} out of range for {n} images")


def _input_panel(
    ax: Axes, result: OcclusionResult, image: Tensor, index: int, tag: str, target: str
) -> None:
    """(a) the input, with one occluder drawn to scale in its top-left corner."""
    _show_image(ax, image)
    (sh, sw) = result.size
    ax.add_patch(Rectangle((-0.5, -0.5), sw, sh, facecolor="0.5", edgecolor="white", linewidth=1))
    ax.set_xticks([])
    ax.set_yticks([])
    base = float(result.base_prob[index])
    ax.set_title(
        f"{tag}input, p({target}) = {base:.2f}\noccluder {sh}x{sw}, stride {result.stride[0]}",
        fontsize=8,
    )


def _feature_panel(
    fig: Figure,
    ax: Axes,
    result: OcclusionResult,
    image: Tensor | None,
    index: int,
    tag: str,
    alpha: float,
) -> None:
    """(b) the strongest feature map's total (rectified) activation per occluder position."""
    assert result.feature is not None and result.channel is not None
    where = f"{result.layer} map {int(result.channel[index])}"
    if result.feature_rectified is not None:
        values = result.feature_rectified[index]
        peak = max(float(values.max()), 1e-12)
        mesh = draw_map(ax, result, values, image, alpha=alpha, cmap="magma", vmin=0.0, vmax=peak)
        fig.colorbar(mesh, ax=ax, shrink=0.8, label="sum of ReLU(activation)")
        ax.set_title(f"{tag}total rectified activation\n{where}, per occluder position", fontsize=8)
    else:  # a result made without the rectified sums: show the raw, signed ones
        values = result.feature[index]
        peak = max(float(values.abs().max()), 1e-12)
        mesh = draw_map(
            ax, result, values, image, alpha=alpha, cmap="RdBu_r", vmin=-peak, vmax=peak
        )
        fig.colorbar(mesh, ax=ax, shrink=0.8, label="sum of activation (pre-ReLU)")
        ax.set_title(f"{tag}total activation (pre-ReLU, can be < 0)\n{where}", fontsize=8)


def _projection_panel(fig: Figure, ax: Axes, result: OcclusionResult, index: int, tag: str) -> None:
    """(c) that feature map's deconvnet projection on the unoccluded image."""
    assert result.projection is not None and result.channel is not None
    raw = result.projection[index].detach().cpu().double()
    where = f"{result.layer} map {int(result.channel[index])}"
    if raw.shape[0] == 1:
        peak = max(float(raw.abs().max()), 1e-12)
        im = ax.imshow(raw[0].numpy(), cmap="gray", vmin=-peak, vmax=peak, interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8, label="projection (grey = 0)")
        ax.set_title(f"{tag}deconvnet projection\n{where}", fontsize=8)
    else:
        arr = to_display(raw).permute(1, 2, 0).numpy()
        ax.imshow(arr, interpolation="nearest")
        ax.set_title(
            f"{tag}deconvnet projection\n{where}\n(grey = 0, scaled to max |value|)", fontsize=8
        )
    ax.set_xticks([])
    ax.set_yticks([])


def _prob_panel(
    fig: Figure,
    ax: Axes,
    result: OcclusionResult,
    image: Tensor | None,
    index: int,
    tag: str,
    target: str,
    alpha: float,
) -> None:
    """(d) the probability of the target class per occluder position."""
    mesh = draw_map(
        ax, result, result.prob[index], image, alpha=alpha, cmap="viridis", vmin=0, vmax=1
    )
    fig.colorbar(mesh, ax=ax, shrink=0.8, label=f"p({target})")
    ax.set_title(f"{tag}p({target})\nper occluder position", fontsize=8)


def _top_class_panel(
    ax: Axes,
    result: OcclusionResult,
    image: Tensor | None,
    index: int,
    tag: str,
    name: Callable[[int], str],
    alpha: float,
) -> None:
    """(e) the most probable class per occluder position, with a legend of the classes seen."""
    top = result.top_class[index]
    present = sorted(set(top.flatten().tolist()))
    colours = _class_colours(max(present) + 1)
    cmap = ListedColormap(colours)
    norm = BoundaryNorm(np.arange(len(colours) + 1) - 0.5, len(colours))
    rows, cols = map_edges(result)
    if image is not None:
        _show_image(ax, image)
    ax.pcolormesh(
        cols,
        rows,
        top.numpy(),
        cmap=cmap,
        norm=norm,
        alpha=alpha if image is not None else 1.0,
        shading="flat",
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")
    if image is None:
        ax.invert_yaxis()  # image orientation, like the input panel
    handles = [Patch(color=colours[c], label=name(c)) for c in present]
    ax.legend(
        handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False
    )
    ax.set_title(f"{tag}most probable class\nper occluder position", fontsize=8)


def occlusion_figure(
    result: OcclusionResult,
    x: Tensor,
    index: int = 0,
    class_names: Sequence[str] | None = None,
    *,
    alpha: float = 1.0,
) -> Figure:
    """One row of the paper's Fig. 7 for image ``index``.

    Panels: (a) the input with one occluder drawn to scale; (b) the total rectified activation
    (``sum(max(a, 0))`` over the map, :attr:`OcclusionResult.feature_rectified`) of the
    strongest feature map of ``result.layer`` per occluder position (when a layer was given),
    as the paper plots it; (c) that map's deconvnet projection on the unoccluded image (when
    computed); (d) the probability of the target class per occluder position; (e) the most
    probable class per position. Maps are drawn beside the image (a), opaque, in perceptually
    uniform colour maps (magma, viridis), each with a colour bar saying what it encodes: the
    colour on the page is the colour on the bar.

    Args:
        result: what :func:`deconvviz.occlusion` returned for ``x``.
        x: the images ``[N, C, H, W]`` it was computed on.
        index: which image.
        class_names: names of the classes (default: their indices).
        alpha: opacity of the maps; below 1 they are drawn over the image (their colours then
            no longer match the colour bars).

    Returns:
        A matplotlib figure (not shown; save it with ``deconvviz.base._io.save_figure``).
    """
    _check_figure_inputs(result, x, index)
    image = x[index].detach().cpu()
    under = image if alpha < 1.0 else None  # an opaque map hides the image: do not draw it

    def name(k: int) -> str:
        return class_label(k, class_names)

    target = name(int(result.target[index]))
    panels = ["input"]
    if result.feature is not None:
        panels.append("feature")
    if result.projection is not None:
        panels.append("projection")
    panels += ["prob", "top"]
    fig = Figure(figsize=(3.3 * len(panels) + 0.6, 3.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel, letter in zip(axes, panels, "abcde", strict=False):
        tag = f"({letter}) "
        if panel == "input":
            _input_panel(ax, result, image, index, tag, target)
        elif panel == "feature":
            _feature_panel(fig, ax, result, under, index, tag, alpha)
        elif panel == "projection":
            _projection_panel(fig, ax, result, index, tag)
        elif panel == "prob":
            _prob_panel(fig, ax, result, under, index, tag, target, alpha)
        else:
            _top_class_panel(ax, result, under, index, tag, name, alpha)
    return fig


def _class_colours(k: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    base = colormaps["tab10" if k <= 10 else "tab20"]
    n = 10 if k <= 10 else 20
    return [base(i % n) for i in range(k)]


def probability_maps_figure(
    result: OcclusionResult, class_names: Sequence[str] | None = None
) -> Figure:
    """The target-class probability per occluder position for every image of ``result``.

    The notebook picture of an :class:`~deconvviz.analyses.occlusion.OcclusionResult` (which holds
    no
    image): one opaque map per image in ``viridis`` (perceptually uniform, 0 to 1), drawn in the
    image's own pixel frame, with one colour bar.
    """
    n = int(result.prob.shape[0])
    fig = Figure(figsize=(2.8 * n + 0.9, 3.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    mesh = None
    for i, ax in enumerate(axes):
        t = int(result.target[i])
        name = class_label(t, class_names)
        mesh = draw_map(ax, result, result.prob[i], None, cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(
            f"p({name}) per occluder position\n{float(result.base_prob[i]):.2f} unoccluded",
            fontsize=8,
        )
    assert mesh is not None
    fig.colorbar(mesh, ax=list(axes), shrink=0.8, label="p(target)")
    return fig
