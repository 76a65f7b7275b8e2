"""deconvviz: see inside a trained PyTorch network the way Zeiler & Fergus did.

Example:
    >>> import deconvviz
    >>> with deconvviz.attach(model) as dn:                      # doctest: +SKIP
    ...     rec = dn.project(x, layer="conv2", channel=[0, 5])

``import deconvviz`` loads the computing layers only: the names drawn or written by the render
and export layers (``filter_grid``, ``Report``, ``write_report``) are imported on first use
(module ``__getattr__``), so importing the package pulls in neither matplotlib nor captum.
"""

from __future__ import annotations

import importlib
from typing import Any

from deconvviz import _compat
from deconvviz.analyses.compare import Comparison, compare_methods, project_class
from deconvviz.analyses.filters import RenormaliseHook, dead_filters, filter_rms, renormalise_
from deconvviz.analyses.occlusion import OcclusionResult, occlusion
from deconvviz.analyses.reconstruct import (
    ImageProjections,
    LayerReconstructions,
    reconstruct_dataset,
    reconstruct_images,
)
from deconvviz.analyses.scan import Scan, scan, top_activations
from deconvviz.analyses.stats import (
    HiddenStateStats,
    LayerStats,
    activation_stats,
    hidden_state_stats,
    report_lines,
)
from deconvviz.analyses.topk import (
    FewImagesWarning,
    TopActivations,
    TopProjections,
    project_top,
)
from deconvviz.base._version import __version__
from deconvviz.base.errors import DeconvvizError
from deconvviz.engine import (
    Deconvnet,
    DeconvvizWarning,
    ReceptiveField,
    attach,
    layer_output,
    receptive_field,
)

_compat.install()  # old module paths (deconvviz.topk, ...) keep working for one release

_LAZY = {
    "filter_grid": "deconvviz.render.filters",
    "Report": "deconvviz.export.report",
    "write_report": "deconvviz.export.report",
}
"""Public names of the render and export layers: name -> defining module, imported on use."""

__all__ = [
    "Comparison",
    "ImageProjections",
    "LayerReconstructions",
    "Report",
    "compare_methods",
    "project_class",
    "reconstruct_dataset",
    "reconstruct_images",
    "write_report",
    "HiddenStateStats",
    "LayerStats",
    "OcclusionResult",
    "RenormaliseHook",
    "activation_stats",
    "dead_filters",
    "filter_grid",
    "filter_rms",
    "hidden_state_stats",
    "occlusion",
    "renormalise_",
    "report_lines",
    "Deconvnet",
    "DeconvvizError",
    "DeconvvizWarning",
    "FewImagesWarning",
    "ReceptiveField",
    "Scan",
    "TopActivations",
    "TopProjections",
    "__version__",
    "attach",
    "layer_output",
    "project_top",
    "receptive_field",
    "scan",
    "top_activations",
]


def __getattr__(name: str) -> Any:
    old = f"deconvviz.{name}"
    if old in _compat.MOVED:  # deconvviz.topk as an attribute: the old module, for one release
        _compat.warn_moved(old, stacklevel=3)  # the user's attribute access
        return importlib.import_module(_compat.MOVED[old])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deconvviz' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
