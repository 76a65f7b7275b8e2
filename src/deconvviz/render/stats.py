"""Tables and figures for activation and hidden-state statistics."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from deconvviz.analyses.stats import HiddenStateStats, LayerStats
from deconvviz.base.errors import InputError
from deconvviz.render.images import wrap_text

__all__ = ["histogram_figure", "stats_table", "hidden_state_figure", "hidden_state_table"]


def stats_table(stats: dict[str, LayerStats]) -> str:
    """A markdown table with one row per layer: moments, range, zeros and dead channels.

    Args:
        stats: what :func:`deconvviz.activation_stats` returned.

    Returns:
        Markdown text (header, separator, one row per layer), ending with a newline.
    """
    if not stats:
        raise InputError("no layer statistics to tabulate")
    head = (
        "| layer | origin report's name | elements | mean | var | std | min | max | zeros | "
        "dead units (never > 0) |"
    )
    lines = [head, "|" + "---|" * 10]
    for s in stats.values():
        dead = len(s.dead_channels)
        lines.append(
            f"| {s.name} | {s.report_name} | {s.count} | {s.mean:.4g} | {s.var:.4g} | "
            f"{s.std:.4g} | {s.min:.4g} | {s.max:.4g} | {100 * s.zero_fraction:.1f}% | "
            f"{dead} / {len(s.channel_zero_fraction)} |"
        )
    return "\n".join(lines) + "\n"


def histogram_figure(stats: LayerStats, log: bool = True) -> Figure:
    """Histogram of one layer's values, annotated with mean, variance and zero fraction.

    Args:
        stats: one layer's :class:`LayerStats`.
        log: logarithmic count axis (ReLU outputs are mostly zeros).

    Returns:
        A matplotlib figure.
    """
    edges = stats.hist_edges.numpy()
    counts = stats.hist_counts.numpy()
    fig = Figure(figsize=(5.0, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.8)
    if log and counts.max() > 0:
        ax.set_yscale("log")
    ax.axvline(stats.mean, color="tab:red", linewidth=1, label=f"mean {stats.mean:.3g}")
    ax.set_xlabel("activation value")
    ax.set_ylabel("count (log scale)" if log and counts.max() > 0 else "count")
    extra = ""
    if stats.underflow or stats.overflow:
        extra = f"; outside range: {stats.underflow} below, {stats.overflow} above"
    ax.set_title(
        wrap_text(
            f"{stats.name}: var {stats.var:.3g}, zeros {100 * stats.zero_fraction:.1f}%{extra}",
            4.6,
            8,
        ),
        fontsize=8,
    )
    ax.legend(fontsize=8)
    return fig


def hidden_state_table(stats: HiddenStateStats) -> str:
    """A markdown table of hidden-state statistics, one row per time step."""
    lines = [
        "| step | mean | var | saturated |",
        "|---|---|---|---|",
    ]
    for t in range(stats.steps):
        lines.append(
            f"| {t} | {float(stats.mean[t]):.4g} | {float(stats.var[t]):.4g} | "
            f"{100 * float(stats.saturated_fraction[t]):.2f}% |"
        )
    lines.append(
        f"| all | {stats.overall_mean:.4g} | {stats.overall_var:.4g} | "
        f"{100 * float(stats.saturated_fraction.mean()):.2f}% |"
    )
    return "\n".join(lines) + "\n"


def hidden_state_figure(stats: HiddenStateStats) -> Figure:
    """Mean +- std of the hidden state per time step, and the saturated fraction."""
    t = np.arange(stats.steps)
    mean = stats.mean.numpy()
    std = np.sqrt(stats.var.numpy())
    fig = Figure(figsize=(6.0, 3.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(t, mean, color="tab:blue", label="mean")
    ax1.fill_between(t, mean - std, mean + std, color="tab:blue", alpha=0.25, label="+- std")
    ax1.set_xlabel("time step")
    ax1.set_ylabel("hidden state")
    ax1.legend(fontsize=7)
    ax2.plot(t, 100 * stats.saturated_fraction.numpy(), color="tab:red")
    ax2.set_xlabel("time step")
    ax2.set_ylabel(f"% units with |h| > {stats.threshold:g}")
    ax2.set_ylim(bottom=0)
    return fig
