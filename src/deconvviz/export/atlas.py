"""The atlas: a static site of every unit of every scanned layer (the paper's Fig. 2, at scale).

:func:`write_atlas` takes a :class:`deconvviz.analyses.scan.Scan` and, per layer, the
:class:`deconvviz.TopProjections` of its top activations, and writes::

    out/index.html                      layers: type, shape, channels, dead units, receptive field
    out/layers/<layer>.html             a grid of the layer's units: top-1 patch and projection,
                                        ``units_per_page`` units a page (``<layer>~p2.html``, ...
                                        for the next pages, linked from every page)
    out/units/<layer>/<c>.html          one unit: its top-k patches and projections, values, links
    out/img/<layer>/<c>.png             the unit's tiles in one strip (row 0: image patches, row 1:
                                        projections; column j: its j-th activation), upscaled
    out/atlas.json                      everything above as data

Every link is relative, so the site works from ``file://`` and behind any static server; images
load lazily (``loading="lazy"``, with their size given) and a layer page holds at most
``units_per_page`` units (256: 512 ``<img>`` elements), so a site of 25,000 units opens as fast as
one of 25 (tested in a headless browser). One strip per unit (pages show its tiles with CSS
``object-position``) keeps the file count, and the time spent writing files atomically, low.
Projections may come a part of a layer at a time (each part's strips are written and dropped
before the next part comes), so memory does not grow with the layer's width or the image size.
Files are written atomically. This module writes; it computes nothing but the display scaling.
"""

from __future__ import annotations

import html
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deconvviz.analyses.reconstruct import LayerReconstructions
from deconvviz.analyses.scan import layer_parts, project_layer, scan
from deconvviz.base._io import atomic_dir, lock, lock_path_for, write_bytes, write_json, write_text
from deconvviz.base._util import dead_units, json_safe, safe_names
from deconvviz.base.checks import check_positive_int
from deconvviz.base.distributed import (
    join_process_group,
    lost_peer_message,
    rank,
    resolve_job_device,
)
from deconvviz.base.errors import InputError
from deconvviz.export.measures import Written

__all__ = ["AtlasSite", "build_atlas", "write_atlas", "tile_scale"]

MIN_TILE = 96  # smallest displayed side of a tile, in pixels
UNITS_PER_PAGE = 256  # units on one layer page (two <img> each)


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

    top: Any  # the layer's TopActivations
    rule: str
    layer: str
    index: int  # position in the scan's layers
    safe: str  # the layer's file-safe name
    big: int  # display upscaling factor
    big_size: tuple[int, int]  # one displayed tile, in pixels
    dead: list[int]
    rf_text: str
    what: str  # what a unit's value means
    files: Mapping[str, str]  # every layer's file-safe name (injective)
    per_page: int = UNITS_PER_PAGE  # units per layer page

    @property
    def pages(self) -> int:
        """How many pages the layer's grid takes."""
        return max(1, math.ceil(self.top.channels / self.per_page))

    def page_file(self, page: int) -> str:
        """The file name (in ``layers/``) of page ``page`` (0-based) of the layer's grid:
        ``<layer>.html``, then ``<layer>~p2.html``... (``~`` is never in a safe name, so no
        layer's page can take another layer's name)."""
        return f"{self.safe}.html" if page == 0 else f"{self.safe}~p{page + 1}.html"

    def unit_page_file(self, c: int) -> str:
        """The layer page that shows unit ``c``."""
        return self.page_file(c // self.per_page)


def _part_channels(proj: Any, layers: list[str], done: set[int]) -> list[int]:
    """The channels a layer's projections hold (all of them, or a part: ``proj.channels``),
    checked: a layer the scan holds, each channel once over the layer's parts."""
    top = proj.top
    layer = top.layer
    if layer not in layers:
        raise InputError(f"projections of {layer!r}, which the scan does not hold")
    part = getattr(proj, "channels", None)
    chans = list(range(top.channels)) if part is None else [int(c) for c in part]
    if proj.reconstructions.shape[0] != len(chans):
        raise InputError(
            f"projections of {layer!r} hold {proj.reconstructions.shape[0]} channels of "
            f"{top.channels}; project every channel for the atlas"
        )
    again = sorted(done.intersection(chans))
    if again or any(not 0 <= c < top.channels for c in chans):
        raise InputError(
            f"projections of {layer!r} give channel {(again or chans)[0]} twice or out of range; "
            "give each channel of a layer once"
        )
    return chans


def _layer_view(
    proj: Any,
    layers: list[str],
    images_scanned: int,
    files: Mapping[str, str],
    per_page: int = UNITS_PER_PAGE,
) -> _LayerView:
    top = proj.top
    layer = top.layer
    th, tw = proj.reconstructions.shape[-2:]
    big = tile_scale(th, tw)
    rf = top.receptive_field
    return _LayerView(
        top=top,
        rule=proj.rule,
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
        per_page=per_page,
    )


def _write_strips(out: Path, view: _LayerView, proj: Any, chans: list[int]) -> list[Path]:
    """Write one strip per unit of ``proj`` (holding ``chans``): row 0 the image patches, row 1
    the projections."""
    from deconvviz.render.images import to_display
    from deconvviz.render.reconstruct import input_display, outside_mask

    top = view.top
    rec = LayerReconstructions.from_projections(proj, chans)
    th, tw = proj.reconstructions.shape[-2:]
    recs_disp = to_display(proj.reconstructions.double())
    images = []
    for row, c in enumerate(chans):
        mask = outside_mask(rec, row)
        strip = torch.full((proj.patches.shape[2], 2 * th, top.k * tw), 1.0, dtype=torch.float64)
        for j in range(top.k):
            if int(top.indices[c, j]) < 0:
                continue
            patch = input_display(proj.patches[row, j])
            if mask is not None:
                patch = torch.where(mask[j].unsqueeze(0), torch.full_like(patch, 0.85), patch)
            strip[:, :th, j * tw : (j + 1) * tw] = patch
            strip[:, th:, j * tw : (j + 1) * tw] = recs_disp[row, j]
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


def _page_nav(view: _LayerView, page: int) -> str:
    """Links to the layer's other grid pages (every page listed by its unit range, the current
    one unlinked), with previous/next; empty for a one-page layer."""
    if view.pages == 1:
        return ""
    n = view.top.channels
    links = []
    if page > 0:
        links.append(f'<a href="{view.page_file(page - 1)}" rel="prev">&larr; previous</a>')
    for p in range(view.pages):
        lo, hi = p * view.per_page, min(n, (p + 1) * view.per_page) - 1
        text = f"{lo}&ndash;{hi}"
        links.append(f"<b>{text}</b>" if p == page else f'<a href="{view.page_file(p)}">{text}</a>')
    if page + 1 < view.pages:
        links.append(f'<a href="{view.page_file(page + 1)}" rel="next">next &rarr;</a>')
    return f'<nav class="pages">units {" ".join(links)}</nav>'


def _layer_page(view: _LayerView, layers: list[str], title: str, page: int = 0) -> str:
    """Page ``page`` of the layer's grid of units, with links to its other pages and to the
    layers either side."""
    li, layer = view.index, view.layer
    first = page * view.per_page
    shown = range(first, min(view.top.channels, first + view.per_page))
    cells = [_layer_cell(view, c) for c in shown]
    nav = ['<a href="../index.html">index</a>']
    if li > 0:
        nav.append(
            f'<a href="{view.files[layers[li - 1]]}.html">&larr; {html.escape(layers[li - 1])}</a>'
        )
    if li + 1 < len(layers):
        nav.append(
            f'<a href="{view.files[layers[li + 1]]}.html">{html.escape(layers[li + 1])} &rarr;</a>'
        )
    pages = _page_nav(view, page)
    where = "" if view.pages == 1 else f" (units {shown.start}-{shown.stop - 1} on this page)"
    body = (
        f"<h1>{html.escape(layer)}</h1><nav>{''.join(nav)}</nav>"
        f'<p class="note">{view.top.channels} units{where}, {len(view.dead)} dead (never above 0 '
        f"over the scanned images), receptive field {view.rf_text}. Each cell: the image patch "
        f"of the unit's strongest activation (left) and its {html.escape(view.rule)} "
        f"projection (right, grey = 0). {view.what}.</p>"
        f'{pages}<div class="grid">{"".join(cells)}</div>{pages}'
    )
    suffix = "" if view.pages == 1 else f" ({page + 1}/{view.pages})"
    return _page(f"{layer}{suffix} - {title}", body, "../style.css")


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
    top, layer = view.top, view.layer
    figs = [_unit_figure(view, c, j) for j in range(top.k) if int(top.indices[c, j]) >= 0]
    nav = [
        '<a href="../../index.html">index</a>',
        f'<a href="../../layers/{view.unit_page_file(c)}#u{c}">layer {html.escape(layer)}</a>',
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
        f"{html.escape(view.rule)} projection (grey = 0, shown {view.big}x, nearest "
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
        "pages": [f"layers/{view.page_file(p)}" for p in range(view.pages)],
        "channels": top.channels,
        "dead": view.dead,
        "rule": view.rule,
        "input_size": list(top.input_size),
        "receptive_field": None
        if rf is None
        else {"size": list(rf.size), "jump": list(rf.jump), "start": list(rf.start)},
        "units": [_unit_meta(view, c) for c in range(top.channels)],
    }


def _write_pages(out: Path, view: _LayerView, layers: list[str], title: str) -> list[Path]:
    """Write the layer's grid pages and its units' pages (its strips are written already)."""
    pages = []
    for page in range(view.pages):
        pages.append(
            write_text(
                out / "layers" / view.page_file(page), _layer_page(view, layers, title, page)
            )
        )
    for c in range(view.top.channels):
        path = out / "units" / view.safe / f"{c}.html"
        write_text(path, _unit_page(view, c, title))
        pages.append(path)
    return pages


def _index_page(summary: Mapping[str, Any], title: str) -> str:
    """The index: the facts in ``about`` and a table of the layers."""
    rows = []
    for d in summary["layers"]:
        rf = d["receptive_field"]
        rf_text = "whole image" if rf is None else f"{rf['size'][0]}x{rf['size'][1]} px"
        rows.append(
            f'<tr><td><a href="{d["page"]}">{html.escape(d["layer"])}</a></td>'
            f"<td>{d['channels']}</td><td>{len(d['dead'])}</td><td>{rf_text}</td>"
            f"<td>{len(d['pages'])}</td></tr>"
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
        "<table><tr><th>layer</th><th>units</th><th>dead</th><th>receptive field</th>"
        "<th>pages</th></tr>" + "".join(rows) + "</table>"
    )
    return _page(title, body, "style.css")


def write_atlas(
    out_dir: str | os.PathLike[str],
    scan: Any,
    projections: Iterable[Any],
    *,
    title: str = "deconvviz atlas",
    about: Mapping[str, Any] | None = None,
    units_per_page: int = UNITS_PER_PAGE,
) -> AtlasSite:
    """Write the atlas site for ``scan`` and its projections.

    Args:
        out_dir: the site's folder. The site is written into a temporary sibling folder and
            swapped in whole at the end: an old site stays intact until the new one is
            complete, and a failure (full disk, Ctrl-C) leaves it as it was and removes the
            partial one. Files in ``out_dir`` that are not part of a site are kept. The folder
            is locked (``.NAME.lock`` beside it) while the site is written: a second run into
            it is refused.
        scan: a :class:`deconvviz.analyses.scan.Scan`.
        projections: per scanned layer, in any order, a :class:`deconvviz.TopProjections` of
            all its channels, or several that hold parts of them (``channels`` set, as
            ``project_layer(..., channels=part)`` returns them; each channel once). Give a
            generator: each is written (its strips) as it comes and then dropped, so only one
            part's pictures are held at a time.
        title: the index page's title.
        about: extra facts shown on the index (model, dataset, rule...) and saved in
            ``atlas.json``.
        units_per_page: units on one page of a layer's grid (its other units on further pages,
            linked from each), so that a page of a 2,048-unit layer stays light.

    Returns:
        An :class:`AtlasSite`.
    """
    check_positive_int("units_per_page", units_per_page)
    out = Path(out_dir)
    layers = list(scan.layers)
    if not layers:
        raise InputError("the scan has no layers; scan at least one")
    with (
        lock(lock_path_for(out), f"the atlas folder {out}"),
        atomic_dir(out, owned=SITE_ENTRIES) as stage,
    ):
        site = _write_site(stage, scan, layers, projections, title, about, units_per_page)
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
    units_per_page: int,
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
    open_layers: dict[str, tuple[_LayerView, set[int]]] = {}  # layers with parts still to come
    for proj in projections:
        layer = proj.top.layer
        if layer in done:
            raise InputError(f"projections of {layer!r} given twice; give each channel once")
        view, seen = open_layers.get(layer) or (
            _layer_view(proj, layers, scan.images, files, units_per_page),
            set(),
        )
        chans = _part_channels(proj, layers, seen)
        images += _write_strips(out, view, proj, chans)
        del proj  # the part's pictures are written: let them go before the next part comes
        seen.update(chans)
        if len(seen) < view.top.channels:
            open_layers[layer] = (view, seen)
            continue
        open_layers.pop(layer, None)
        done.add(layer)
        pages += _write_pages(out, view, layers, title)
        summary["layers"].append(_layer_summary(view))
    missing = [name for name in layers if name not in done]
    if missing:
        short = [n for n in missing if n in open_layers]
        if short:
            view, seen = open_layers[short[0]]
            raise InputError(
                f"projections of {short[0]!r} hold {len(seen)} of its {view.top.channels} "
                "channels; project every channel for the atlas"
            )
        raise InputError(f"no projections given for layers {', '.join(missing)}")
    summary["layers"].sort(key=lambda d: layers.index(d["layer"]))
    index = write_text(out / "index.html", _index_page(summary, title))
    pages.insert(0, index)
    write_json(out / "atlas.json", json_safe(summary))
    return AtlasSite(index, pages, images)


def build_atlas(
    out_dir: str | os.PathLike[str],
    model: torch.nn.Module,
    data: Any,
    layers: Sequence[str] | str = "conv",
    k: int = 9,
    rule: str = "deconvnet",
    *,
    max_images: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "fp32",
    resume: bool = False,
    save_every: int = 20,
    timeout: int = 600,
    about: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> Any:
    """Scan ``data`` once for the top-``k`` activations of every unit of ``layers``, project
    them all and write the site into ``out_dir`` (what ``deconvviz atlas`` does).

    Under torchrun (``WORLD_SIZE`` > 1) this process joins the process group (gloo on CPU,
    NCCL on GPUs; a peer that does not answer within ``timeout`` seconds is an error naming
    it), scans and projects its share, and rank 0 writes the site while holding the folder's
    lock from the start; the group it created is left at the end. The scan state
    (``out_dir/scan-state.pt``) makes an interrupted run resumable (``resume=True``).

    Returns:
        A :class:`deconvviz.export.measures.Written` (the index page and the line to print)
        on rank 0; None on the other ranks.
    """
    import torch.distributed as dist

    name, created = join_process_group(device, timeout)
    try:
        try:
            return _build_atlas(
                Path(out_dir), model, data, layers, k, rule, name, about, progress,
                dict(max_images=max_images, batch_size=batch_size, precision=precision,
                     resume=resume, save_every=save_every),
            )  # fmt: skip
        except Exception as exc:
            lost = lost_peer_message(exc)
            if lost is None:
                raise
            from deconvviz.base.errors import DeconvvizError

            raise DeconvvizError(lost) from exc
    finally:
        if created:
            dist.destroy_process_group()


def _build_atlas(
    out: Path,
    model: torch.nn.Module,
    data: Any,
    layers: Sequence[str] | str,
    k: int,
    rule: str,
    device: str,
    about: Mapping[str, Any] | None,
    progress: bool,
    scan_options: dict[str, Any],
) -> Any:
    import contextlib

    dev = resolve_job_device(device)
    with contextlib.ExitStack() as stack:
        if rank() == 0:  # the folder is this run's until the site is written (others refused)
            stack.enter_context(lock(lock_path_for(out), f"the atlas folder {out}"))
        model = model.to(dev)
        result = scan(
            model,
            data,
            list(layers) if not isinstance(layers, str) else layers,
            k,
            progress=progress,
            state=out / "scan-state.pt",
            **scan_options,
        )
        projections = _projections(
            model, data, result, rule, progress, scan_options.get("precision", "fp32")
        )
        if rank() != 0:
            for _ in projections:  # take part in every layer's projections; rank 0 writes
                pass
            return None
        site = write_atlas(out, result, projections, about=about)
    units = sum(result[layer].channels for layer in result.layers)
    line = (
        f"wrote the atlas of {len(result.layers)} layers, {units} units (top-{k} of "
        f"{result.images} images) to {site.index}"
    )
    return Written((site.index,), line)


def _projections(
    model: Any, data: Any, result: Any, rule: str, progress: bool, precision: str = "fp32"
) -> Any:
    """Each scanned layer's projections, lazily, in parts that fit the memory budget (so the
    writer holds one part's pictures at a time; every rank takes part in each)."""
    for layer in result.layers:
        top = result[layer]
        for part in layer_parts(top):
            proj = project_layer(
                model, data, top, rule, progress=progress, precision=precision, channels=part
            )
            if proj is not None:
                yield proj
