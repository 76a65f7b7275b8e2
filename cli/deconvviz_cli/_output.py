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
    from deconvviz._io import save_figure, write_json, write_text
    from deconvviz.checkpoint import json_safe

    png = save_figure(out / f"{stem}.png", fig, dpi=120)
    write_json(out / f"{stem}.json", json_safe(info))
    if table is not None:
        write_text(out / f"{stem}.md", table)
    return png
