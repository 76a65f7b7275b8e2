"""Figures and tables for :mod:`deconvviz.analyses` results (no file I/O).

Each function takes a result object and returns a ``matplotlib.figure.Figure`` (or a markdown
string for the tables); write them with :func:`deconvviz.base._io.save_figure` /
:func:`deconvviz.base._io.write_text`.

Example::

    from deconvviz.base._io import save_figure
    from deconvviz.render.analyses import invariance_figure

    save_figure("invariance.png", invariance_figure(result))
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from deconvviz.analyses import (
    CorrespondenceResult,
    EvolutionResult,
    InvarianceResult,
    SanityResult,
    SensitivityResult,
)
from deconvviz.base.errors import InputError
from deconvviz.render.images import DPI, display_scale, to_display, wrap_text
from deconvviz.render.reconstruct import draw_dead

__all__ = [
    "correspondence_figure",
    "correspondence_table",
    "evolution_figure",
    "invariance_figure",
    "randomisation_figure",
    "randomisation_table",
    "sensitivity_figure",
    "sensitivity_table",
]

_RULE_COLOURS = {"deconvnet": "tab:blue", "gradient": "tab:orange", "guided": "tab:green"}


def _check(result: Any, kind: type, fn: str) -> None:
    if not isinstance(result, kind):
        raise InputError(f"{fn} expects a {kind.__name__}, got {type(result).__name__}")


def _show(ax: Any, img: torch.Tensor) -> None:
    """Show a ``[C, H, W]`` image with values in [0, 1]."""
    ax.set_xticks([])
    ax.set_yticks([])
    arr = img.detach().cpu().double().clamp(0, 1)
    if arr.shape[0] == 1:
        ax.imshow(arr[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(arr[:3].permute(1, 2, 0).numpy(), interpolation="nearest")


def _tile_inches(images: torch.Tensor, least: float) -> float:
    """Side in inches of a cell that shows ``[..., H, W]`` images at a readable size."""
    side = max(int(images.shape[-1]), int(images.shape[-2]))
    return max(least, side * display_scale(side, min_px=96) / DPI + 0.15)


def _suptitle(fig: Figure, text: str, fontsize: float = 11) -> None:
    width = float(fig.get_figwidth())
    fig.suptitle(wrap_text(text, width - 0.3, fontsize), fontsize=fontsize)


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.3f}"


# ---------------------------------------------------------------------------- invariance


def invariance_figure(
    result: InvarianceResult, relative: bool = False, title: str | None = None
) -> Figure:
    """Curves as in the paper's Fig. 5: one panel per layer (feature distance against the
    transformation value, a thin line per image and their mean in black) and one for the
    true-class probability.

    Args:
        result: from :func:`deconvviz.analyses.invariance`.
        relative: plot distances divided by the norm of the original image's features.
        title: figure title (default: the transformation).
    """
    _check(result, InvarianceResult, "invariance_figure")
    n_layers = len(result.layers)
    fig = Figure(figsize=(3.4 * (n_layers + 1), 3.2), layout="constrained")
    axes = fig.subplots(1, n_layers + 1, squeeze=False)[0]
    x = result.values.numpy()
    data = result.relative if relative else result.distance
    for ax, name, curves in zip(axes, result.layers, data, strict=False):
        for c in curves.numpy():
            ax.plot(x, c, lw=0.8, alpha=0.5)
        ax.plot(x, curves.mean(0).numpy(), color="black", lw=2.0, label="mean")
        ax.set_title(f"{name}")
        ax.set_xlabel(result.unit)
        ax.set_ylabel("relative distance" if relative else "Euclidean distance")
        ax.grid(alpha=0.3)
    ax = axes[-1]
    for c in result.prob.numpy():
        ax.plot(x, c, lw=0.8, alpha=0.5)
    ax.plot(x, result.prob.mean(0).numpy(), color="black", lw=2.0, label="mean")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("true-class probability")
    ax.set_xlabel(result.unit)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _suptitle(fig, title or f"invariance to {result.transform}")
    return fig


# ---------------------------------------------------------------------------- correspondence


def correspondence_figure(result: CorrespondenceResult, title: str | None = None) -> Figure:
    """Bars per layer: the part's sign-change score (+- std over image pairs) next to random
    occlusions of the same size (+- std over trials); one panel per part. Lower = more
    consistent."""
    _check(result, CorrespondenceResult, "correspondence_figure")
    n_parts = len(result.parts)
    fig = Figure(
        figsize=(max(3.5, 1.2 * len(result.layers) + 1.5) * n_parts, 3.4), layout="constrained"
    )
    axes = fig.subplots(1, n_parts, squeeze=False)[0]
    pos = np.arange(len(result.layers))
    for p, ax in enumerate(axes):
        ax.bar(
            pos - 0.2,
            result.score[p].numpy(),
            0.4,
            yerr=result.score_std[p].numpy(),
            label=f"{result.parts[p]} occluded",
            color="tab:blue",
            capsize=3,
        )
        ax.bar(
            pos + 0.2,
            result.random_mean[p].numpy(),
            0.4,
            yerr=result.random_std[p].numpy(),
            label="random, same size",
            color="tab:grey",
            capsize=3,
        )
        ax.set_xticks(pos, list(result.layers))
        ax.set_ylabel("mean feature sign change")
        ax.set_title(_part_title(result, p), fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    _suptitle(fig, title or "correspondence (lower = more consistent)")
    return fig


def _part_title(result: CorrespondenceResult, p: int) -> str:
    """What panel ``p`` compares: the part occluded (its box size where all images share it)
    against boxes of that size at random places."""
    b = result.boxes[p].reshape(-1, 4)
    sizes = {(int(y1 - y0), int(x1 - x0)) for y0, x0, y1, x1 in b.tolist()}
    size = f" ({next(iter(sizes))[0]}x{next(iter(sizes))[1]} px)" if len(sizes) == 1 else ""
    return f"occluding the {result.parts[p]}{size}\nvs the same box at random places"


def correspondence_table(result: CorrespondenceResult) -> str:
    """Markdown table like the paper's Table 1: per part and layer, score +- std, and the
    random baseline."""
    _check(result, CorrespondenceResult, "correspondence_table")
    head = "| occlusion | " + " | ".join(result.layers) + " |"
    sep = "| --- |" + " --- |" * len(result.layers)
    rows = [head, sep]
    for p, part in enumerate(result.parts):
        cells = [
            f"{_fmt(float(m))} ± {_fmt(float(s))}"
            for m, s in zip(result.score[p], result.score_std[p], strict=True)
        ]
        rows.append(f"| {part} | " + " | ".join(cells) + " |")
        cells = [
            f"{_fmt(float(m))} ± {_fmt(float(s))}"
            for m, s in zip(result.random_mean[p], result.random_std[p], strict=True)
        ]
        rows.append(f"| random ({part} size) | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------- sanity checks

_WRAP = 8
"""Steps per row of :func:`randomisation_figure` (a wider figure is unreadable in a page)."""


def _similarity_curves(axes: Any, result: SanityResult) -> None:
    """The Spearman and SSIM curves of :func:`randomisation_figure`: per rule, the mean over
    images at each step, with a band from the minimum to the maximum."""
    steps = np.arange(result.spearman.shape[1])
    for ax, name, data in (
        (axes[0], "Spearman rank correlation", result.spearman),
        (axes[1], "SSIM", result.ssim),
    ):
        for r, rule in enumerate(result.rules):
            vals = data[r].numpy()
            with np.errstate(all="ignore"):
                mean = np.nanmean(np.where(np.isfinite(vals), vals, np.nan), axis=1)
                lo = np.nanmin(np.where(np.isfinite(vals), vals, np.nan), axis=1)
                hi = np.nanmax(np.where(np.isfinite(vals), vals, np.nan), axis=1)
            colour = _RULE_COLOURS.get(rule)
            ax.plot(steps, mean, marker="o", label=rule, color=colour)
            ax.fill_between(steps, lo, hi, alpha=0.15, color=colour)
        ax.set_xticks(
            steps,
            [s if i == 0 else f"+{s}" for i, s in enumerate(result.steps)],
            rotation=45,
            ha="right",
            fontsize=8,
        )
        ax.set_ylim(-1.05 if name.startswith("Spearman") else -0.05, 1.05)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def randomisation_figure(result: SanityResult, image: int = 0, title: str | None = None) -> Figure:
    """Adebayo et al.'s figure: projections of one image as the weights are randomised (one row
    per rule, one column per step) above the Spearman and SSIM curves (mean over images, band:
    min to max)."""
    _check(result, SanityResult, "randomisation_figure")
    n_rules, n_steps, n = result.spearman.shape
    if not 0 <= image < n:
        raise InputError(f"image {image} is out of range (the result has {n} images)")
    cell = _tile_inches(result.projections, 1.3)
    # the steps wrap after `cols` columns, so that the figure fits a page: each band of rows
    # shows every rule for the next `cols` steps
    cols = min(n_steps, _WRAP)
    bands = math.ceil(n_steps / cols)
    rows = bands * n_rules
    fig = Figure(
        figsize=(max(7.0, cell * cols + 1.0), (cell + 0.35) * rows + 3.4),
        dpi=DPI,
        layout="constrained",
    )
    subs: Any = fig.subfigures(2, 1, height_ratios=[(cell + 0.35) * rows, 3.0])
    sub_top, sub_bottom = subs[0], subs[1]
    grid = sub_top.subplots(rows, cols, squeeze=False)
    for ax in grid.ravel():
        ax.set_axis_off()
    recs = to_display(result.projections[:, :, image])
    for r, rule in enumerate(result.rules):
        for s, step in enumerate(result.steps):
            ax = grid[(s // cols) * n_rules + r, s % cols]
            ax.set_axis_on()
            _show(ax, recs[r, s])
            if r == 0:
                ax.set_title(step if s == 0 else f"+{step}", fontsize=8)
            if s % cols == 0:
                ax.set_ylabel(rule, fontsize=9)
    _similarity_curves(sub_bottom.subplots(1, 2), result)
    _suptitle(
        fig,
        title
        or f"model randomisation ({result.mode}), projections of {result.layer!r} "
        "(each scaled to its own max |value|, grey = 0)"
        + (
            f"; shown at {n_steps - 1} of the cascade's {result.randomised} steps ('+X': every "
            "layer from the top down to X randomised)"
            if result.randomised > n_steps - 1
            else ""
        ),
    )
    return fig


def randomisation_table(result: SanityResult) -> str:
    """Markdown table: per rule and step, mean Spearman / SSIM with the trained projection."""
    _check(result, SanityResult, "randomisation_table")
    head = (
        "| rule | "
        + " | ".join(s if i == 0 else f"+{s}" for i, s in enumerate(result.steps))
        + " |"
    )
    rows = [head, "| --- |" + " --- |" * len(result.steps)]
    summary = result.summary()
    for rule in result.rules:
        cells = [
            f"{_fmt(a)} / {_fmt(b)}"
            for a, b in zip(summary[rule]["spearman"], summary[rule]["ssim"], strict=True)
        ]
        rows.append(f"| {rule} | " + " | ".join(cells) + " |")
    return (
        "\n".join(rows)
        + "\n\nCells: mean Spearman / mean SSIM with the trained model's projection.\n"
    )


def sensitivity_figure(
    result: SensitivityResult, image: int = 0, title: str | None = None
) -> Figure:
    """One row per rule: the projections of every channel on one image, then the matrix of
    Spearman correlations between them (mean over images)."""
    _check(result, SensitivityResult, "sensitivity_figure")
    n_rules, n, k = result.spearman.shape[:3]
    if not 0 <= image < n:
        raise InputError(f"image {image} is out of range (the result has {n} images)")
    cell = _tile_inches(result.projections, 1.2)
    fig = Figure(
        figsize=(cell * k + 3.6, (cell + 0.3) * n_rules + 0.9), dpi=DPI, layout="constrained"
    )
    axes = fig.subplots(
        n_rules, k + 1, squeeze=False, gridspec_kw={"width_ratios": [1.0] * k + [2.2]}
    )
    recs = to_display(result.projections[:, image])
    mean = result.spearman.nanmean(dim=1).numpy()
    im = None
    for r, rule in enumerate(result.rules):
        for j, c in enumerate(result.channels):
            _show(axes[r, j], recs[r, j])
            if r == 0:
                axes[r, j].set_title(f"ch {c}", fontsize=8)
        axes[r, 0].set_ylabel(rule, fontsize=9)
        ax = axes[r, k]
        im = ax.imshow(mean[r], vmin=-1.0, vmax=1.0, cmap="coolwarm")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(
            f"ρ between channels\nmean off-diagonal {_fmt(float(result.mean_similarity[r]))}",
            fontsize=8,
        )
    if im is not None:
        fig.colorbar(im, ax=axes[:, k].tolist(), shrink=0.8, label="Spearman ρ")
    _suptitle(
        fig,
        title
        or f"projections of different units of {result.layer!r} on one image "
        "(each scaled to its own max |value|, grey = 0)",
    )
    return fig


def sensitivity_table(result: SensitivityResult) -> str:
    """Markdown table: per rule, mean Spearman and SSIM between projections of different
    channels on the same image (high = the picture hardly depends on the channel)."""
    _check(result, SensitivityResult, "sensitivity_table")
    rows = ["| rule | mean Spearman | mean SSIM |", "| --- | --- | --- |"]
    for r, rule in enumerate(result.rules):
        rows.append(
            f"| {rule} | {_fmt(float(result.mean_similarity[r]))} | "
            f"{_fmt(float(result.mean_ssim[r]))} |"
        )
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------- evolution


def evolution_figure(
    result: EvolutionResult, patches: bool = False, title: str | None = None
) -> Figure:
    """The paper's Fig. 4: one row per feature map, one column per recorded iteration, each cell
    the projection of the map's strongest activation over the image pool.

    Args:
        result: from :meth:`deconvviz.analyses.FeatureEvolution.result`.
        patches: show the image patches instead of the projections.
        title: figure title.
    """
    _check(result, EvolutionResult, "evolution_figure")
    t, k = result.values.shape
    data = result.patches if patches else result.projections
    cell = _tile_inches(data, 1.1)
    fig = Figure(
        figsize=(max(4.0, cell * t + 0.6), (cell + 0.1) * k + 1.2), dpi=DPI, layout="constrained"
    )
    axes = fig.subplots(k, t, squeeze=False)
    for j in range(t):
        cells = data[j].clamp(0, 1) if patches else to_display(data[j])
        for i in range(k):
            ax = axes[i, j]
            v = float(result.values[j, i])
            if math.isfinite(v) and v > 0:
                _show(ax, cells[i])
            else:  # the map did not fire on any pooled image at this iteration
                h, w = (int(n) for n in cells[i].shape[-2:])
                draw_dead(ax, h, w, "dead:\nnot > 0", fontsize=6)
            if i == 0:
                ax.set_title(f"iter {int(result.iterations[j])}", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"ch {result.channels[i]}", fontsize=7)
    what = "image patches" if patches else f"{result.rule} projections, grey = 0"
    _suptitle(
        fig,
        title
        or f"feature evolution of {result.layer!r} ({what})\nrows: feature maps, columns: "
        "training iterations; hatched: the map never > 0 on the images at that iteration",
        fontsize=9,
    )
    return fig
