"""The sections of a report: each computes its numbers through the analyses layer, draws its
figures through ``render/`` and adds them to a :class:`~deconvviz.export.report_page.Section`.

:data:`BUILDERS` maps a section key of :data:`deconvviz.export.report.SECTIONS` to its builder.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from deconvviz.analyses.compare import compare_methods
from deconvviz.analyses.dependence import image_dependence, pool_switches
from deconvviz.analyses.evidence import class_selectivity, filter_structure
from deconvviz.analyses.filters import conv_layers
from deconvviz.analyses.occlusion import occlusion
from deconvviz.analyses.reconstruct import reconstruct_dataset
from deconvviz.analyses.stats import activation_stats, hidden_state_stats, report_lines
from deconvviz.base._io import (
    save_figure,
    save_image,
    write_json,
)
from deconvviz.base._util import json_safe, safe_name
from deconvviz.base.checks import (
    conv_layer_names,
    model_device_dtype,
    split_call,
)
from deconvviz.base.errors import InputError
from deconvviz.export.analyses import report_figures
from deconvviz.export.report_page import (
    FIG_DIR,
    FIG_DPI,
    ReportFigure,
    Section,
    fmt,
    html_table,
    relative_to,
    url,
)

__all__ = ["BUILDERS", "Context", "first_batch", "first_image"]


def first_image(dataset: Sequence[Any]) -> Tensor:
    item = dataset[0]
    if isinstance(item, (tuple, list)):
        item = item[0]
    if not isinstance(item, Tensor):
        raise InputError(f"dataset items must be images or (image, label) pairs, got {type(item)}")
    return item


def first_batch(dataset: Sequence[Any], n: int) -> tuple[Tensor, Tensor | None]:
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    if isinstance(items[0], (tuple, list)):
        x = torch.stack([it[0] for it in items])
        y = torch.tensor([int(it[1]) for it in items])
        return x, y
    return torch.stack(items), None


@dataclass
class Context:
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
        return self.out.joinpath(FIG_DIR, *parts)

    def rel(self, path: str | os.PathLike[str]) -> str:
        """``path`` (as written: absolute, or relative to the working directory) relative to
        the report folder, in POSIX spelling: the form every link of the report takes."""
        return relative_to(path, self.out)

    def add_figure(self, section: Section, title: str, fig: Any, *parts: str) -> None:
        from deconvviz.render.images import min_text_px

        path = self.path(*parts)
        text_px = min_text_px(fig, FIG_DPI)
        save_figure(path, fig, dpi=FIG_DPI)
        section.figures.append(ReportFigure(section.key, title, self.rel(path), text_px))

    def add_image(self, section: Section, title: str, image: Any, *parts: str) -> None:
        path = self.path(*parts)
        save_image(path, image)
        section.figures.append(ReportFigure(section.key, title, self.rel(path)))


def _training(ctx: Context, section: Section) -> None:
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
        section.html.append(html_table(["metric", "value"], [[k, fmt(v)] for k, v in rows]))


def _filters(ctx: Context, section: Section) -> None:
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


def _hidden_stats(ctx: Context, section: Section, loader: DataLoader[Any]) -> None:
    """The statistics section of a recurrent model: its hidden state per time step."""
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


def _stats(ctx: Context, section: Section) -> None:
    loader: DataLoader[Any] = DataLoader(ctx.scan, batch_size=256, shuffle=False)  # type: ignore[arg-type]
    if callable(getattr(ctx.model, "hidden_states", None)) and not any(
        isinstance(m, nn.Conv2d) for m in ctx.model.modules()
    ):
        _hidden_stats(ctx, section, loader)
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
                fmt(s.mean),
                fmt(s.var),
                fmt(s.min),
                fmt(s.max),
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
        html_table(
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


def _reconstructions(ctx: Context, section: Section) -> None:
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
        html_table(
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


def _dependence(ctx: Context, section: Section, results: Mapping[str, Any]) -> None:
    """How much each layer's pictures depend on the image: a table, a plain sentence for each
    layer where they hardly do, and guided backprop's pictures of those layers beside."""
    device, dtype = model_device_dtype(ctx.model)
    x = first_image(ctx.dataset)[None].to(device, dtype)
    deps = [
        image_dependence(rec, pool_switches(ctx.model, layer, x)) for layer, rec in results.items()
    ]
    rows = [
        [
            d.layer,
            "-" if d.switches is None else d.switches,
            fmt(d.correlation),
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
        html_table(
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


def _write_guided(ctx: Context, layer: str, rec: Any) -> list[Path]:
    from deconvviz.export.reconstructions import write_dataset_reconstructions

    return write_dataset_reconstructions({f"{layer}_guided": rec}, ctx.path("reconstructions"))


def _unit_grid(ctx: Context, layer: str, rec: Any, caption: str, pngs: Sequence[Path]) -> str:
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
        src = e(url(ctx.rel(save_image(folder / f"ch{ch}.png", block))), quote=True)
        cells.append(
            f'<figure class="unit"><a href="{src}" title="full size"><img src="{src}" '
            f'alt="{e(layer, quote=True)} {e(text, quote=True)}" width="{block.width}" '
            f'height="{block.height}" loading="lazy"></a><figcaption>{e(text)}</figcaption>'
            "</figure>"
        )
    whole = ", ".join(f'<a href="{e(url(ctx.rel(p)), quote=True)}">{e(p.name)}</a>' for p in pngs)
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


def _evidence(ctx: Context, section: Section) -> None:
    # every unit of every layer (the reconstructions may show only some): one scan
    layers = list(ctx.reconstructions) or list(ctx.layers or conv_layer_names(ctx.model))
    sel = class_selectivity(ctx.model, ctx.scan, layers, k=ctx.k, progress=ctx.progress)
    chance = 1.0 / sel.classes if sel.classes else math.nan
    rows = [
        [
            name,
            f"{int(sel.per_unit[name].numel()) - len(sel.dead[name])} / "
            f"{int(sel.per_unit[name].numel())}",
            fmt(sel.selectivity[name]),
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
    section.html.append(
        html_table(["layer", "live units", f"class selectivity of top-{sel.k}"], rows)
    )
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


def _occlusion(ctx: Context, section: Section) -> None:
    from deconvviz.render.occlusion import occlusion_figure

    x, y = first_batch(ctx.dataset, ctx.images)
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


def _compare(ctx: Context, section: Section) -> None:
    from deconvviz.render.reconstruct import comparison_figure

    x, y = first_batch(ctx.dataset, ctx.images)
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


def _analyses(ctx: Context, section: Section) -> None:
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


BUILDERS: dict[str, Callable[[Context, Section], None]] = {
    "training": _training,
    "filters": _filters,
    "stats": _stats,
    "reconstructions": _reconstructions,
    "evidence": _evidence,
    "occlusion": _occlusion,
    "compare": _compare,
    "analyses": _analyses,
}
"""Each section key's builder."""
