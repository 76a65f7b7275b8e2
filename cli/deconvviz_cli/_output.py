"""How the analysis commands write what they computed: a figure, its numbers, a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_result"]


def write_result(
    out: Path, stem: str, fig: Any, info: dict[str, Any], table: str | None = None
) -> Path:
    """Write ``<stem>.png`` (the figure), ``<stem>.json`` (``info``) and, given a markdown
    ``table``, ``<stem>.md`` into ``out``; returns the path of the png."""
    from deconvviz.export.measures import write_figure_result

    return write_figure_result(out, stem, fig, info, table)
