"""Old module paths, kept for one release: ``deconvviz.topk`` is ``deconvviz.analyses.topk``.

The modules that sat side by side at the top of the package now live in the folders of their
layer (docs/architecture.md). Importing an old path still works -- it gives the very module
object of the new path, so a monkeypatch or a pickle reaches the same code -- and warns once
with a :class:`DeprecationWarning` naming the new path. The old paths go in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: old module path -> where it lives now
MOVED: dict[str, str] = {
    f"deconvviz.{old}": f"deconvviz.{new}"
    for old, new in {
        "errors": "base.errors",
        "checks": "base.checks",
        "images": "base.images",
        "devices": "base.devices",
        "distributed": "base.distributed",
        "topk": "analyses.topk",
        "scan": "analyses.scan",
        "occlusion": "analyses.occlusion",
        "stats": "analyses.stats",
        "filters": "analyses.filters",
        "compare": "analyses.compare",
        "reconstruct": "analyses.reconstruct",
        "models": "sources.models",
        "data": "sources.data",
        "datasets": "sources.datasets",
        "loading": "sources.loading",
        "checkpoint": "sources.checkpoint",
        "pretrained": "sources.pretrained",
        "train": "training.train",
        "sweep": "training.sweep",
        "report": "export.report",
        "atlas": "export.atlas",
        "demo": "export.demo",
        "export_reconstructions": "export.reconstructions",
        "export_measures": "export.measures",
        "analyses_report": "export.analyses",
        "rules": "engine.rules",
        "receptive": "engine.receptive",
        "summary": "engine.summary",
    }.items()
}


def warn_moved(old: str, stacklevel: int) -> None:
    """The :class:`DeprecationWarning` of an old module path (``MOVED[old]`` is the new one),
    pointing ``stacklevel`` frames above this function's caller."""
    warnings.warn(
        f"{old} moved to {MOVED[old]}; import it from there (the old path goes in deconvviz 0.3)",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a placeholder; exec_module puts the real module in its place

    def exec_module(self, module: ModuleType) -> None:
        # warnings skips the import machinery's frames: this names the user's import line
        warn_moved(module.__name__, stacklevel=3)
        # the import system returns what sys.modules holds after exec_module: the new module
        sys.modules[module.__name__] = importlib.import_module(self.new)


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Put the finder of old paths on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
