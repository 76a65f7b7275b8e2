"""The analyses' registry: one registration per analysis, from which its result type, figure,
table, report sections and command are found.

Adding an analysis is one module that computes a frozen result object and registers it::

    from deconvviz.analyses.registry import Analysis, Option, ReportSection, register_analysis

    register_analysis(Analysis(
        name="mean-activation",                   # also the command: deconvviz mean-activation
        result=MeanActivation,
        compute=mean_activation,                  # (model, images, labels, **options) -> result
        figure=mean_activation_figure,            # or "deconvviz.render.x:fn", found when drawn
        options=(Option("--layer", str, None, "Layer to average."),),
        report=(ReportSection("Mean activation", "mean_activation",
                              lambda i: mean_activation(i.model, i.x, i.y)),),
        summary=lambda r: f"mean {float(r.mean):.3f}",
    ))

The report (``deconvviz.export.analyses.report_figures``) writes every registered report
section; ``deconvviz.export.analyses.run_analysis`` computes, draws and writes one analysis;
the CLI has a command for every registered analysis (a hand-written one where the analysis
names it in ``command``, else one made from ``options``).

This module sits in the analyses layer: figures and tables of the shipped analyses are named
as ``"module:function"`` strings into ``render/`` and imported only by the export layer when
drawn (docs/architecture.md, "Looked up by name"), so registering never imports matplotlib.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deconvviz.base.errors import InputError

__all__ = [
    "Analysis",
    "Option",
    "ReportInputs",
    "ReportSection",
    "analyses",
    "get_analysis",
    "register_analysis",
    "resolve",
    "unregister_analysis",
]


@dataclass(frozen=True)
class ReportInputs:
    """What the report gives each section: the model, its images ``x`` and labels ``y``, the
    default layers to compare, a centred box a quarter of the image side (``[y0, x0, y1,
    x1]``) and ``few``, the first (at most 4) images for the slower checks."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    layers: list[str]
    centre: list[int]
    few: torch.Tensor


@dataclass(frozen=True)
class ReportSection:
    """One figure of the report: its ``title``, file ``stem``, how to ``compute`` its result
    from the :class:`ReportInputs`, how many of the images it used (``images``; default all)
    and where it goes (``order``: smaller first)."""

    title: str
    stem: str
    compute: Callable[[ReportInputs], Any]
    images: Callable[[ReportInputs], int] = field(default=lambda i: len(i.x))
    order: int = 100


@dataclass(frozen=True)
class Option:
    """A command option of a registered analysis, in plain values (the CLI makes it a click
    option): its ``name`` as the command line spells it (two dashes and words joined by dashes;
    passed to ``compute`` by keyword, dashes as underscores), its ``type`` (``str``, ``int``,
    ``float``; ``bool`` is a flag), ``default`` and ``help``."""

    name: str
    type: type = str
    default: Any = None
    help: str = ""

    @property
    def key(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Analysis:
    """One analysis as the report and the CLI find it.

    Attributes:
        name: its name, and the name of its command.
        result: the frozen result type ``compute`` returns (with ``to_dict()``).
        figure: the figure function of a result, or ``"module:function"`` naming it.
        table: the markdown table of a result (or ``"module:function"``), or None.
        compute: ``(model, images, labels, **options) -> result`` for the generated command
            and ``run_analysis``; None where the command is hand-written (``command``).
        options: the generated command's options (passed to ``compute`` by keyword).
        images: images the command takes by default.
        summary: the end of the command's line (``wrote PNG: <summary>``) from a result.
        report: its sections in the HTML report.
        command: the name of a hand-written CLI command that runs it (the paper's analyses,
            whose options need parsing); None: the CLI makes one from ``options``.
        help: the generated command's help text.
    """

    name: str
    result: type
    figure: Callable[..., Any] | str
    table: Callable[[Any], str] | str | None = None
    compute: Callable[..., Any] | None = None
    options: tuple[Option, ...] = ()
    images: int = 4
    summary: Callable[[Any], str] | None = None
    report: tuple[ReportSection, ...] = ()
    command: str | None = None
    help: str = ""


_REGISTRY: dict[str, Analysis] = {}


def register_analysis(analysis: Analysis) -> Analysis:
    """Register ``analysis`` (again under the same name: the new one replaces the old)."""
    if not isinstance(analysis, Analysis):
        raise InputError(f"register_analysis takes an Analysis, got {type(analysis).__name__}")
    if not analysis.name or not analysis.name.replace("-", "").replace("_", "").isalnum():
        raise InputError(f"an analysis name is letters, digits, - and _; got {analysis.name!r}")
    _REGISTRY[analysis.name] = analysis
    return analysis


def unregister_analysis(name: str) -> None:
    """Forget the analysis registered as ``name`` (nothing happens for an unknown name)."""
    _REGISTRY.pop(name, None)


def _load_package() -> None:
    """Import every module of ``deconvviz.analyses``, so that each has registered itself."""
    package = importlib.import_module("deconvviz.analyses")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"deconvviz.analyses.{info.name}")


def analyses() -> list[Analysis]:
    """Every registered analysis, the shipped ones first, in registration order."""
    _load_package()
    return list(_REGISTRY.values())


def get_analysis(name: str) -> Analysis:
    """The analysis registered as ``name``."""
    _load_package()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise InputError(f"no analysis named {name!r}; registered: {known}")
    return _REGISTRY[name]


def resolve(ref: Callable[..., Any] | str) -> Callable[..., Any]:
    """A figure or table function from its ``"module:function"`` name (imported now), or the
    function itself."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
