"""Notebook display of result objects: ``_repr_png_`` methods call these.

The result classes stay plain data in the lower layers; their ``_repr_png_`` calls
:func:`render_png`, which looks the figure function up by name in :data:`FIGURES` and imports
its :mod:`deconvviz.render` module only when Jupyter asks for a picture. The lookup is by name on
purpose: the data modules (analyses rank) do not depend on the render layer, which depends on
them.
"""

from __future__ import annotations

import importlib
import io
from typing import Any

FIGURES: dict[str, str] = {
    "ImageProjections": "deconvviz.render.reconstruct:image_projections_figure",
    "LayerReconstructions": "deconvviz.render.reconstruct:top_projections_figure",
    "LayerStats": "deconvviz.render.stats:histogram_figure",
    "HiddenStateStats": "deconvviz.render.stats:hidden_state_figure",
    "OcclusionResult": "deconvviz.render.occlusion:probability_maps_figure",
}
"""Result class name -> ``"module:function"`` drawing it (the function takes the result first)."""


def render_png(result: Any, *args: Any, **kwargs: Any) -> bytes:
    """PNG bytes of ``result``'s figure (:data:`FIGURES`), drawn with ``args``/``kwargs``."""
    module, func = FIGURES[type(result).__name__].split(":")
    draw = getattr(importlib.import_module(module), func)
    return figure_png(draw(result, *args, **kwargs))


def figure_png(fig: Any, dpi: int = 90) -> bytes:
    """PNG bytes of a matplotlib figure, which is closed afterwards."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def occlusion_png(result: Any) -> bytes:
    """The probability map of every image of an occlusion result (no image is stored in it),
    drawn by :func:`deconvviz.render.occlusion.probability_maps_figure` (viridis, one colour
    bar)."""
    return render_png(result)
