"""Files of per-layer reconstructions: the figures and JSON of
:mod:`deconvviz.analyses.reconstruct`.

The export layer: :func:`write_dataset_reconstructions` and :func:`write_image_reconstructions`
draw :func:`deconvviz.analyses.reconstruct.reconstruct_dataset`'s and
:func:`deconvviz.analyses.reconstruct.reconstruct_images`'s results with
:mod:`deconvviz.render.reconstruct` and write them atomically with :mod:`deconvviz.base._io`.

Example::

    from deconvviz.export.reconstructions import write_dataset_reconstructions
    from deconvviz.analyses.reconstruct import reconstruct_dataset

    results = reconstruct_dataset(model, test_set, layers=["conv1", "conv2"], k=9)
    write_dataset_reconstructions(results, "out/reconstruct")
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from deconvviz.analyses.reconstruct import (
    ImageProjections,
    LayerReconstructions,
    expected_input,
    reconstruct_dataset,
    reconstruct_images,
)
from deconvviz.base._io import save_figure, save_torch, write_json
from deconvviz.base._util import json_safe, safe_name
from deconvviz.base.errors import InputError
from deconvviz.base.images import load_images
from deconvviz.export.measures import Written, comparison_png
from deconvviz.render import reconstruct as render

__all__ = [
    "write_dataset_projections",
    "write_dataset_reconstructions",
    "write_image_projections",
    "write_image_reconstructions",
]


def _layer_summary(
    layer: str, rec: LayerReconstructions, written: Sequence[Path]
) -> dict[str, Any]:
    """``<layer>.json``'s content: the real (not padding) top activations and their context."""
    rf = rec.receptive_field
    keep = rec.valid  # padding (fewer images than k) is left out
    summary = {
        "layer": layer,
        "rule": rec.rule,
        "k": rec.found,
        "k_asked": rec.k,
        "input_size": list(rec.input_size),
        "receptive_field": None
        if rf is None
        else {
            "size": list(rf.size),
            "jump": list(rf.jump),
            "start": list(rf.start),
        },
        "figures": [p.name for p in written],
        "images": rec.images,
        "dead": rec.dead,
        "channels": rec.channels.tolist(),
        "values": [json_safe(v[m]) for v, m in zip(rec.values, keep, strict=True)],
        "indices": [i[m].tolist() for i, m in zip(rec.indices, keep, strict=True)],
        "positions": [p[m].tolist() for p, m in zip(rec.positions, keep, strict=True)],
        "boxes": [b[m].tolist() for b, m in zip(rec.boxes, keep, strict=True)],
    }
    return summary


def write_dataset_reconstructions(
    results: Mapping[str, LayerReconstructions],
    out_dir: str | os.PathLike[str],
    *,
    channels_per_page: int = 64,
    ncols: int = 8,
    dpi: int = 100,
    save_tensors: bool = False,
) -> list[Path]:
    """Render and write :func:`reconstruct_dataset`'s results, atomically.

    Per layer: ``<layer>.png`` (the Fig. 2 grid; ``<layer>_p2.png``... when it has more than
    ``channels_per_page`` feature maps) and ``<layer>.json`` (values, dataset indices,
    positions and receptive-field boxes of every top activation, the dead feature maps and the
    number of images scanned; padding entries, when the dataset had fewer than ``k`` images, are
    left out and ``k`` counts the real ones); with ``save_tensors``, also ``<layer>.pt`` holding
    the reconstructions and patches.

    Returns:
        The written PNG paths, in order.
    """
    if channels_per_page < 1:
        raise InputError(f"channels_per_page must be positive, got {channels_per_page}")
    out = Path(out_dir)
    pngs: list[Path] = []
    for layer, rec in results.items():
        stem = safe_name(layer)
        n = rec.reconstructions.shape[0]
        pages = max(1, math.ceil(n / channels_per_page))
        written = []
        for page in range(pages):
            sel = list(range(page * channels_per_page, min(n, (page + 1) * channels_per_page)))
            fig = render.top_projections_figure(
                rec, sel, ncols=ncols, page=(page + 1, pages) if pages > 1 else None
            )
            path = out / (f"{stem}.png" if page == 0 else f"{stem}_p{page + 1}.png")
            save_figure(path, fig, dpi=dpi)
            written.append(path)
        pngs += written
        summary = _layer_summary(layer, rec, written)
        write_json(out / f"{stem}.json", summary)
        if save_tensors:
            save_torch(
                out / f"{stem}.pt",
                {
                    "channels": rec.channels,
                    "reconstructions": rec.reconstructions,
                    "patches": rec.patches,
                    "values": rec.values,
                    "indices": rec.indices,
                    "positions": rec.positions,
                    "boxes": rec.boxes,
                },
            )
    return pngs


def _unique(names: list[str]) -> list[str]:
    """``names`` made distinct as file names: a repeated ``cat`` becomes ``cat_2``, ``cat_3``..."""
    seen: set[str] = set()
    out = []
    for name in names:
        base = safe_name(name)
        cand, n = base, 1
        while cand in seen:
            n += 1
            cand = f"{base}_{n}"
        seen.add(cand)
        out.append(cand)
    return out


def write_image_reconstructions(
    results: Mapping[str, ImageProjections],
    out_dir: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    *,
    max_channels: int | None = 64,
    dpi: int = 100,
) -> list[Path]:
    """Render and write :func:`reconstruct_images`'s results, atomically.

    Per image and layer: ``<image>_<layer>.png`` (the input beside the projections of its
    ``max_channels`` strongest feature maps, labelled with channel and activation value), and
    one ``projections.json`` with every value and position.

    Args:
        results: what :func:`reconstruct_images` returned.
        out_dir: the folder.
        names: a name per image (e.g. the file stems; repeated names get ``_2``, ``_3``...);
            default ``image0``, ``image1``...
        max_channels: show at most this many feature maps per figure, strongest first
            (``None``: all).
        dpi: resolution of the PNGs.

    Returns:
        The written PNG paths, in order.
    """
    out = Path(out_dir)
    pngs: list[Path] = []
    summary: dict[str, Any] = {}
    for layer, res in results.items():
        n = res.images.shape[0]
        labels = list(names) if names is not None else [f"image{i}" for i in range(n)]
        if len(labels) != n:
            raise InputError(f"got {len(labels)} names for {n} images; give one per image")
        labels = _unique(labels)
        per_image = []
        for i in range(n):
            fig = render.image_projections_figure(
                res, i, max_channels=max_channels, title=labels[i]
            )
            path = out / f"{safe_name(labels[i])}_{safe_name(layer)}.png"
            save_figure(path, fig, dpi=dpi)
            pngs.append(path)
            per_image.append(
                {
                    "image": labels[i],
                    "figure": path.name,
                    "values": res.values[i].tolist(),
                    "positions": res.positions[i].tolist(),
                }
            )
        summary[layer] = {"rule": res.rule, "channels": res.channels.tolist(), "images": per_image}
    write_json(out / "projections.json", summary)
    return pngs


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def write_image_projections(
    model: nn.Module,
    config: Any,
    images: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    layers: Sequence[str] | None = None,
    channels: Sequence[int] | None = None,
    rule: str = "deconvnet",
    compare: bool = False,
    progress: bool = False,
) -> Written:
    """``reconstruct --image``: read the image files as the model expects them (channels and
    size from the model or its run ``config``), project each one's strongest activation of every
    feature map of ``layers`` (:func:`reconstruct_images`), write the figures
    (:func:`write_image_reconstructions`) and, with ``compare``, ``compare.png``.

    Returns:
        The written PNGs and the line the command prints.
    """
    paths = [Path(p) for p in images]
    want_c, want_size = expected_input(model, config)
    x = load_images(paths, want_c, want_size)
    results = reconstruct_images(model, x, layers, channels, rule, progress=progress)
    pngs = write_image_reconstructions(results, out_dir, [p.stem for p in paths])
    if compare:
        pngs.append(comparison_png(model, config, x, Path(out_dir), progress))
    size = "x".join(str(s) for s in x.shape[-2:])
    line = (
        f"wrote {_count(len(pngs), 'figure')} to {out_dir} ({_count(len(paths), 'image')} as "
        f"{x.shape[1]}x{size}, layers {', '.join(results)}, rule {rule})"
    )
    return Written(tuple(pngs), line)


def write_dataset_projections(
    model: nn.Module,
    data: Any,
    out_dir: str | os.PathLike[str],
    *,
    layers: Sequence[str] | None = None,
    channels: Sequence[int] | None = None,
    rule: str = "deconvnet",
    k: int = 9,
    max_images: int | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> Written:
    """``reconstruct`` over a dataset (the paper's Fig. 2): every chosen layer's top-``k``
    activations per feature map from one pass over ``data`` (:func:`reconstruct_dataset`),
    projected, and their figures and JSON (:func:`write_dataset_reconstructions`).

    Returns:
        The written PNGs and the line the command prints.
    """
    found = reconstruct_dataset(
        model,
        data,
        layers,
        k,
        rule,
        channels=channels,
        progress=progress,
        num_workers=num_workers,
        max_images=max_images,
    )
    pngs = write_dataset_reconstructions(found, out_dir)
    n = next(iter(found.values())).images if found else len(data)
    scanned = _count(int(n or 0), "image")
    line = (
        f"wrote {_count(len(pngs), 'figure')} to {out_dir} (top-{k} of {scanned}, "
        f"layers {', '.join(found)}, rule {rule})"
    )
    return Written(tuple(pngs), line)
