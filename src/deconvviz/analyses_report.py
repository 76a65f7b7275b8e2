"""Quick versions of every analysis on a few images, written as PNG + JSON (for the report).

The export layer: this module sits above the analyses (:mod:`deconvviz.analyses`) and the
renderers (:mod:`deconvviz.render.analyses`) because it writes files; nothing in the analyses
imports it (``deconvviz.analyses.report_figures`` finds it by name, when asked for).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from deconvviz._io import save_figure, write_json
from deconvviz._util import json_safe
from deconvviz.analyses._common import default_layers, pick_images
from deconvviz.analyses.correspondence import correspondence
from deconvviz.analyses.invariance import invariance
from deconvviz.analyses.sanity import randomisation_test, sensitivity_check
from deconvviz.checks import check_images
from deconvviz.engine.probe import DeconvvizWarning
from deconvviz.engine.tracer import eval_mode

__all__ = ["report_figures", "pick_images"]


def report_figures(
    model: nn.Module,
    dataset: Sequence[Any],
    out_dir: str | os.PathLike[str],
    *,
    n_images: int = 8,
    progress: bool = True,
) -> list[tuple[str, Path]]:
    """Run quick versions of the analyses on a few images and write a PNG and a JSON for each.

    Writes into ``out_dir``: ``invariance_translate``, ``invariance_scale``,
    ``invariance_rotate``, ``correspondence`` (a centred occluder in every image against random
    ones: a stand-in for a real object part), ``randomisation`` (cascading randomisation of the
    output layer's projections, three rules) and ``sensitivity`` (projections of different
    classes), each as ``.png`` and ``.json``. Layers without a deconvnet rule (an RNN's cell)
    use their plain gradient, without warning.

    Args:
        model: the trained classifier.
        dataset: items ``(image, label)`` (or images; then the model's predictions are used
            as labels).
        out_dir: where the files go (created if needed).
        n_images: images taken, spread evenly over the dataset.
        progress: show a progress bar.

    Returns:
        ``(title, png path)`` pairs in report order; each path is the file as written
        (``out_dir / name``: relative to the working directory when ``out_dir`` is), so use it
        as it is and do not join it to ``out_dir`` again.
    """
    from deconvviz.render import analyses as figures

    out = Path(out_dir)
    x, y, indices = _inputs(model, dataset, n_images)
    return _write_results(_jobs(figures, model, x, y), out, indices, progress)


_DPI = 110
_Job = tuple[str, str, Callable[[], Any], Callable[[Any], Any], int]
"""``(title, file stem, compute, render, images used)`` of one analysis."""


def _inputs(
    model: nn.Module, dataset: Sequence[Any], n_images: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The images (checked against the model), their labels (the model's predictions where the
    dataset has none) and their dataset indices."""
    x, y, indices = pick_images(dataset, max(2, n_images))
    x = check_images(model, x)
    if y is None:
        with eval_mode(model), torch.no_grad():
            y = model(x).argmax(dim=1).cpu()
    return x, y, indices


def _jobs(figures: ModuleType, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[_Job]:
    """The quick analyses in report order, each with its figure function (from ``figures``,
    :mod:`deconvviz.render.analyses`)."""
    h, w = x.shape[-2:]
    layers = default_layers(model, x)
    side = max(2, min(h, w) // 4)
    centre = [(h - side) // 2, (w - side) // 2, (h - side) // 2 + side, (w - side) // 2 + side]
    few = x[: min(4, len(x))]
    return [
        (
            "Invariance to vertical translation",
            "invariance_translate",
            lambda: invariance(model, x, y, "translate", layers=layers, progress=False),
            figures.invariance_figure,
            len(x),
        ),
        (
            "Invariance to scaling",
            "invariance_scale",
            lambda: invariance(model, x, y, "scale", layers=layers, progress=False),
            figures.invariance_figure,
            len(x),
        ),
        (
            "Invariance to rotation",
            "invariance_rotate",
            lambda: invariance(
                model, x, y, "rotate", values=range(-180, 181, 30), layers=layers, progress=False
            ),
            figures.invariance_figure,
            len(x),
        ),
        (
            "Correspondence (centred occluder vs random occluders)",
            "correspondence",
            lambda: correspondence(
                model, x, centre, layers, n_random=10, seed=0, parts=("centre",), progress=False
            ),
            figures.correspondence_figure,
            len(x),
        ),
        (
            "Sanity check: cascading model randomisation. A deconvnet row that barely changes "
            "as the layers are randomised from the top down means its pictures are made by "
            "the architecture and the image (pooling switches, edges), not by what the trained "
            "weights learned, so they cannot show what the network learned (Adebayo et al., "
            "2018; Mahendran & Vedaldi, 2016)",
            "randomisation",
            lambda: randomisation_test(model, few, progress=False),
            figures.randomisation_figure,
            len(few),
        ),
        (
            "Sanity check: class sensitivity of projections",
            "sensitivity",
            lambda: sensitivity_check(model, few[:2], progress=False),
            figures.sensitivity_figure,
            min(2, len(few)),
        ),
    ]


def _write_results(
    jobs: Sequence[_Job], out: Path, indices: Sequence[int], progress: bool
) -> list[tuple[str, Path]]:
    """Run each job and write its ``<stem>.png`` and ``<stem>.json`` (with the dataset indices
    of the images it used); ``(title, png path)`` pairs."""
    from tqdm.auto import tqdm

    from deconvviz.render.images import min_text_px

    written: list[tuple[str, Path]] = []
    bar = tqdm(jobs, desc="analyses", disable=not progress, unit="analysis", leave=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeconvvizWarning)
        for title, stem, compute, render, used in bar:
            result = compute()
            info = json_safe(result.to_dict())
            info["dataset_indices"] = indices[:used]
            fig = render(result)
            info["text_px"] = min_text_px(fig, _DPI)  # for a page that shows it smaller
            png = save_figure(out / f"{stem}.png", fig, dpi=_DPI)
            write_json(out / f"{stem}.json", info)
            written.append((title, png))
    return written
