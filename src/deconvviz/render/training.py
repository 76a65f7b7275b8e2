"""Training curves: train loss and test accuracy against iterations (figures only, no file I/O).

A *history* is anything with ``train_loss`` and ``test_acc`` sequences of ``(iteration, value)``
pairs: a :class:`deconvviz.training.train.History`, or a dict with those two keys (as stored in a
run's
``metrics.json``).

Example::

    from deconvviz.base._io import save_figure
    from deconvviz.render.training import curves_figure

    save_figure("curves.png", curves_figure(result.history, title="LeNet5 adam 1e-3"))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from deconvviz.base.errors import InputError

__all__ = ["curves_figure", "sweep_curves_figure", "smooth"]


def _series(history: Any, key: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(history, Mapping):
        if key not in history:
            raise InputError(f"a history needs a {key!r} entry of (iteration, value) pairs")
        pairs = history[key]
    elif hasattr(history, key):
        pairs = getattr(history, key)
    else:
        raise InputError(
            f"expected a history with train_loss and test_acc, got {type(history).__name__}"
        )
    arr = np.asarray(
        [(float(i), math.nan if v is None else float(v)) for i, v in pairs], dtype=np.float64
    ).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def smooth(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` values (shorter at the start); NaNs are skipped."""
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(v) == 0:
        return v.copy()
    ok = np.isfinite(v)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(ok)])
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    count = ccount[idx] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum[idx] - csum[lo]) / np.maximum(count, 1), np.nan)


def _plot(ax_loss: Any, ax_acc: Any, history: Any, label: str | None, color: Any) -> None:
    it, loss = _series(history, "train_loss")
    window = max(1, len(loss) // 40)
    if len(it):
        if window > 1:
            ax_loss.plot(it, loss, color=color, alpha=0.2, linewidth=0.6)
        ax_loss.plot(it, smooth(loss, window), color=color, linewidth=1.4, label=label)
    it_a, acc = _series(history, "test_acc")
    if len(it_a):
        ax_acc.plot(it_a, acc, color=color, marker="o", markersize=2.5, linewidth=1.4, label=label)


def _figure(title: str | None) -> tuple[Figure, Any, Any]:
    fig = Figure(figsize=(10, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.84 if title else 0.9, wspace=0.22)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.set(xlabel="iteration", ylabel="train loss (batch)", title="train loss")
    ax_acc.set(xlabel="iteration", ylabel="test accuracy", title="test accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig, ax_loss, ax_acc


def curves_figure(history: Any, title: str | None = None) -> Figure:
    """Train loss (raw and smoothed) and test accuracy of one run, side by side.

    Args:
        history: ``train_loss`` / ``test_acc`` lists of ``(iteration, value)`` pairs.
        title: figure title.

    Returns:
        A matplotlib :class:`~matplotlib.figure.Figure` (not attached to any window).
    """
    fig, ax_loss, ax_acc = _figure(title)
    _plot(ax_loss, ax_acc, history, None, "C0")
    _log_loss_axis(ax_loss, [history])
    return fig


def sweep_curves_figure(histories: Mapping[str, Any], title: str | None = None) -> Figure:
    """Train loss (smoothed) and test accuracy of several runs, one colour per run.

    Args:
        histories: ``{run label: history}``.
        title: figure title.

    Returns:
        A matplotlib :class:`~matplotlib.figure.Figure` with a legend naming every run.
    """
    if not histories:
        raise InputError("sweep_curves_figure needs at least one history")
    fig, ax_loss, ax_acc = _figure(title)
    for k, (label, history) in enumerate(histories.items()):
        _plot(ax_loss, ax_acc, history, label, f"C{k % 10}")
    _log_loss_axis(ax_loss, histories.values())
    ax_acc.legend(fontsize="small", loc="best")
    return fig


def _log_loss_axis(ax_loss: Any, histories: Any) -> None:
    """Log scale when the losses are positive and span a wide range (the course's init starts
    near 100 and ends near 1: a linear axis shows nothing but the first steps)."""
    values = np.concatenate([_series(h, "train_loss")[1] for h in histories] or [np.empty(0)])
    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0 and values.max() / values.min() > 20:
        ax_loss.set_yscale("log")
        ax_loss.set_ylabel("train loss (batch, log scale)")
