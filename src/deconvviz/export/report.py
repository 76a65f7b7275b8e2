"""A static HTML report of a trained model: every figure deconvviz makes, on one page.

:func:`write_report` computes each section, renders it and writes it under ``out_dir``
(atomically, with :mod:`deconvviz.base._io`), then writes ``index.html`` linking every figure and
``manifest.json`` recording the versions, the run's config and seed, the dataset and every
figure. Sections:

1. training curves (from the run's metrics history);
2. first-layer filters (and their RMS against the paper's 0.1 radius);
3. activation statistics (histograms; the origin report's ``h_conv*_stats`` lines), or
   hidden-state statistics for recurrent models;
4. per-layer reconstructions (the paper's Fig. 2);
5. occlusion sensitivity (the paper's Fig. 7);
6. our deconvnet beside captum's attribution methods;
7. the paper's analyses (:func:`deconvviz.export.analyses.report_figures`).

A section that does not apply to the model (no convolution layer, no training history...) is
listed as skipped, with the reason, instead of failing the report.

Example::

    from deconvviz.export.report import report_from_run

    report = report_from_run("runs/lenet5", "../shared/data", "out/report")
    report.index            # out/report/index.html
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import importlib
import importlib.metadata
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Subset

from deconvviz.base._io import (
    atomic_dir,
    lock,
    lock_path_for,
    write_json,
    write_text,
)
from deconvviz.base._util import json_safe, spread
from deconvviz.base._version import __version__
from deconvviz.base.checks import (
    check_layer,
    check_model,
    check_positive_int,
    class_names_for,
)
from deconvviz.base.errors import DeconvvizError, InputError, unknown_name
from deconvviz.engine.rules import get_rule
from deconvviz.export.report_page import FIG_DIR, ReportFigure, Section, html_page
from deconvviz.export.report_sections import BUILDERS, Context, first_image
from deconvviz.sources.checkpoint import load_run
from deconvviz.sources.datasets import dataset_for_model
from deconvviz.sources.loading import Normalized, model_outputs

__all__ = ["Report", "ReportFigure", "report_from_run", "versions", "write_report"]

SECTIONS: tuple[tuple[str, str], ...] = (
    ("training", "Training curves"),
    ("filters", "First-layer filters"),
    ("stats", "Activation statistics"),
    ("reconstructions", "Per-layer reconstructions"),
    ("evidence", "Do the pictures mean something?"),
    ("occlusion", "Occlusion sensitivity"),
    ("compare", "Deconvnet and other attribution methods"),
    ("analyses", "Analyses"),
)
REPORT_ENTRIES = ("index.html", "manifest.json", FIG_DIR)
"""What a report consists of: replaced whole on a rewrite (other files in the folder stay)."""


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote.

    Attributes:
        out_dir: the report folder.
        index: ``index.html``.
        manifest: ``manifest.json``.
        figures: every figure, in page order.
        skipped: ``(section, reason)`` for the sections that do not apply.
    """

    out_dir: Path
    index: Path
    manifest: Path
    figures: tuple[ReportFigure, ...]
    skipped: tuple[tuple[str, str], ...] = ()


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages a report depends on."""
    out = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "deconvviz": __version__,
    }
    # the running module's own version string where it has one (torch's names its CUDA build)
    modules = {
        "torch": "torch",
        "torchvision": "torchvision",
        "captum": "captum",
        "numpy": "numpy",
        "matplotlib": "matplotlib",
        "pillow": "PIL",
        "tqdm": "tqdm",
    }
    for pkg, module in modules.items():
        try:
            out[pkg] = str(importlib.import_module(module).__version__)
        except (ImportError, AttributeError):
            out[pkg] = "not installed"
    try:
        out["click"] = importlib.metadata.version("click")
    except importlib.metadata.PackageNotFoundError:
        out["click"] = "not installed"
    return out


def write_report(
    out_dir: str | os.PathLike[str],
    model: nn.Module,
    dataset: Sequence[Any],
    *,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    run_path: str | os.PathLike[str] | None = None,
    class_names: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    k: int = 9,
    rule: str = "deconvnet",
    images: int = 4,
    occlusion_size: int | None = None,
    occlusion_stride: int | None = None,
    max_images: int | None = 2000,
    max_channels: int | None = None,
    sections: Sequence[str] | None = None,
    title: str | None = None,
    progress: bool = True,
) -> Report:
    """Compute, render and write the whole report into ``out_dir``.

    Args:
        out_dir: the report folder. The report is written into a temporary sibling folder and
            swapped in whole at the end: an old report stays intact until the new one is
            complete, and a failure (full disk, Ctrl-C) leaves it as it was and removes the
            partial one. Other files in ``out_dir`` are kept. The folder is locked
            (``.NAME.lock`` beside it) meanwhile: a second run into it is refused.
        model: the trained model.
        dataset: the images to analyse (``(image, label)`` items, e.g. the test set).
        config: the run's training config (recorded in the manifest; its ``seed`` too).
        metrics: the run's metrics; their ``history`` gives the training curves.
        run_path: the checkpoint the model came from (recorded).
        class_names: class names (default: ``dataset.classes`` when it has them).
        layers: layers to reconstruct (default: every ``Conv2d``).
        k: top activations per feature map in the reconstructions.
        rule: ``"deconvnet"``, ``"gradient"`` or ``"guided"``.
        images: how many images (the dataset's first) get occlusion maps and the comparison.
        occlusion_size: occluder side in pixels (default: a quarter of the image side).
        occlusion_stride: occluder step (default: a sixteenth of the side, at least 1).
        max_images: scan at most this many images (the dataset's first) for statistics and
            reconstructions (``None``: all).
        max_channels: draw the reconstructions of at most this many feature maps per layer
            (the first ones; ``None``: all). Class selectivity still covers every unit.
        sections: only these sections (keys of :data:`SECTIONS`; default all).
        title: page title.
        progress: show progress bars.

    Returns:
        A :class:`Report`.
    """
    wanted = _check_arguments(model, dataset, sections, layers, rule, images, max_images)
    out = Path(out_dir)
    with (
        lock(lock_path_for(out), f"the report folder {out}"),
        atomic_dir(out, owned=REPORT_ENTRIES) as stage,
    ):
        report = _write_all(
            stage,
            model,
            dataset,
            wanted,
            config=config,
            metrics=metrics,
            run_path=run_path,
            class_names=class_names,
            layers=layers,
            k=k,
            rule=rule,
            images=images,
            occlusion_size=occlusion_size,
            occlusion_stride=occlusion_stride,
            max_images=max_images,
            max_channels=max_channels,
            title=title,
            progress=progress,
        )
    # written in a temporary sibling folder, now swapped in whole as ``out``
    return dataclasses.replace(
        report,
        out_dir=out,
        index=out / report.index.relative_to(stage),
        manifest=out / report.manifest.relative_to(stage),
    )


def _write_all(
    out: Path,
    model: nn.Module,
    dataset: Sequence[Any],
    wanted: list[str],
    *,
    config: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None,
    run_path: str | os.PathLike[str] | None,
    class_names: Sequence[str] | None,
    layers: Sequence[str] | None,
    k: int,
    rule: str,
    images: int,
    occlusion_size: int | None,
    occlusion_stride: int | None,
    max_images: int | None,
    max_channels: int | None,
    title: str | None,
    progress: bool,
) -> Report:
    ctx = Context(
        out,
        model,
        dataset,
        _scanned(dataset, max_images),
        class_names_for(
            class_names if class_names is not None else getattr(dataset, "classes", None),
            model_outputs(model, dataset),
        ),
        metrics or {},
        layers,
        k,
        rule,
        images,
        occlusion_size,
        occlusion_stride,
        progress,
        max_channels,
    )
    done = _build_sections(ctx, wanted)
    return _write_index(ctx, done, config, run_path, max_images, title)


def _check_arguments(
    model: nn.Module,
    dataset: Sequence[Any],
    sections: Sequence[str] | None,
    layers: Sequence[str] | None,
    rule: str,
    images: int,
    max_images: int | None,
) -> list[str]:
    """The section keys asked for, after every check of :func:`write_report`'s arguments:
    user errors fail now, not as a skipped section after minutes of work."""
    keys = [key for key, _ in SECTIONS]
    wanted = keys if sections is None else list(sections)
    for s in wanted:
        if s not in keys:
            raise InputError(unknown_name("report section", str(s), keys))
    check_model(model)
    if len(dataset) == 0:
        raise InputError("the dataset is empty; the report needs images to analyse")
    check_positive_int("images", images)
    if max_images is not None and (isinstance(max_images, bool) or max_images < 1):
        raise InputError(f"max_images must be a positive integer or None, got {max_images!r}")
    get_rule(rule)
    for layer in layers or ():
        # 'name:N' (the N-th call of a module called several times) is the engine's to check
        check_layer(model, layer, calls=True)
    return wanted


def _scanned(dataset: Sequence[Any], max_images: int | None) -> Sequence[Any]:
    """The images scanned for statistics and reconstructions: ``max_images`` of them, spread
    evenly over the dataset."""
    picked = spread(len(dataset), max_images)
    if picked is not None:
        return Subset(dataset, picked)  # type: ignore[arg-type,return-value]
    return dataset


def _build_sections(ctx: Context, wanted: Sequence[str]) -> list[Section]:
    """Each wanted section, in page order; one that fails with a :class:`DeconvvizError` (or
    shows nothing) is kept as skipped, with the reason."""
    done: list[Section] = []
    for key, heading in SECTIONS:
        if key not in wanted:
            continue
        section = Section(key, heading)
        try:
            BUILDERS[key](ctx, section)
        except DeconvvizError as exc:
            section.skipped = str(exc)
            section.figures.clear()
            section.html.clear()
        if not section.figures and not section.html and section.skipped is None:
            section.skipped = "nothing to show"
        done.append(section)
    return done


def _write_index(
    ctx: Context,
    done: Sequence[Section],
    config: Mapping[str, Any] | None,
    run_path: str | os.PathLike[str] | None,
    max_images: int | None,
    title: str | None,
) -> Report:
    """Write ``manifest.json`` and ``index.html`` for the built sections."""
    figures = tuple(f for s in done for f in s.figures)
    skipped = tuple((s.key, s.skipped) for s in done if s.skipped is not None)
    manifest = _manifest(ctx, done, figures, config, run_path, max_images)
    manifest_path = write_json(ctx.out / "manifest.json", json_safe(manifest))
    page = html_page(
        title or f"deconvviz report: {_model_name(ctx.model)}", done, manifest, ctx.out
    )
    index = write_text(ctx.out / "index.html", page)
    return Report(ctx.out, index, manifest_path, figures, skipped)


def _model_name(model: nn.Module) -> str:
    """The user's model's class name, through deconvviz's input-normalisation wrapper."""
    return type(model.inner if isinstance(model, Normalized) else model).__name__


def _manifest(
    ctx: Context,
    done: Sequence[Section],
    figures: Sequence[ReportFigure],
    config: Mapping[str, Any] | None,
    run_path: str | os.PathLike[str] | None,
    max_images: int | None,
) -> dict[str, Any]:
    """What ``manifest.json`` records: versions, the run, the model, the data, the options,
    every section and every figure."""
    cfg = dict(config) if config else {}
    model = ctx.model
    return {
        "deconvviz": __version__,
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": None if run_path is None else str(run_path),
        "config": cfg,
        "seed": cfg.get("seed"),
        "metrics": {k_: v for k_, v in ctx.metrics.items() if k_ != "history"},
        "model": {
            "class": _model_name(model),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "config": getattr(model, "config", None),
        },
        "dataset": _describe_dataset(ctx.dataset, ctx.scan),
        "options": {
            "layers": list(ctx.layers) if ctx.layers else None,
            "k": ctx.k,
            "rule": ctx.rule,
            "images": ctx.images,
            "occlusion_size": ctx.occlusion_size,
            "occlusion_stride": ctx.occlusion_stride,
            "max_images": max_images,
            "max_channels": ctx.max_channels,
        },
        "sections": [
            {"key": s.key, "title": s.title, "skipped": s.skipped, **s.data} for s in done
        ],
        "figures": [{"section": f.section, "title": f.title, "path": f.path} for f in figures],
    }


def report_from_run(
    run_dir: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    *,
    model_factory: str | Callable[[], nn.Module] | None = None,
    dataset: str | None = None,
    split: str = "test",
    map_location: str = "cpu",
    loaded: Any = None,
    **options: Any,
) -> Report:
    """Load a run (or a user model's state dict) and its data, and :func:`write_report`.

    Args:
        run_dir: a run directory made by ``deconvviz train`` (or a checkpoint file); may be
            ``None`` where ``loaded`` is given (a model on its own initial weights).
        data_dir: where the dataset is (see :func:`deconvviz.sources.data.load_dataset`); ``None``
            for a run trained on the shipped CIFAR-10 sample (``deconvviz demo``).
        out_dir: the report folder.
        model_factory: ``"package.module:function"`` building a user model (its checkpoint
            may then be a bare state dict, loaded with ``weights_only=True``).
        dataset: dataset name for :func:`deconvviz.sources.data.load_dataset` (default: the one that
            goes with the run's config, or the only one found under ``data_dir``).
        split: ``"test"`` or ``"train"``.
        map_location: the device the model runs on (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        loaded: an already loaded model (:func:`deconvviz.sources.loading.load_model`), used instead
            of loading ``run_dir`` (any checkpoint layout, normalisation, image size).
        **options: passed on to :func:`write_report`.

    Returns:
        A :class:`Report`.
    """
    if loaded is None and run_dir is None:
        raise InputError("nothing to report on: give run_dir (a run or a checkpoint) or loaded=")
    run = (
        loaded
        if loaded is not None or run_dir is None
        else load_run(run_dir, model_factory=model_factory, map_location=map_location)
    )
    ds = dataset_for_model(run.model, run.config, data_dir, dataset, split)
    return write_report(
        out_dir, run.model, ds, config=run.config, metrics=run.metrics, run_path=run.path, **options
    )


def _describe_dataset(dataset: Any, scan: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"size": len(dataset), "scanned": len(scan)}
    for attr in ("name", "split", "source", "classes"):
        value = getattr(dataset, attr, None)
        if value is not None:
            out[attr] = str(value) if attr == "source" else value
    with contextlib.suppress(InputError, IndexError):
        out["image_shape"] = list(first_image(dataset).shape)
    return out
