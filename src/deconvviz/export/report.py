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
import html
import importlib
import importlib.metadata
import math
import os
import platform
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from deconvviz.analyses.compare import compare_methods
from deconvviz.analyses.dependence import image_dependence, pool_switches
from deconvviz.analyses.evidence import class_selectivity, filter_structure
from deconvviz.analyses.filters import conv_layers
from deconvviz.analyses.occlusion import occlusion
from deconvviz.analyses.reconstruct import reconstruct_dataset
from deconvviz.analyses.stats import activation_stats, hidden_state_stats, report_lines
from deconvviz.base._io import (
    atomic_dir,
    lock,
    lock_path_for,
    save_figure,
    save_image,
    write_json,
    write_text,
)
from deconvviz.base._util import json_safe, safe_name
from deconvviz.base._version import __version__
from deconvviz.base.checks import (
    check_layer,
    check_model,
    check_positive_int,
    class_names_for,
    conv_layer_names,
    model_device_dtype,
    split_call,
)
from deconvviz.base.errors import DeconvvizError, InputError, unknown_name
from deconvviz.engine.rules import get_rule
from deconvviz.export.analyses import report_figures
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
_FIG_DIR = "figures"
REPORT_ENTRIES = ("index.html", "manifest.json", _FIG_DIR)
"""What a report consists of: replaced whole on a rewrite (other files in the folder stay)."""
MIN_TEXT_PX = 11.0
"""Smallest height, in CSS pixels, of any text the page shows (HTML text and text in figures)."""
_FIG_DPI = 100
_LEFT_OUT = ("training",)
"""Sections left out of the page (not shown as skipped) when they do not apply."""


@dataclass(frozen=True)
class ReportFigure:
    """One figure of the report.

    Attributes:
        section: the section key (``"training"``, ``"filters"``, ...).
        title: the caption.
        path: the PNG, relative to the report folder.
        text_px: height in pixels of the smallest text drawn in the PNG (``None``: no text, or
            not known); the page never shows the PNG so small that this text is under
            :data:`MIN_TEXT_PX`.
        inline: ``False`` for a figure the page links to instead of showing (a whole layer's
            Fig. 2 grid, which the page shows as a grid of per-unit tiles).
    """

    section: str
    title: str
    path: str
    text_px: float | None = None
    inline: bool = True


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


@dataclass
class _Section:
    key: str
    title: str
    figures: list[ReportFigure] = field(default_factory=list)
    html: list[str] = field(default_factory=list)  # extra HTML blocks (tables, text)
    skipped: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # for the manifest


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


def _first_image(dataset: Sequence[Any]) -> Tensor:
    item = dataset[0]
    if isinstance(item, (tuple, list)):
        item = item[0]
    if not isinstance(item, Tensor):
        raise InputError(f"dataset items must be images or (image, label) pairs, got {type(item)}")
    return item


def _batch(dataset: Sequence[Any], n: int) -> tuple[Tensor, Tensor | None]:
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    if isinstance(items[0], (tuple, list)):
        x = torch.stack([it[0] for it in items])
        y = torch.tensor([int(it[1]) for it in items])
        return x, y
    return torch.stack(items), None


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
    ctx = _Context(
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
    """The images scanned for statistics and reconstructions: the first ``max_images``."""
    if max_images is not None and len(dataset) > max_images:
        return Subset(dataset, range(max_images))  # type: ignore[arg-type,return-value]
    return dataset


def _build_sections(ctx: _Context, wanted: Sequence[str]) -> list[_Section]:
    """Each wanted section, in page order; one that fails with a :class:`DeconvvizError` (or
    shows nothing) is kept as skipped, with the reason."""
    builders: dict[str, Callable[[_Context, _Section], None]] = {
        "training": _training,
        "filters": _filters,
        "stats": _stats,
        "reconstructions": _reconstructions,
        "evidence": _evidence,
        "occlusion": _occlusion,
        "compare": _compare,
        "analyses": _analyses,
    }
    done: list[_Section] = []
    for key, heading in SECTIONS:
        if key not in wanted:
            continue
        section = _Section(key, heading)
        try:
            builders[key](ctx, section)
        except DeconvvizError as exc:
            section.skipped = str(exc)
            section.figures.clear()
            section.html.clear()
        if not section.figures and not section.html and section.skipped is None:
            section.skipped = "nothing to show"
        done.append(section)
    return done


def _write_index(
    ctx: _Context,
    done: Sequence[_Section],
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
    page = _html_page(
        title or f"deconvviz report: {_model_name(ctx.model)}", done, manifest, ctx.out
    )
    index = write_text(ctx.out / "index.html", page)
    return Report(ctx.out, index, manifest_path, figures, skipped)


def _model_name(model: nn.Module) -> str:
    """The user's model's class name, through deconvviz's input-normalisation wrapper."""
    return type(model.inner if isinstance(model, Normalized) else model).__name__


def _manifest(
    ctx: _Context,
    done: Sequence[_Section],
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
        out["image_shape"] = list(_first_image(dataset).shape)
    return out


# ------------------------------------------------------------------------------ sections


@dataclass
class _Context:
    out: Path
    model: nn.Module
    dataset: Sequence[Any]
    scan: Sequence[Any]
    class_names: Sequence[str] | None
    metrics: Mapping[str, Any]
    layers: Sequence[str] | None
    k: int
    rule: str
    images: int
    occlusion_size: int | None
    occlusion_stride: int | None
    progress: bool
    max_channels: int | None = None
    reconstructions: dict[str, Any] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(_FIG_DIR, *parts)

    def rel(self, path: str | os.PathLike[str]) -> str:
        """``path`` (as written: absolute, or relative to the working directory) relative to
        the report folder, in POSIX spelling: the form every link of the report takes."""
        return _relative_to(path, self.out)

    def add_figure(self, section: _Section, title: str, fig: Any, *parts: str) -> None:
        from deconvviz.render.images import min_text_px

        path = self.path(*parts)
        text_px = min_text_px(fig, _FIG_DPI)
        save_figure(path, fig, dpi=_FIG_DPI)
        section.figures.append(ReportFigure(section.key, title, self.rel(path), text_px))

    def add_image(self, section: _Section, title: str, image: Any, *parts: str) -> None:
        path = self.path(*parts)
        save_image(path, image)
        section.figures.append(ReportFigure(section.key, title, self.rel(path)))


def _training(ctx: _Context, section: _Section) -> None:
    history = ctx.metrics.get("history") if ctx.metrics else None
    if not isinstance(history, Mapping) or not history.get("train_loss"):
        section.skipped = "the run has no training history (metrics.json without 'history')"
        return
    from deconvviz.render.training import curves_figure

    acc = ctx.metrics.get("final_test_acc")
    title = "train loss and test accuracy"
    if isinstance(acc, (int, float)) and math.isfinite(acc):
        title += f" (final test accuracy {acc:.3f})"
    ctx.add_figure(section, title, curves_figure(history, title=title), "training_curves.png")
    rows = [
        (k, v)
        for k, v in ctx.metrics.items()
        if k != "history" and isinstance(v, (int, float, str, type(None)))
    ]
    if rows:
        section.html.append(_table(["metric", "value"], [[k, _fmt(v)] for k, v in rows]))


def _filters(ctx: _Context, section: _Section) -> None:
    from deconvviz.render.filters import filter_grid, rms_figure

    convs = [(n, m) for n, m in conv_layers(ctx.model).items() if isinstance(m, nn.Conv2d)]
    if not convs:
        section.skipped = f"{type(ctx.model).__name__} has no Conv2d layer"
        return
    name, conv = convs[0]
    ctx.add_image(
        section,
        f"{name}: {conv.out_channels} filters "
        f"{conv.kernel_size[0]}x{conv.kernel_size[1]} (grey = 0)",
        filter_grid(conv, scale=6),
        f"filters_{safe_name(name)}.png",
    )
    ctx.add_figure(
        section,
        f"{name}: RMS of each filter (radius 0.1 dashed)",
        rms_figure(conv, radius=0.1, title=f"{name} filter RMS"),
        f"filters_{safe_name(name)}_rms.png",
    )


def _stats(ctx: _Context, section: _Section) -> None:
    loader: DataLoader[Any] = DataLoader(ctx.scan, batch_size=256, shuffle=False)  # type: ignore[arg-type]
    if callable(getattr(ctx.model, "hidden_states", None)) and not any(
        isinstance(m, nn.Conv2d) for m in ctx.model.modules()
    ):
        from deconvviz.render.stats import hidden_state_figure

        section.title = "Hidden-state statistics"
        hs = hidden_state_stats(ctx.model, loader, progress=ctx.progress)
        ctx.add_figure(
            section,
            "hidden state per time step: mean +- std, saturated fraction",
            hidden_state_figure(hs),
            "hidden_state_stats.png",
        )
        section.data["overall"] = {"mean": hs.overall_mean, "var": hs.overall_var}
        return
    from deconvviz.render.stats import histogram_figure

    # --layer: only the chosen layers ("NAME:N" measures the module NAME's output)
    chosen = list(dict.fromkeys(split_call(n)[0] for n in ctx.layers or ())) or None
    stats = activation_stats(ctx.model, loader, chosen, progress=ctx.progress)
    lines = report_lines(stats)
    section.html.append("<pre>" + html.escape("\n".join(lines)) + "</pre>")
    rows = []
    for s in stats.values():
        rows.append(
            [
                s.name,
                s.report_name,
                s.count,
                _fmt(s.mean),
                _fmt(s.var),
                _fmt(s.min),
                _fmt(s.max),
                f"{100 * s.zero_fraction:.1f}%",
                f"{len(s.dead_channels)} / {len(s.channel_zero_fraction)}",
            ]
        )
        ctx.add_figure(
            section,
            f"{s.name}: histogram of every activation",
            histogram_figure(s),
            f"stats_{safe_name(s.name)}.png",
        )
    section.html.insert(
        0,
        _table(
            [
                "layer",
                "origin report's name",
                "elements",
                "mean",
                "var",
                "min",
                "max",
                "zeros",
                "dead units (never > 0)",
            ],
            rows,
        ),
    )
    write_json(ctx.path("activation_stats.json"), {n: s.to_dict() for n, s in stats.items()})
    section.data["lines"] = lines


def _reconstructions(ctx: _Context, section: _Section) -> None:
    from deconvviz.export.reconstructions import write_dataset_reconstructions

    results = reconstruct_dataset(
        ctx.model,
        ctx.scan,
        ctx.layers,
        k=ctx.k,
        rule=ctx.rule,
        max_channels=ctx.max_channels,
        progress=ctx.progress,
    )
    dead_rows = []
    for layer, rec in results.items():
        pngs = write_dataset_reconstructions({layer: rec}, ctx.path("reconstructions"))
        dead = rec.dead
        dead_text = ", ".join(str(c) for c in dead) or "none"
        dead_rows.append([layer, f"{len(dead)} / {len(rec.channels)}", dead_text])
        caption = (
            f"top-{rec.found} activations of each of {_shown(rec, ctx.max_channels)} over "
            f"{len(ctx.scan)} images: {rec.rule} projections (left, each scaled to its own "
            "max |value|, grey = 0) and the image patches that caused them (right); "
            f"dead feature maps (never > 0): {dead_text}"
        )
        for page, path in enumerate(pngs):
            more = f" (page {page + 1}/{len(pngs)})" if len(pngs) > 1 else ""
            section.figures.append(
                ReportFigure(section.key, f"{layer}{more}: {caption}", ctx.rel(path), inline=False)
            )
        section.html.append(_unit_grid(ctx, layer, rec, caption, pngs))
    section.html.append(
        _table(
            ["layer", "dead units (never > 0)", "which"],
            dead_rows,
            caption=f"Dead feature maps (of those drawn): never above 0 on the {len(ctx.scan)} "
            "scanned images",
        )
    )
    section.data["layers"] = list(results)
    section.data["dead"] = {layer: rec.dead for layer, rec in results.items()}
    ctx.reconstructions.update(results)
    _dependence(ctx, section, results)


def _dependence(ctx: _Context, section: _Section, results: Mapping[str, Any]) -> None:
    """How much each layer's pictures depend on the image: a table, a plain sentence for each
    layer where they hardly do, and guided backprop's pictures of those layers beside."""
    device, dtype = model_device_dtype(ctx.model)
    x = _first_image(ctx.dataset)[None].to(device, dtype)
    deps = [
        image_dependence(rec, pool_switches(ctx.model, layer, x)) for layer, rec in results.items()
    ]
    rows = [
        [
            d.layer,
            "-" if d.switches is None else d.switches,
            _fmt(d.correlation),
            "hardly" if d.hardly else "yes",
        ]
        for d in deps
    ]
    section.html.append(
        "<h3>Do these pictures depend on the image?</h3><p>A deconvnet's reverse path depends "
        "on the image only through the max-pooling switches below a layer (Mahendran &amp; "
        "Vedaldi, 2016). For each layer: the switches a projection can read, and the mean "
        "correlation between a unit's top projections, each in its own receptive-field window "
        "(1: every image gives the same picture, up to scale).</p>"
    )
    section.html.append(
        _table(
            [
                "layer",
                "max-pooling switches below",
                "mean correlation of top projections",
                "depends on the image",
            ],
            rows,
        )
    )
    hardly = [d for d in deps if d.hardly]
    for d in hardly:
        section.html.append(f'<p class="warn">{html.escape(d.sentence() or "")}</p>')
    section.data["image_dependence"] = [d.to_dict() for d in deps]
    if not hardly or ctx.rule != "deconvnet":
        return
    guided = reconstruct_dataset(
        ctx.model,
        ctx.scan,
        [d.layer for d in hardly],
        k=ctx.k,
        rule="guided",
        max_channels=min(8, ctx.max_channels or 8),
        progress=ctx.progress,
    )
    for layer, rec in guided.items():
        pngs = _write_guided(ctx, layer, rec)
        caption = (
            f"guided backprop, beside the deconvnet: top-{rec.found} activations of each of "
            f"its first {len(rec.channels)} feature maps, projections (left) and patches (right)"
        )
        section.html.append(_unit_grid(ctx, f"{layer} (guided backprop)", rec, caption, pngs))


def _write_guided(ctx: _Context, layer: str, rec: Any) -> list[Path]:
    from deconvviz.export.reconstructions import write_dataset_reconstructions

    return write_dataset_reconstructions({f"{layer}_guided": rec}, ctx.path("reconstructions"))


def _unit_grid(ctx: _Context, layer: str, rec: Any, caption: str, pngs: Sequence[Path]) -> str:
    """One layer of Fig. 2 as an HTML grid: one tile per unit (its projections beside its
    patches, a link to the full-size tile), its caption as text; dead units as text."""
    from deconvviz.render.reconstruct import unit_tiles

    e = html.escape
    folder = ctx.path("reconstructions", safe_name(layer))
    cells = []
    for ch, block, text in unit_tiles(rec):
        if block is None:
            cells.append(f'<figure class="unit dead"><figcaption>{e(text)}</figcaption></figure>')
            continue
        src = e(_url(ctx.rel(save_image(folder / f"ch{ch}.png", block))), quote=True)
        cells.append(
            f'<figure class="unit"><a href="{src}" title="full size"><img src="{src}" '
            f'alt="{e(layer, quote=True)} {e(text, quote=True)}" width="{block.width}" '
            f'height="{block.height}" loading="lazy"></a><figcaption>{e(text)}</figcaption>'
            "</figure>"
        )
    whole = ", ".join(f'<a href="{e(_url(ctx.rel(p)), quote=True)}">{e(p.name)}</a>' for p in pngs)
    return (
        f'<h3 id="layer-{e(safe_name(layer), quote=True)}">{e(layer)}</h3>'
        f"<p>{e(caption)}. Click a tile to enlarge it; the whole layer as one picture: "
        f"{whole}.</p>"
        f'<div class="units">{"".join(cells)}</div>'
    )


def _shown(rec: Any, max_channels: int | None) -> str:
    n = len(rec.channels)
    if max_channels is not None and n == max_channels:
        return f"the first {n} feature maps (deconvviz reconstruct or atlas draws them all)"
    return f"its {n} feature maps"


def _evidence(ctx: _Context, section: _Section) -> None:
    # every unit of every layer (the reconstructions may show only some): one scan
    layers = list(ctx.reconstructions) or list(ctx.layers or conv_layer_names(ctx.model))
    sel = class_selectivity(ctx.model, ctx.scan, layers, k=ctx.k, progress=ctx.progress)
    chance = 1.0 / sel.classes if sel.classes else math.nan
    rows = [
        [
            name,
            f"{int(sel.per_unit[name].numel()) - len(sel.dead[name])} / "
            f"{int(sel.per_unit[name].numel())}",
            _fmt(sel.selectivity[name]),
        ]
        for name in sel.layers
    ]
    measured = [n for n in sel.layers if math.isfinite(float(sel.selectivity[n]))]
    if len(measured) < 2:
        trend = "only one layer was measured here, so there is no trend to read"
    else:
        trend = "here it " + ("rises" if sel.rises_with_depth else "does not rise") + " with depth"
    section.html.append(
        "<p><b>Class selectivity</b>: for each layer, over its live units, the mean fraction of "
        f"a unit's top-{sel.k} images (of {sel.images} scanned) that share the unit's most "
        f"common class. Chance is about {chance:.2f}. Zeiler &amp; Fergus observed that higher "
        f"layers are more class-specific; {trend}.</p>"
    )
    section.html.append(_table(["layer", "live units", f"class selectivity of top-{sel.k}"], rows))
    data: dict[str, Any] = {"selectivity": sel.to_dict()}
    convs = [m for m in conv_layers(ctx.model).values() if isinstance(m, nn.Conv2d)]
    fs = None
    if convs and min(convs[0].kernel_size) >= 2:
        fs = filter_structure(convs[0])
        first = next(n for n, m in conv_layers(ctx.model).items() if m is convs[0])
        verdict = (
            "First-layer filters are structured"
            if fs.structured
            else "First-layer filters are no smoother than at initialisation"
        )
        section.html.append(
            f"<p><b>{verdict}</b>: the mean correlation between "
            "horizontally and vertically neighbouring weights of each "
            f"{html.escape(first)} filter is {fs.trained:.3f}, against {fs.init:.3f} for the "
            "same layer freshly initialised "
            f"(mean of {fs.seeds} initialisations). Smooth filters (edges, blobs, colour "
            "gradients) score near 1, noise near 0.</p>"
        )
        data["filter_structure"] = {"layer": first, **fs.to_dict()}
    from deconvviz.render.evidence import evidence_figure

    ctx.add_figure(
        section,
        "class selectivity of the top images per layer, and first-layer filter structure",
        evidence_figure(sel, fs),
        "evidence.png",
    )
    write_json(ctx.path("evidence.json"), json_safe(data))
    section.data.update(data)


def _occlusion(ctx: _Context, section: _Section) -> None:
    from deconvviz.render.occlusion import occlusion_figure

    x, y = _batch(ctx.dataset, ctx.images)
    device, dtype = model_device_dtype(ctx.model)
    x = x.to(device, dtype)
    h, w = x.shape[-2:]
    size = ctx.occlusion_size or max(1, min(h, w) // 4)
    stride = ctx.occlusion_stride or max(1, min(h, w) // 16)
    convs = conv_layer_names(ctx.model)
    layer = convs[-1] if convs else None
    res = occlusion(
        ctx.model, x, target=y, size=size, stride=stride, layer=layer, progress=ctx.progress
    )
    for i in range(x.shape[0]):
        ctx.add_figure(
            section,
            f"image {i}: occluder {size}x{size}, stride {stride}"
            + (f", strongest feature map of {layer}" if layer else ""),
            occlusion_figure(res, x.cpu(), i, ctx.class_names),
            f"occlusion_{i}.png",
        )


def _compare(ctx: _Context, section: _Section) -> None:
    from deconvviz.render.reconstruct import comparison_figure

    x, y = _batch(ctx.dataset, ctx.images)
    comp = compare_methods(ctx.model, x, target=y, progress=ctx.progress)
    for note in comp.notes:
        section.html.append(f'<p class="warn">{html.escape(note)}</p>')
    if ctx.rule == "deconvnet":
        from deconvviz.analyses.dependence import CITATION, pool_switches

        device, dtype = model_device_dtype(ctx.model)
        if pool_switches(ctx.model, None, x[:1].to(device, dtype)) == 0:
            section.html.append(
                '<p class="warn">This model has no max pooling, so its deconvnet column is the '
                "same pattern for every image, up to scale: it shows the network's filters, not "
                f"what it saw; compare guided backprop ({html.escape(CITATION)}).</p>"
            )
    ctx.add_figure(
        section,
        "our deconvnet beside captum's saliency, guided backprop, "
        "integrated gradients and occlusion, for each image's true class",
        comparison_figure(comp, ctx.class_names),
        "compare.png",
    )


def _analyses(ctx: _Context, section: _Section) -> None:
    folder = ctx.path("analyses")
    # report_figures returns the paths it wrote (folder / name): usable as they are, never to be
    # joined to the folder again
    figures = report_figures(
        ctx.model, ctx.dataset, folder, progress=ctx.progress, layers=ctx.layers
    )
    for title, path in figures:
        text_px = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            import json

            text_px = json.loads(Path(path).with_suffix(".json").read_text())["text_px"]
        section.figures.append(ReportFigure(section.key, str(title), ctx.rel(path), text_px))


# ------------------------------------------------------------------------------ HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
nav ul { columns: 2; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; image-rendering: auto; }
figcaption { font-size: .9em; color: #555; }
.scroll { overflow-x: auto; }
.units { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr));
         gap: .6em; }
.units figure { margin: 0; }
.units img { width: 100%; }
.units figcaption { font-size: .85em; }
.warn { background: #fff6e0; border-left: 4px solid #e0a000; padding: .4em .8em; }
.unit.dead { background: #f2f2f2; border: 1px dashed #aaa; padding: .5em; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
caption { text-align: left; font-weight: bold; padding: .2em 0; }
td, th { border: 1px solid #ccc; padding: .2em .6em; text-align: left; }
tbody th { background: #f6f6f6; font-weight: normal; }
.skipped { color: #888; font-style: italic; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
"""


def _relative_to(path: str | os.PathLike[str], folder: Path) -> str:
    """``path`` relative to ``folder`` (both as given: absolute or relative to the working
    directory), POSIX spelling; refuses a path outside ``folder``."""
    rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(folder))).as_posix()
    if rel == ".." or rel.startswith("../"):
        raise ValueError(f"{path} is not inside the report folder {folder}")  # a bug, not input
    return rel


def _url(rel: str) -> str:
    """A relative file path as a URL reference for the page (spaces, '#', '%'... quoted)."""
    return urllib.parse.quote(rel, safe="/")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "n/a"
    return str(v)


def _table(
    head: Sequence[str] | None, rows: Sequence[Sequence[Any]], *, caption: str | None = None
) -> str:
    """An HTML table; ``head=None`` for a key-value table (its first column is a row header,
    no empty header row)."""
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    thead = ""
    if head is not None:
        th = "".join(f'<th scope="col">{html.escape(str(h))}</th>' for h in head)
        thead = f"<thead><tr>{th}</tr></thead>"
    body = []
    for row in rows:
        cells = [html.escape(str(c)) for c in row]
        if head is None and cells:
            first = f'<th scope="row">{cells[0]}</th>'
            body.append("<tr>" + first + "".join(f"<td>{c}</td>" for c in cells[1:]) + "</tr>")
        else:
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table>{cap}{thead}<tbody>{''.join(body)}</tbody></table>"


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"model": {"width": 8}, "lr": 0.1}`` -> ``[("model.width", 8), ("lr", 0.1)]``."""
    out: list[tuple[str, Any]] = []
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if key == "normalize" and isinstance(value, (list, tuple)) and len(value) % 2 == 0:
            # stored as (mean, std) pairs, one per channel: one row each
            out.append((f"{name} mean", ", ".join(_fmt(v) for v in value[0::2]) or "(none)"))
            out.append((f"{name} std", ", ".join(_fmt(v) for v in value[1::2]) or "(none)"))
            continue
        if isinstance(value, Mapping) and value:
            out.extend(_flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out.append((name, ", ".join(_fmt(v) for v in value) or "(none)"))
        else:
            out.append((name, "(none)" if value is None else _fmt(value)))
    return out


def _figure_html(f: ReportFigure, root: Path) -> str:
    """A figure at a size that keeps its smallest text at :data:`MIN_TEXT_PX` or more: it
    shrinks to the page's width down to that size, and scrolls sideways below it."""
    e = html.escape
    src = e(_url(f.path), quote=True)
    size = ""
    with contextlib.suppress(OSError):
        from PIL import Image

        with Image.open(root / f.path) as im:
            w, h = im.size
        size = f' width="{w}" height="{h}"'
        if f.text_px is not None:  # text_px * shown / w >= MIN_TEXT_PX
            size += f' style="min-width: {math.ceil(w * MIN_TEXT_PX / f.text_px)}px"'
    text = "" if f.text_px is None else f' data-text-px="{f.text_px:.2f}"'
    return (
        f'<figure><div class="scroll"><a href="{src}"><img src="{src}" '
        f'alt="{e(f.title, quote=True)}"{size}{text} loading="eager"></a></div>'
        f"<figcaption>{e(f.title)}</figcaption></figure>"
    )


def _html_page(
    title: str, sections: Sequence[_Section], manifest: Mapping[str, Any], root: Path
) -> str:
    e = html.escape
    ver = manifest["versions"]
    cfg = manifest.get("config") or {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{e(title)}</h1>",
        "<p>Made by deconvviz "
        f"{e(ver['deconvviz'])} (torch {e(ver['torch'])}, captum {e(ver['captum'])}) on "
        f"{e(manifest['created'])}. Versions, config, seed and every figure are listed in "
        '<a href="manifest.json">manifest.json</a>.</p>',
    ]
    facts = [
        ["model", manifest["model"]["class"]],
        ["parameters", f"{manifest['model']['parameters']:,}"],
    ]
    if manifest.get("run"):
        facts.append(["checkpoint", manifest["run"]])
    ds = manifest["dataset"]
    facts.append(
        [
            "dataset",
            " ".join(str(ds[k]) for k in ("name", "split") if k in ds)
            + f" ({ds['size']} images, {ds['scanned']} scanned)",
        ]
    )
    if cfg.get("seed") is not None:
        facts.append(["seed", cfg["seed"]])
    parts.append(_table(None, facts, caption="Summary"))
    if cfg:
        trained = any(s.key == "training" and not s.skipped for s in sections)
        caption = "Training configuration" if trained else "Configuration"
        parts.append(_table(["setting", "value"], _flatten(cfg), caption=caption))
    # a section that cannot apply to this model (no training run) is left out of the page; the
    # manifest still says why
    sections = [s for s in sections if not (s.skipped and s.key in _LEFT_OUT)]
    parts.append("<nav><ul>")
    for s in sections:
        count = len(s.figures)
        note = " (skipped)" if s.skipped else f" ({count} figure{'' if count == 1 else 's'})"
        parts.append(f'<li><a href="#{e(s.key)}">{e(s.title)}</a>{e(note)}</li>')
    parts.append("</ul></nav>")
    for s in sections:
        parts.append(f'<section id="{e(s.key)}">')
        parts.append(f"<h2>{e(s.title)}</h2>")
        if s.skipped:
            parts.append(f'<p class="skipped">Skipped: {e(s.skipped)}</p>')
        parts.extend(s.html)
        for f in s.figures:
            if f.inline:
                parts.append(_figure_html(f, root))
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
