"""A figure of the evidence measures (:mod:`deconvviz.analyses.evidence`); writes nothing."""

from __future__ import annotations

import math

from matplotlib.figure import Figure

from deconvviz.analyses.evidence import FilterStructure, SelectivityResult

__all__ = ["evidence_figure"]


def evidence_figure(sel: SelectivityResult, structure: FilterStructure | None = None) -> Figure:
    """Class selectivity per layer (bars, with chance dashed) and, when given, first-layer
    filter structure trained against initialisation."""
    cols = 2 if structure is not None else 1
    fig = Figure(figsize=(4.2 * cols + 0.6, 3.4), layout="constrained")
    axes = fig.subplots(1, cols, squeeze=False)[0]
    ax = axes[0]
    vals = [sel.selectivity[n] for n in sel.layers]
    xs = range(len(vals))
    ax.bar(xs, [0 if math.isnan(v) else v for v in vals], color="#3b6ea5")
    for x, v in zip(xs, vals, strict=True):
        ax.text(
            x,
            (0 if math.isnan(v) else v) + 0.02,
            "dead" if math.isnan(v) else f"{v:.2f}",
            ha="center",
            fontsize=8,
        )
    if sel.classes:
        ax.axhline(1 / sel.classes, color="0.4", ls="--", lw=1, label="chance")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xticks(list(xs), list(sel.layers), rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"fraction of top-{sel.k} images\nsharing the commonest class")
    ax.set_title("class selectivity per layer (live units)", fontsize=9)
    if structure is not None:
        ax2 = axes[1]
        ax2.bar([0, 1], [structure.init, structure.trained], color=["0.6", "#3b6ea5"])
        for x, v in ((0, structure.init), (1, structure.trained)):
            ax2.text(x, max(v, 0) + 0.02, f"{v:.2f}", ha="center", fontsize=8)
        ax2.axhline(0, color="0.3", lw=0.8)
        ax2.set_xticks([0, 1], ["at initialisation", "trained"], fontsize=8)
        ax2.set_ylim(min(-0.1, structure.init - 0.05), 1.0)
        ax2.set_ylabel("mean correlation of\nneighbouring weights")
        ax2.set_title("first-layer filter structure", fontsize=9)
    return fig
