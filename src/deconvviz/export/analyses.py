"""Quick versions of every analysis on a few images, written as PNG + JSON (for the report).

The export layer: this module sits above the analyses (:mod:`deconvviz.analyses`) and the
renderers (:mod:`deconvviz.render.analyses`) because it writes files; nothing in the analyses
imports it (``deconvviz.analyses.report_figures`` finds it by name, when asked for).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deconvviz.analyses._common import default_layers, pick_images
from deconvviz.analyses.registry import ReportInputs, analyses, get_analysis, resolve
from deconvviz.base._io import save_figure, write_json
from deconvviz.base._util import json_safe
from deconvviz.base.checks import check_images, split_call
from deconvviz.base.errors import InputError
from deconvviz.engine.probe import DeconvvizWarning
from deconvviz.engine.tracer import eval_mode
from deconvviz.export.measures import Written, write_figure_result

__all__ = ["report_figures", "pick_images", "run_analysis"]


def report_figures(
    model: nn.Module,
    dataset: Sequence[Any],
    out_dir: str | os.PathLike[str],
    *,
    n_images: int = 8,
    progress: bool = True,
    layers: Sequence[str] | None = None,
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
        layers: the layers the invariance and correspondence figures compare (``"NAME:N"``
            counts as ``NAME``); default: the first and the top hidden layer.

    Returns:
        ``(title, png path)`` pairs in report order; each path is the file as written
        (``out_dir / name``: relative to the working directory when ``out_dir`` is), so use it
        as it is and do not join it to ``out_dir`` again.
    """
    out = Path(out_dir)
    x, y, indices = _inputs(model, dataset, n_images)
    return _write_results(_jobs(model, x, y, layers), out, indices, progress)


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


def _jobs(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: Sequence[str] | None = None
) -> list[_Job]:
    """Every registered analysis's report sections (:mod:`deconvviz.analyses.registry`), in
    report order, each with its figure function."""
    h, w = x.shape[-2:]
    side = max(2, min(h, w) // 4)
    centre = [(h - side) // 2, (w - side) // 2, (h - side) // 2 + side, (w - side) // 2 + side]
    chosen = list(dict.fromkeys(split_call(n)[0] for n in layers or ()))
    chosen = chosen or list(default_layers(model, x))
    inputs = ReportInputs(model, x, y, chosen, centre, x[: min(4, len(x))])
    sections = [(s, a) for a in analyses() for s in a.report]
    sections.sort(key=lambda pair: pair[0].order)  # stable: registration order within one order
    return [
        (
            s.title,
            s.stem,
            functools.partial(s.compute, inputs),
            resolve(a.figure),
            s.images(inputs),
        )
        for s, a in sections
    ]


def run_analysis(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    out_dir: str | os.PathLike[str],
    *,
    stem: str | None = None,
    info: dict[str, Any] | None = None,
    **options: Any,
) -> Written:
    """Compute the registered analysis ``name`` on images ``x`` (labels ``y``) with
    ``options``, and write ``<stem>.png`` (its figure), ``<stem>.json`` (its numbers and
    ``info``) and, where it has a table, ``<stem>.md`` into ``out_dir``; ``stem`` defaults to
    ``name``. What an analysis command does."""
    analysis = get_analysis(name)
    if analysis.compute is None:
        raise InputError(f"the analysis {name!r} registered no compute function")
    res = analysis.compute(model, x, y, **options)
    table = resolve(analysis.table)(res) if analysis.table is not None else None
    data = {**res.to_dict(), **(info or {})}
    png = write_figure_result(
        Path(out_dir), stem or name, resolve(analysis.figure)(res), data, table
    )
    line = f"wrote {png}" + (f": {analysis.summary(res)}" if analysis.summary else "")
    return Written((png,), line)


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
