"""Checks every figure of the project must pass: a reader can trust it at a glance.

``check_figure(fig)`` draws the figure with Agg and asserts that

* no axes uses the ``jet`` colour map (perceptually uniform maps only);
* every colour map that encodes values (a 2-D image or mesh in a map other than ``gray``, or any
  ``gray`` image with a colour bar of its own) has a colour bar with a label; categorical maps
  (``ListedColormap``) come with a legend instead;
* no axes title runs under another axes (a colour bar, the next panel);
* every text drawn (titles, labels, legends, annotations) and everything else drawn (the
  figure's tight bounding box, tick labels included) lies inside the canvas.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.text import Text

__all__ = ["check_figure", "draw", "mappables", "texts"]


def draw(fig: Figure) -> Any:
    """Draw ``fig`` with Agg (layout included); returns the renderer."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def mappables(fig: Figure) -> list[Any]:
    """Every image and collection with a colour map, on every axes (colour bars excluded)."""
    out = []
    for ax in fig.axes:
        if hasattr(ax, "_colorbar"):
            continue
        for artist in [*ax.images, *ax.collections]:
            if artist.get_array() is not None and artist.get_cmap() is not None:
                out.append(artist)
    return out


def texts(fig: Figure) -> list[Text]:
    """Every visible, non-empty text artist of the figure (subfigures included), tick labels
    excepted (matplotlib keeps labels of ticks outside the view that it does not draw; the drawn
    ones are covered by the figure's tight bounding box)."""
    ticks: set[int] = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                ticks.update((id(tick.label1), id(tick.label2)))
    found = fig.findobj(lambda a: isinstance(a, Text) and a.get_visible() and bool(a.get_text()))
    return [t for t in found if isinstance(t, Text) and id(t) not in ticks]


def check_figure(fig: Figure, *, colorbars: bool = True) -> None:
    renderer = draw(fig)
    for m in mappables(fig):
        name = m.get_cmap().name
        assert name != "jet", f"{m} uses jet"
        arr = np.asarray(m.get_array())
        encodes_values = arr.ndim == 2 and name not in ("gray", "grey", "Greys")
        if not colorbars or not encodes_values:
            continue
        if isinstance(m.get_cmap(), ListedColormap) and not name.startswith(
            ("viridis", "magma", "plasma", "inferno", "cividis")
        ):
            assert m.axes.get_legend() is not None, f"categorical map {name} without a legend"
            continue
        cb = getattr(m, "colorbar", None)
        if cb is None:  # one colour bar may serve several maps drawn with the same scale
            shared = [
                ax._colorbar
                for ax in fig.axes
                if hasattr(ax, "_colorbar")
                and ax._colorbar.mappable.get_cmap().name == name
                and ax._colorbar.mappable.get_clim() == m.get_clim()
            ]
            cb = shared[0] if shared else None
        assert cb is not None, f"{name} map on {m.axes.get_title()!r} has no colour bar"
        assert cb.ax.get_ylabel() or cb.ax.get_xlabel(), f"colour bar of {name} has no label"
    box = fig.bbox
    tight = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)
    assert (
        tight.x0 >= box.x0 - 1
        and tight.y0 >= box.y0 - 1
        and tight.x1 <= box.x1 + 1
        and tight.y1 <= box.y1 + 1
    ), f"something drawn at {tight} runs off the figure {box}"
    # an axes title is not hidden under another axes (a colour bar, the next panel)
    for ax in fig.axes:
        for title in (ax.title, ax._left_title, ax._right_title):  # type: ignore[attr-defined]
            if not title.get_text():
                continue
            ext = title.get_window_extent(renderer)
            for other in fig.axes:
                if other is ax or not other.get_visible():
                    continue
                if not other.axison and not other.images and not other.collections:
                    continue  # an unused, hidden cell of a grid
                ob = other.get_window_extent(renderer)
                overlap = min(ext.x1, ob.x1) - max(ext.x0, ob.x0)
                overlap_y = min(ext.y1, ob.y1) - max(ext.y0, ob.y0)
                assert overlap <= 1 or overlap_y <= 1, (
                    f"title {title.get_text()!r} runs under another axes at {ob}"
                )
    for t in texts(fig):
        ext = t.get_window_extent(renderer)
        assert (
            ext.x0 >= box.x0 - 1
            and ext.y0 >= box.y0 - 1
            and ext.x1 <= box.x1 + 1
            and ext.y1 <= box.y1 + 1
        ), f"text {t.get_text()!r} at {ext} runs off the figure {box}"
