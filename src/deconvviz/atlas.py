"""The atlas: a static site of every unit of every scanned layer (the paper's Fig. 2, at scale).

:func:`write_atlas` takes a :class:`deconvviz.scan.Scan` and, per layer, the
:class:`deconvviz.TopProjections` of its top activations, and writes::

    out/index.html                      layers: type, shape, channels, dead units, receptive field
    out/layers/<layer>.html             a grid of the layer's units: top-1 patch and projection
    out/units/<layer>/<c>.html          one unit: its top-k patches and projections, values, links
    out/img/<layer>/<c>.png             the unit's tiles in one strip (row 0: image patches, row 1:
                                        projections; column j: its j-th activation), upscaled
    out/atlas.json                      everything above as data

Every link is relative, so the site works from ``file://`` and behind any static server; images
load lazily (``loading="lazy"``, with their size given), so a layer of 2,048 units opens fast.
One strip per unit (pages show its tiles with CSS ``object-position``) keeps the file count, and
the time spent writing files atomically, low.
Files are written atomically. This module writes; it computes nothing but the display scaling.
"""

from __future__ import annotations

import html
import io
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deconvviz._io import atomic_dir, lock, lock_path_for, write_bytes, write_json, write_text
from deconvviz._util import dead_units, json_safe, safe_names
from deconvviz.errors import InputError

__all__ = ["AtlasSite", "write_atlas", "tile_scale"]

MIN_TILE = 96  # smallest displayed side of a tile, in pixels


@dataclass(frozen=True)
class AtlasSite:
    """What :func:`write_atlas` wrote.

    Attributes:
        index: the site's ``index.html``.
        pages: every HTML page written.
        images: every PNG tile written.
    """

    index: Path
    pages: list[Path]
    images: list[Path]


def tile_scale(h: int, w: int, target: int = MIN_TILE) -> int:
    """Integer nearest-neighbour factor that brings a ``h x w`` tile to at least ``target``."""
    return max(1, math.ceil(target / max(1, max(h, w))))


def _png(t: Tensor, scale: int) -> bytes:
    from PIL import Image

    from deconvviz.render.images import to_image

    img = to_image(t)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


SITE_ENTRIES = ("index.html", "style.css", "atlas.json", "layers", "units", "img")
"""What a site consists of: replaced whole on a rewrite (anything else in the folder, such as
the scan state, is kept)."""


def _fmt(v: float) -> str:
    return "none" if not math.isfinite(v) else f"{v:.4g}"


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
a{color:#0b57d0}nav{margin:.4em 0 1em}nav a{margin-right:1em}
table{border-collapse:collapse}
td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.unit{background:#fff;border:1px solid #ccc;padding:4px;text-align:center;font-size:12px}
.unit img,.top img{image-rendering:pixelated;display:inline-block;background:#888;
object-fit:none}
.dead{opacity:.45;border-style:dashed}.tag{color:#b3261e;font-weight:600}
.top{display:flex;flex-wrap:wrap;gap:14px}.top figure{margin:0;background:#fff;padding:6px;
border:1px solid #ccc}.top figcaption{font-size:12px;line-height:1.35}
.note{color:#555;font-size:13px;max-width:60em}
"""


def _page(title: str, body: str, css_path: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel="stylesheet" href="{css_path}"></head>\n<body>\n{body}\n</body></html>\n'
    )


def _img(src: str, size: tuple[int, int], alt: str, row: int, col: int) -> str:
    """Tile ``(row, col)`` of a strip of ``size`` tiles (CSS ``object-fit: none`` crops it)."""
    h, w = size
    style = f"object-position:-{col * w}px -{row * h}px"
    return (
        f'<img src="{src}" width="{w}" height="{h}" loading="lazy" decoding="async" '
        f'style="{style}" alt="{html.escape(alt)}">'
    )


@dataclass(frozen=True)
class _LayerView:
    """What every page of one layer shows: its name, its units' top-k, and the display sizes."""

    proj: Any
    layer: str
    index: int  # position in the scan's layers
    safe: str  # the layer's file-safe name
    big: int  # display upscaling factor
    big_size: tuple[int, int]  # one displayed tile, in pixels
    dead: list[int]
    rf_text: str
    what: str  # what a unit's value means
    files: Mapping[str, str]  # every layer's file-safe name (injective)

    @property
    def top(self) -> Any:
        return self.proj.top


def _check_projections(proj: Any, layers: list[str]) -> None:
    """Reject projections of a layer the scan does not hold, or of only some of its channels."""
    top = proj.top
    layer = top.layer
    if layer not in layers:
        raise InputError(f"projections of {layer!r}, which the scan does not hold")
    if proj.reconstructions.shape[0] != top.channels:
        raise InputError(
            f"projections of {layer!r} hold {proj.reconstructions.shape[0]} channels of "
            f"{top.channels}; project every channel for the atlas"
        )


def _layer_view(
    proj: Any, layers: list[str], images_scanned: int, files: Mapping[str, str]
) -> _LayerView:
    top = proj.top
    layer = top.layer
    th, tw = proj.reconstructions.shape[-2:]
    big = tile_scale(th, tw)
    rf = top.receptive_field
    return _LayerView(
        proj=proj,
        layer=layer,
        index=layers.index(layer),
        safe=files[layer],
        big=big,
        big_size=(th * big, tw * big),
        dead=dead_units(top.values[:, 0]),
        rf_text="whole image" if rf is None else f"{rf.size[0]}x{rf.size[1]} px",
        what=(
            f"value = the unit's activation (output of <code>{html.escape(layer)}</code>) at its "
            f"strongest position in the image; top-{top.k} over {images_scanned} images, "
            "one per image"
        ),
        files=files,
    )


def _write_strips(out: Path, view: _LayerView) -> list[Path]:
    """Write one strip per unit: row 0 the image patches, row 1 the projections."""
    from deconvviz.reconstruct import LayerReconstructions
    from deconvviz.render.images import to_display
    from deconvviz.render.reconstruct import input_display, outside_mask

    proj, top = view.proj, view.top
    rec = LayerReconstructions.from_projections(proj)
    th, tw = proj.reconstructions.shape[-2:]
    recs_disp = to_display(proj.reconstructions.double())
    images = []
    for c in range(top.channels):
        mask = outside_mask(rec, c)
        strip = torch.full((proj.patches.shape[2], 2 * th, top.k * tw), 1.0, dtype=torch.float64)
        for j in range(top.k):
            if int(top.indices[c, j]) < 0:
                continue
            patch = input_display(proj.patches[c, j])
            if mask is not None:
                patch = torch.where(mask[j].unsqueeze(0), torch.full_like(patch, 0.85), patch)
            strip[:, :th, j * tw : (j + 1) * tw] = patch
            strip[:, th:, j * tw : (j + 1) * tw] = recs_disp[c, j]
        path = out / "img" / view.safe / f"{c}.png"
        write_bytes(path, _png(strip, view.big))
        images.append(path)
    return images


def _unit_meta(view: _LayerView, c: int) -> dict[str, Any]:
    """Unit ``c``'s top-k as ``atlas.json`` records it."""
    top = view.top
    return {
        "channel": c,
        "dead": c in view.dead,
        "values": [None if not math.isfinite(v) else v for v in top.values[c].tolist()],
        "indices": top.indices[c].tolist(),
        "positions": top.positions[c].tolist(),
        "boxes": top.boxes[c].tolist(),
    }


def _layer_cell(view: _LayerView, c: int) -> str:
    """Unit ``c``'s cell on the layer page: its top patch and projection, linking to its page."""
    top, safe, dead = view.top, view.safe, c in view.dead
    label = f"unit {c}<br>max {_fmt(float(top.values[c, 0]))}"
    if dead:
        label += '<br><span class="tag">dead</span>'
    src = f"../img/{safe}/{c}.png"
    imgs = (
        _img(src, view.big_size, f"unit {c}: top image patch", 0, 0)
        + " "
        + _img(src, view.big_size, f"unit {c}: its projection", 1, 0)
        if int(top.indices[c, 0]) >= 0
        else ""
    )
    cls = "unit dead" if dead else "unit"
    return f'<a class="{cls}" href="../units/{safe}/{c}.html" id="u{c}">{imgs}<br>{label}</a>'


def _layer_page(view: _LayerView, layers: list[str], title: str) -> str:
    """The layer's page: a grid of its units, with links to the layers either side."""
    li, layer = view.index, view.layer
    cells = [_layer_cell(view, c) for c in range(view.top.channels)]
    nav = ['<a href="../index.html">index</a>']
    if li > 0:
        nav.append(
            f'<a href="{view.files[layers[li - 1]]}.html">&larr; {html.escape(layers[li - 1])}</a>'
        )
    if li + 1 < len(layers):
        nav.append(
            f'<a href="{view.files[layers[li + 1]]}.html">{html.escape(layers[li + 1])} &rarr;</a>'
        )
    body = (
        f"<h1>{html.escape(layer)}</h1><nav>{''.join(nav)}</nav>"
        f'<p class="note">{view.top.channels} units, {len(view.dead)} dead (never above 0 over '
        f"the scanned images), receptive field {view.rf_text}. Each cell: the image patch of the "
        f"unit's strongest activation (left) and its {html.escape(view.proj.rule)} projection "
        f"(right, grey = 0). {view.what}.</p>"
        f'<div class="grid">{"".join(cells)}</div>'
    )
    return _page(f"{layer} - {title}", body, "../style.css")


def _unit_figure(view: _LayerView, c: int, j: int) -> str:
    """The ``j``-th activation of unit ``c``: its patch, its projection, and where it is."""
    top = view.top
    i = int(top.indices[c, j])
    r, col = top.positions[c, j].tolist()
    y0, x0, y1, x1 = top.boxes[c, j].tolist()
    src = f"../../img/{view.safe}/{c}.png"
    return (
        "<figure>"
        + _img(src, view.big_size, f"top {j + 1}: patch", 0, j)
        + " "
        + _img(src, view.big_size, f"top {j + 1}: projection", 1, j)
        + f"<figcaption>#{j + 1}: value {_fmt(float(top.values[c, j]))}<br>"
        f"image {i}, position ({r}, {col})<br>box y {y0}:{y1}, x {x0}:{x1}"
        "</figcaption></figure>"
    )


def _unit_page(view: _LayerView, c: int, title: str) -> str:
    """Unit ``c``'s page: its top-k patches and projections, with links to its neighbours."""
    top, layer, safe = view.top, view.layer, view.safe
    figs = [_unit_figure(view, c, j) for j in range(top.k) if int(top.indices[c, j]) >= 0]
    nav = [
        '<a href="../../index.html">index</a>',
        f'<a href="../../layers/{safe}.html#u{c}">layer {html.escape(layer)}</a>',
    ]
    if c > 0:
        nav.append(f'<a href="{c - 1}.html">&larr; unit {c - 1}</a>')
    if c + 1 < top.channels:
        nav.append(f'<a href="{c + 1}.html">unit {c + 1} &rarr;</a>')
    state = ' <span class="tag">dead</span>' if c in view.dead else ""
    body = (
        f"<h1>{html.escape(layer)}, unit {c}{state}</h1><nav>{''.join(nav)}</nav>"
        f'<p class="note">Top {top.k} activations from distinct images: each pair is the '
        f"image patch (receptive field; light grey = outside the image) and its "
        f"{html.escape(view.proj.rule)} projection (grey = 0, shown {view.big}x, nearest "
        f"neighbour). {view.what}.</p>"
        f'<div class="top">{"".join(figs) or "<p>no activations</p>"}</div>'
    )
    return _page(f"{layer} unit {c} - {title}", body, "../../style.css")


def _layer_summary(view: _LayerView) -> dict[str, Any]:
    """The layer's entry in ``atlas.json``."""
    top = view.top
    rf = top.receptive_field
    return {
        "layer": view.layer,
        "page": f"layers/{view.safe}.html",
        "channels": top.channels,
        "dead": view.dead,
        "rule": view.proj.rule,
        "input_size": list(top.input_size),
        "receptive_field": None
        if rf is None
        else {"size": list(rf.size), "jump": list(rf.jump), "start": list(rf.start)},
        "units": [_unit_meta(view, c) for c in range(top.channels)],
    }


def _write_layer(
    out: Path, view: _LayerView, layers: list[str], title: str
) -> tuple[list[Path], list[Path]]:
    """Write the layer's strips, its page and its units' pages; return ``(pages, images)``."""
    images = _write_strips(out, view)
    pages = [out / "layers" / f"{view.safe}.html"]
    write_text(pages[0], _layer_page(view, layers, title))
    for c in range(view.top.channels):
        path = out / "units" / view.safe / f"{c}.html"
        write_text(path, _unit_page(view, c, title))
        pages.append(path)
    return pages, images


def _index_page(summary: Mapping[str, Any], title: str) -> str:
    """The index: the facts in ``about`` and a table of the layers."""
    rows = []
    for d in summary["layers"]:
        rf = d["receptive_field"]
        rf_text = "whole image" if rf is None else f"{rf['size'][0]}x{rf['size'][1]} px"
        rows.append(
            f'<tr><td><a href="{d["page"]}">{html.escape(d["layer"])}</a></td>'
            f"<td>{d['channels']}</td><td>{len(d['dead'])}</td><td>{rf_text}</td></tr>"
        )
    facts = "".join(
        f"<li>{html.escape(str(key))}: {html.escape(str(v))}</li>"
        for key, v in summary["about"].items()
    )
    body = (
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="note">Top-{summary["k"]} activations of every unit over '
        f"{summary['images_scanned']} images, "
        "each projected back to pixels. A unit is dead when its strongest activation over the "
        "scanned images is not above 0.</p>"
        f"<ul>{facts}</ul>"
        "<table><tr><th>layer</th><th>units</th><th>dead</th><th>receptive field</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    return _page(title, body, "style.css")


def write_atlas(
    out_dir: str | os.PathLike[str],
    scan: Any,
    projections: Iterable[Any],
    *,
    title: str = "deconvviz atlas",
    about: Mapping[str, Any] | None = None,
) -> AtlasSite:
    """Write the atlas site for ``scan`` and its projections.

    Args:
        out_dir: the site's folder. The site is written into a temporary sibling folder and
            swapped in whole at the end: an old site stays intact until the new one is
            complete, and a failure (full disk, Ctrl-C) leaves it as it was and removes the
            partial one. Files in ``out_dir`` that are not part of a site are kept. The folder
            is locked (``.NAME.lock`` beside it) while the site is written: a second run into
            it is refused.
        scan: a :class:`deconvviz.scan.Scan`.
        projections: per scanned layer, in any order, a :class:`deconvviz.TopProjections` of
            all its channels (e.g. a generator, so that one layer at a time is held).
        title: the index page's title.
        about: extra facts shown on the index (model, dataset, rule...) and saved in
            ``atlas.json``.

    Returns:
        An :class:`AtlasSite`.
    """
    out = Path(out_dir)
    layers = list(scan.layers)
    if not layers:
        raise InputError("the scan has no layers; scan at least one")
    with (
        lock(lock_path_for(out), f"the atlas folder {out}"),
        atomic_dir(out, owned=SITE_ENTRIES) as stage,
    ):
        site = _write_site(stage, scan, layers, projections, title, about)
    # the site was written in a temporary sibling folder, now swapped in whole as ``out``
    return AtlasSite(
        out / site.index.relative_to(stage),
        [out / p.relative_to(stage) for p in site.pages],
        [out / p.relative_to(stage) for p in site.images],
    )


def _write_site(
    out: Path,
    scan: Any,
    layers: list[str],
    projections: Iterable[Any],
    title: str,
    about: Mapping[str, Any] | None,
) -> AtlasSite:
    pages: list[Path] = []
    images: list[Path] = []
    files = safe_names(layers)
    write_text(out / "style.css", _CSS.lstrip())
    summary: dict[str, Any] = {
        "title": title,
        "about": dict(about or {}),
        "images_scanned": scan.images,
        "k": scan.k,
        "layers": [],
    }
    done: set[str] = set()
    for proj in projections:
        _check_projections(proj, layers)
        done.add(proj.top.layer)
        view = _layer_view(proj, layers, scan.images, files)
        layer_pages, layer_images = _write_layer(out, view, layers, title)
        pages += layer_pages
        images += layer_images
        summary["layers"].append(_layer_summary(view))
    missing = [name for name in layers if name not in done]
    if missing:
        raise InputError(f"no projections given for layers {', '.join(missing)}")
    summary["layers"].sort(key=lambda d: layers.index(d["layer"]))
    index = write_text(out / "index.html", _index_page(summary, title))
    pages.insert(0, index)
    write_json(out / "atlas.json", json_safe(summary))
    return AtlasSite(index, pages, images)
