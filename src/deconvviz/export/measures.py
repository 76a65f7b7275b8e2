"""The writers of the measurement commands: ``occlude``, ``filters``, ``stats``, ``compare``,
``inspect --json`` and one analysis's figure + numbers.

Each function takes plain values (a model, paths, numbers), computes through the analyses
layer, draws through ``render/``, writes atomically and returns a :class:`Written`: the paths it
wrote and the one line a command prints. The CLI is then parse -> one call here -> one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deconvviz.analyses.compare import compare_methods
from deconvviz.analyses.dependence import no_switch_note
from deconvviz.analyses.filters import filter_summary
from deconvviz.analyses.occlusion import input_size_within, occlusion
from deconvviz.analyses.reconstruct import expected_input
from deconvviz.analyses.stats import activation_stats, hidden_state_stats, report_lines
from deconvviz.base._io import save_figure, save_image, save_torch, write_json, write_text
from deconvviz.base._util import json_safe, safe_name
from deconvviz.base.checks import class_label, conv_layer_names, model_device_dtype
from deconvviz.base.errors import InputError
from deconvviz.base.images import load_images
from deconvviz.engine.summary import layer_table
from deconvviz.sources.data import CIFAR10_CLASSES, MNIST_CLASSES

__all__ = [
    "Written",
    "class_names",
    "occlusion_input",
    "parse_fill",
    "write_comparison",
    "write_figure_result",
    "write_filters",
    "write_inspection",
    "write_layer_table",
    "write_occlusion",
    "write_stats",
]


@dataclass(frozen=True)
class Written:
    """What a writer wrote: its ``paths`` (the main one first) and the one ``line`` to print."""

    paths: tuple[Path, ...]
    line: str

    def __str__(self) -> str:
        return self.line


def _safe(name: str) -> str:
    return safe_name(name, "model")


def write_figure_result(
    out: Path, stem: str, fig: Any, info: dict[str, Any], table: str | None = None
) -> Path:
    """Write ``<stem>.png`` (the figure), ``<stem>.json`` (``info``) and, given a markdown
    ``table``, ``<stem>.md`` into ``out``; returns the path of the png."""
    png = save_figure(Path(out) / f"{stem}.png", fig, dpi=120)
    write_json(Path(out) / f"{stem}.json", json_safe(info))
    if table is not None:
        write_text(Path(out) / f"{stem}.md", table)
    return png


def class_names(model: nn.Module, run_config: Any = None) -> list[str] | None:
    """The class names where they are known: from the run's dataset, or the example model."""
    dataset = run_config.get("dataset") if isinstance(run_config, dict) else None
    if dataset in ("cifar10", "cifar10-course", "cifar10-sample"):
        return list(CIFAR10_CLASSES)
    if dataset == "mnist":
        return list(MNIST_CLASSES)
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, dict):
        return None
    if cfg.get("model") == "zfnet-cifar" and cfg.get("num_classes", 10) == 10:
        return list(CIFAR10_CLASSES)
    if cfg.get("model") == "rnn":
        return list(MNIST_CLASSES)
    if cfg.get("model") == "lenet5" and cfg.get("num_classes", 10) == 10:
        return list(CIFAR10_CLASSES)
    return None


def _input_shape(model: nn.Module) -> tuple[int, int | None]:
    """(channels, square side or None) that ``model`` takes, from its own ``config`` (the
    example models: LeNet5, the ZF net, the RNN) or its first conv layer."""
    cfg = getattr(model, "config", None)
    if isinstance(cfg, dict) and cfg.get("model") == "rnn":
        return 1, int(cfg.get("input_size", 28))
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 3
    if isinstance(cfg, dict):
        size = cfg.get("image_size")
        return int(cfg.get("in_channels", channels)), int(size) if isinstance(size, int) else None
    return channels, None


def occlusion_input(
    model: nn.Module, config: Any, image: Path, device: Any, image_size: int | None = None
) -> Any:
    """The image as the model takes it, by the one image loader: resized to ``image_size``,
    else to the model's own input size, else (a model of any input size) kept as it is unless
    its forward pass would not fit the engine's memory budget, in which case it is scaled down
    to the largest size that does."""
    from PIL import Image

    channels, side = _input_shape(model)
    if not isinstance(getattr(model, "config", None), dict):
        want_channels, want_side = expected_input(model, config)
        channels = want_channels or channels
        side = want_side or side
    if image_size is not None:
        side = int(image_size)
    size: int | tuple[int, int] | None = side
    if size is None:
        try:
            with Image.open(image) as im:  # the header only: the size, without decoding
                w, h = im.size
        except (OSError, ValueError):
            w = h = 0  # unreadable: the loader says so in one line
        if h and w:
            fit = input_size_within(model, (h, w), channels or 3)
            size = None if fit == (h, w) else fit
    return load_images([image], channels, size).to(device)


def parse_fill(fill: str) -> str | float:
    """``--fill``: 'grey'/'gray', 'mean' or a number."""
    if fill in ("grey", "gray", "mean"):
        return fill
    try:
        return float(fill)
    except ValueError:
        raise InputError(f"--fill must be 'grey', 'mean' or a number, got {fill!r}") from None


def write_occlusion(
    model: nn.Module,
    config: Any,
    image: Path,
    out: Path,
    *,
    device: Any = "cpu",
    image_size: int | None = None,
    size: int = 8,
    stride: int = 2,
    layer: str | None = None,
    target: int | None = None,
    fill: str = "grey",
    progress: bool = False,
) -> Written:
    """Occlusion sensitivity of one image file (Zeiler & Fergus, Fig. 7): writes
    ``occlusion.png`` (the maps over the image) and ``occlusion.pt`` (the result tensors)."""
    from deconvviz.render.occlusion import occlusion_figure

    x = occlusion_input(model, config, image, device, image_size)
    fill_value = parse_fill(fill)
    res = occlusion(
        model,
        x,
        target=target,
        size=size,
        stride=stride,
        fill=fill_value,
        layer=layer,
        progress=progress,
    )
    names = class_names(model, config)
    fig = occlusion_figure(res, x.cpu(), 0, class_names=names)
    png = save_figure(Path(out) / "occlusion.png", fig, dpi=120)
    pt = save_torch(Path(out) / "occlusion.pt", dataclasses.asdict(res))
    t = int(res.target[0])
    low = int(res.prob[0].argmin())
    y0, x0, y1, x1 = res.boxes.view(-1, 4)[low].tolist()
    label = class_label(t, names)
    line = (
        f"wrote {png}: p({label}) = {float(res.base_prob[0]):.3f} unoccluded, lowest "
        f"{float(res.prob[0].min()):.3f} with the occluder on rows {y0}-{y1 - 1}, "
        f"cols {x0}-{x1 - 1}"
    )
    return Written((png, pt), line)


def write_filters(
    model: nn.Module,
    out: Path,
    layers: Sequence[str] | None = None,
    *,
    radius: float = 0.1,
    scale: int = 4,
    tol: float = 1e-6,
) -> Written:
    """Filter grids, RMS charts and ``filters.json`` (per-filter RMS, zero filters) of the conv
    layers: ``filters_<layer>.png``, ``rms_<layer>.png``."""
    from deconvviz.render.filters import filter_grid, rms_figure

    out = Path(out)
    summary = filter_summary(model, list(layers) if layers else None, radius, tol)
    modules = dict(model.named_modules())
    paths = []
    for name in summary:
        conv = modules[name]
        paths.append(
            save_image(
                out / f"filters_{_safe(name)}.png", filter_grid(conv, scale=scale, title=name)
            )
        )
        paths.append(
            save_figure(
                out / f"rms_{_safe(name)}.png", rms_figure(conv, radius, title=name), dpi=110
            )
        )
    paths.append(
        write_json(out / "filters.json", {"radius": radius, "tol": tol, "layers": summary})
    )
    zero = ", ".join(f"{k} {len(v['dead'])}/{len(v['rms'])}" for k, v in summary.items())
    line = (
        f"wrote filter grids of {', '.join(summary)} to {out} (zero filters, RMS <= {tol:g}: "
        f"{zero})"
    )
    return Written(tuple(paths), line)


def write_stats(
    model: nn.Module,
    data: Any,
    out: Path,
    *,
    source: str,
    split: str,
    layers: Sequence[str] | None = None,
    batch_size: int = 256,
    max_images: int | None = None,
    workers: int = 0,
    progress: bool = False,
) -> Written:
    """Activation statistics of ``model`` over ``data`` (hidden states for a recurrent model
    when no layers are named): ``stats.md``, ``stats.json`` and the histograms. The line to
    print is the report's lines (``h_conv1_stats: mean = ...``) and what was written."""
    from torch.utils.data import DataLoader, Subset

    from deconvviz.render.stats import histogram_figure, stats_table

    out = Path(out)
    name = data.name
    if max_images is not None and len(data) > max_images:
        data = Subset(data, range(max_images))
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers)
    title = f"# Statistics of {source} on {name} ({split}, {len(data)} images)\n\n"
    if callable(getattr(model, "hidden_states", None)) and not layers:
        return _hidden_state_stats(model, loader, title, out, progress)
    result = activation_stats(model, loader, layers=list(layers or ()) or None, progress=progress)
    lines = report_lines(result)
    body = "```\n" + "\n".join(lines) + "\n```\n\n" + stats_table(result)
    paths = [write_text(out / "stats.md", title + body)]
    paths.append(
        write_json(
            out / "stats.json",
            {"report_lines": lines, "layers": {k: s.to_dict() for k, s in result.items()}},
        )
    )
    for layer, s in result.items():
        paths.append(save_figure(out / f"hist_{_safe(layer)}.png", histogram_figure(s), dpi=110))
    lines.append(f"wrote stats.md, stats.json and {len(result)} histograms to {out}")
    return Written(tuple(paths), "\n".join(lines))


def _hidden_state_stats(
    model: nn.Module, loader: Any, title: str, out: Path, progress: bool
) -> Written:
    """Hidden-state statistics of a recurrent model into ``out``."""
    from deconvviz.render.stats import hidden_state_figure, hidden_state_table

    hs = hidden_state_stats(model, loader, progress=progress)
    paths = (
        write_text(out / "stats.md", title + hidden_state_table(hs)),
        write_json(out / "stats.json", {"hidden_states": hs.to_dict()}),
        save_figure(out / "hidden_states.png", hidden_state_figure(hs), dpi=110),
    )
    line = (
        f"wrote hidden-state statistics to {out}: mean = {hs.overall_mean:.4g}; var = "
        f"{hs.overall_var:.4g}; saturated = {100 * float(hs.saturated_fraction.mean()):.2f}%"
    )
    return Written(paths, line)


def _dataset_class_names(config: dict[str, Any] | None) -> list[str] | None:
    name = config.get("dataset") if config else None
    if name in ("cifar10", "cifar10-course", "cifar10-sample"):
        from deconvviz.sources.data import CIFAR10_CLASSES

        return list(CIFAR10_CLASSES)
    if name == "mnist":
        return [str(d) for d in range(10)]
    return None


def comparison_png(model: nn.Module, config: Any, x: Any, out: Path, progress: bool) -> Path:
    """``compare.png``: the deconvnet beside captum's methods for the images ``x`` (the
    predicted classes), as ``reconstruct --compare`` draws it."""
    from deconvviz.render.reconstruct import comparison_figure

    comp = compare_methods(model, x, progress=progress)
    classes = _dataset_class_names(config)
    return save_figure(Path(out) / "compare.png", comparison_figure(comp, classes))


def write_comparison(
    model: nn.Module,
    config: Any,
    images: Sequence[Path],
    out: Path,
    *,
    target: int | None = None,
    baseline: float = 0.0,
    occlusion_size: int = 8,
    progress: bool = False,
) -> Written:
    """``compare.png`` (one row per image: input, deconvnet, saliency, guided backprop,
    integrated gradients, occlusion) and ``compare.json`` (target classes, probabilities)."""
    from deconvviz.render.reconstruct import comparison_figure

    want_c, want_size = expected_input(model, config)
    x = load_images(images, want_c, want_size)
    comp = compare_methods(
        model, x, target, baseline=baseline, occlusion_size=occlusion_size, progress=progress
    )
    classes = _dataset_class_names(config)
    path = save_figure(Path(out) / "compare.png", comparison_figure(comp, classes))
    js = write_json(
        Path(out) / "compare.json",
        {
            "images": [str(p) for p in images],
            "methods": list(comp.methods),
            "target": comp.target.tolist(),
            "probability": comp.probability.tolist(),
        },
    )
    return Written((path, js), f"wrote {path} ({len(images)} images, {len(comp.methods)} methods)")


def write_layer_table(table: Any, path: Path) -> Path:
    """``inspect --json``: the layer table as JSON (atomically)."""
    return write_json(path, table.to_dict())


def write_inspection(
    model: nn.Module,
    config: Any = None,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    rule: str = "deconvnet",
    json_path: Path | None = None,
) -> Written:
    """``deconvviz inspect``: the layer table of ``model`` for ``channels x image_size`` inputs
    (default: what the model or its run ``config`` expects, else 3 x 224), and, for the
    deconvnet rule, the sentence naming the conv layers whose projections cannot depend on the
    image; with ``json_path``, the table as JSON too. ``line`` is all of it, to print."""
    want_c, want_size = expected_input(model, config)
    size = image_size or want_size or 224
    table = layer_table(model, (channels or want_c or 3, size, size), rule)
    line = str(table)
    if rule == "deconvnet":
        device, dtype = model_device_dtype(model)
        x = torch.zeros(1, *table.input_shape, device=device, dtype=dtype)
        note = no_switch_note(model, x, conv_layer_names(model))
        if note is not None:
            line += "\n\n" + note
    paths = (write_layer_table(table, json_path),) if json_path is not None else ()
    return Written(paths, line)
