"""The page of a report: its figures, its sections, and the HTML that shows them.

The lowest of the report's three modules: :mod:`deconvviz.export.report_sections` computes
and draws each section into a :class:`Section`, :mod:`deconvviz.export.report` writes them, and
this module turns them into ``index.html`` (:func:`html_page`), keeping every text at least
:data:`MIN_TEXT_PX` high.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MIN_TEXT_PX", "ReportFigure", "Section", "html_page"]

FIG_DIR = "figures"
"""The report's folder of figures."""
FIG_DPI = 100
MIN_TEXT_PX = 11.0
"""Smallest height, in CSS pixels, of any text the page shows (HTML text and text in figures)."""
LEFT_OUT = ("training",)
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


@dataclass
class Section:
    key: str
    title: str
    figures: list[ReportFigure] = field(default_factory=list)
    html: list[str] = field(default_factory=list)  # extra HTML blocks (tables, text)
    skipped: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # for the manifest


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


def relative_to(path: str | os.PathLike[str], folder: Path) -> str:
    """``path`` relative to ``folder`` (both as given: absolute or relative to the working
    directory), POSIX spelling; refuses a path outside ``folder``."""
    rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(folder))).as_posix()
    if rel == ".." or rel.startswith("../"):
        raise ValueError(f"{path} is not inside the report folder {folder}")  # a bug, not input
    return rel


def url(rel: str) -> str:
    """A relative file path as a URL reference for the page (spaces, '#', '%'... quoted)."""
    return urllib.parse.quote(rel, safe="/")


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "n/a"
    return str(v)


def html_table(
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
            out.append((f"{name} mean", ", ".join(fmt(v) for v in value[0::2]) or "(none)"))
            out.append((f"{name} std", ", ".join(fmt(v) for v in value[1::2]) or "(none)"))
            continue
        if isinstance(value, Mapping) and value:
            out.extend(_flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out.append((name, ", ".join(fmt(v) for v in value) or "(none)"))
        else:
            out.append((name, "(none)" if value is None else fmt(value)))
    return out


def _figure_html(f: ReportFigure, root: Path) -> str:
    """A figure at a size that keeps its smallest text at :data:`MIN_TEXT_PX` or more: it
    shrinks to the page's width down to that size, and scrolls sideways below it."""
    e = html.escape
    src = e(url(f.path), quote=True)
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


def _facts(manifest: Mapping[str, Any]) -> list[list[Any]]:
    """The rows of the page's summary table: model, parameters, checkpoint, dataset, seed."""
    cfg = manifest.get("config") or {}
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
    return facts


def html_page(
    title: str, sections: Sequence[Section], manifest: Mapping[str, Any], root: Path
) -> str:
    """``index.html``: the summary, the configuration, a table of contents and every
    section's HTML and inline figures (none shown so small that its text is under
    :data:`MIN_TEXT_PX`)."""
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
    parts.append(html_table(None, _facts(manifest), caption="Summary"))
    if cfg:
        trained = any(s.key == "training" and not s.skipped for s in sections)
        caption = "Training configuration" if trained else "Configuration"
        parts.append(html_table(["setting", "value"], _flatten(cfg), caption=caption))
    # a section that cannot apply to this model (no training run) is left out of the page; the
    # manifest still says why
    sections = [s for s in sections if not (s.skipped and s.key in LEFT_OUT)]
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
