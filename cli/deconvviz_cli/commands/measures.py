"""``deconvviz occlude``, ``filters`` and ``stats``: measurements of one trained run (its
occlusion maps, its filters, its activations). The paper's analyses live in ``analyses``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
from torch import nn

from deconvviz._io import save_figure, save_image, save_torch, write_json, write_text
from deconvviz._util import safe_name
from deconvviz.errors import InputError
from deconvviz_cli._datasets import dataset_note
from deconvviz_cli.model_options import ModelSpec
from deconvviz_cli.options import (
    batch_size_option,
    checkpoint_option,
    data_dir_option,
    dataset_option,
    device_option,
    int_option,
    layer_option,
    max_images_option,
    model_option,
    out_option,
    output_options,
    progress_option,
    split_option,
    stack,
    target_option,
    workers_option,
)

_run = stack(checkpoint_option, model_option)
"""``-c`` and the model options: the run every command here measures."""


def _safe(name: str) -> str:
    return safe_name(name, "model")


def _class_names(model: nn.Module, run_config: Any = None) -> list[str] | None:
    """The class names where they are known: from the run's dataset, or the example model."""
    from deconvviz.data import CIFAR10_CLASSES, MNIST_CLASSES

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


def _occlude_input(model_spec: ModelSpec, run: Any, image: Path, device: str) -> Any:
    """The image as the model takes it, by the one image loader: resized to ``--image-size``,
    else to the model's own input size, else (a model of any input size) kept as it is unless
    its forward pass would not fit the engine's memory budget, in which case it is scaled down
    to the largest size that does."""
    from PIL import Image

    from deconvviz.images import load_images
    from deconvviz.occlusion import input_size_within
    from deconvviz.reconstruct import expected_input

    channels, side = _input_shape(run.model)
    if not isinstance(getattr(run.model, "config", None), dict):
        want_channels, want_side = expected_input(run.model, run.config)
        channels = want_channels or channels
        side = want_side or side
    if model_spec.image_size is not None:
        side = int(model_spec.image_size)
    size: int | tuple[int, int] | None = side
    if size is None:
        try:
            with Image.open(image) as im:  # the header only: the size, without decoding
                w, h = im.size
        except (OSError, ValueError):
            w = h = 0  # unreadable: the loader says so in one line
        if h and w:
            fit = input_size_within(run.model, (h, w), channels or 3)
            size = None if fit == (h, w) else fit
    return load_images([image], channels, size).to(device)


@click.command("occlude", short_help="Occlusion sensitivity maps of one image.")
@_run
@click.option(
    "--image",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Image file; converted to the model's channels and size, scaled to [0, 1].",
)
@int_option("--size", default=8, help="Occluder side in pixels.")
@int_option("--stride", default=2, help="Step between occluder positions.")
@layer_option(multiple=False, help="Layer whose strongest feature map to follow (e.g. conv2)")
@target_option("Class to map (default: the class predicted on the image).")
@click.option(
    "--fill",
    default="grey",
    show_default=True,
    help="Occluder colour: 'grey' (0.5), 'mean' (the image's mean) or a number.",
)
@output_options
def occlude(
    checkpoint: Path,
    model_factory: ModelSpec,
    image: Path,
    size: int,
    stride: int,
    layer: str | None,
    target: int | None,
    fill: str,
    out: Path,
    device: str,
    progress: bool,
) -> None:
    """Occlusion sensitivity of one image, as in Zeiler & Fergus's Figure 7.

    Writes occlusion.png (the maps over the image) and occlusion.pt (the result tensors).
    """
    from deconvviz.occlusion import occlusion
    from deconvviz.render.occlusion import occlusion_figure

    run = model_factory.load(checkpoint, device)
    x = _occlude_input(model_factory, run, image, device)
    fill_value: str | float = fill
    if fill not in ("grey", "gray", "mean"):
        try:
            fill_value = float(fill)
        except ValueError:
            raise InputError(f"--fill must be 'grey', 'mean' or a number, got {fill!r}") from None
    res = occlusion(
        run.model,
        x,
        target=target,
        size=size,
        stride=stride,
        fill=fill_value,
        layer=layer,
        progress=progress,
    )
    names = _class_names(run.model, getattr(run, "config", None))
    fig = occlusion_figure(res, x.cpu(), 0, class_names=names)
    png = save_figure(out / "occlusion.png", fig, dpi=120)
    save_torch(out / "occlusion.pt", dataclasses.asdict(res))
    t = int(res.target[0])
    low = int(res.prob[0].argmin())
    y0, x0, y1, x1 = res.boxes.view(-1, 4)[low].tolist()
    label = names[t] if names is not None and t < len(names) else str(t)
    click.echo(
        f"wrote {png}: p({label}) = {float(res.base_prob[0]):.3f} unoccluded, lowest "
        f"{float(res.prob[0].min()):.3f} with the occluder on rows {y0}-{y1 - 1}, "
        f"cols {x0}-{x1 - 1}"
    )


@click.command("filters", short_help="Filter grids, RMS and zero filters.")
@_run
@layer_option(multiple=True, help="Conv layer to draw (default: every conv layer)")
@out_option()
@click.option(
    "--radius",
    type=click.FloatRange(min=0, min_open=True),
    default=0.1,
    show_default=True,
    help="Renormalisation radius drawn on the RMS chart.",
)
@int_option("--scale", default=4, help="Pixels per kernel weight in the grid.")
@click.option(
    "--tol",
    type=click.FloatRange(min=0),
    default=1e-6,
    show_default=True,
    help="RMS at or below which a filter counts as a zero filter (dead units are counted on "
    "data, by stats and reconstruct).",
)
def filters(
    checkpoint: Path,
    model_factory: ModelSpec,
    layers: tuple[str, ...],
    out: Path,
    radius: float,
    scale: int,
    tol: float,
) -> None:
    """Filter grids, per-filter RMS and zero filters (RMS at most --tol) of the conv layers.

    A zero filter is not a dead unit: a unit is dead when its activation is never above 0 on
    the scanned images, which stats, reconstruct, the report and the atlas count.

    Writes filters_<layer>.png, rms_<layer>.png and filters.json.
    """
    from deconvviz.filters import filter_summary
    from deconvviz.render.filters import filter_grid, rms_figure

    run = model_factory.load(checkpoint)
    summary = filter_summary(run.model, list(layers) or None, radius, tol)
    modules = dict(run.model.named_modules())
    for name in summary:
        conv = modules[name]
        save_image(out / f"filters_{_safe(name)}.png", filter_grid(conv, scale=scale))
        save_figure(out / f"rms_{_safe(name)}.png", rms_figure(conv, radius, title=name), dpi=110)
    write_json(out / "filters.json", {"radius": radius, "tol": tol, "layers": summary})
    zero = ", ".join(f"{k} {len(v['dead'])}/{len(v['rms'])}" for k, v in summary.items())
    click.echo(
        f"wrote filter grids of {', '.join(summary)} to {out} (zero filters, RMS <= {tol:g}: "
        f"{zero})"
    )


@click.command("stats", short_help="Activation statistics over a dataset split.")
@_run
@data_dir_option(required=False)
@out_option()
@layer_option(multiple=True, help="Layer to measure (default: each conv layer's ReLU output)")
@split_option("Which split of the dataset to measure.")
@batch_size_option(256, "Images per forward pass.")
@dataset_option
@max_images_option("Use only the first N images.")
@workers_option("DataLoader worker processes reading images (for big image folders).")
@device_option()
@progress_option
def stats(
    checkpoint: Path,
    model_factory: ModelSpec,
    data_dir: Path | None,
    dataset: str | None,
    out: Path,
    layers: tuple[str, ...],
    split: str,
    batch_size: int,
    max_images: int | None,
    workers: int,
    device: str,
    progress: bool,
) -> None:
    """Activation statistics over a dataset split (hidden states for recurrent models).

    Prints the report's lines (h_conv1_stats: mean = ...; var = ...) and writes stats.md,
    stats.json and the histograms.
    """
    from torch.utils.data import DataLoader, Subset

    from deconvviz.datasets import dataset_for_model
    from deconvviz.render.stats import histogram_figure, stats_table
    from deconvviz.stats import activation_stats, report_lines

    run = model_factory.load(checkpoint, device)
    data = dataset_for_model(run.model, run.config, data_dir, dataset, split, max_images)
    dataset_note(data_dir, data.name, dataset)
    name = data.name
    if max_images is not None and len(data) > max_images:
        data = Subset(data, range(max_images))
    loader = DataLoader(data, batch_size=batch_size, num_workers=workers)
    title = f"# Statistics of {run.path} on {name} ({split}, {len(data)} images)\n\n"
    if callable(getattr(run.model, "hidden_states", None)) and not layers:
        click.echo(_hidden_state_stats(run.model, loader, title, out, progress))
        return
    result = activation_stats(run.model, loader, layers=list(layers) or None, progress=progress)
    lines = report_lines(result)
    body = "```\n" + "\n".join(lines) + "\n```\n\n" + stats_table(result)
    write_text(out / "stats.md", title + body)
    write_json(
        out / "stats.json",
        {"report_lines": lines, "layers": {k: s.to_dict() for k, s in result.items()}},
    )
    for name, s in result.items():
        save_figure(out / f"hist_{_safe(name)}.png", histogram_figure(s), dpi=110)
    for line in lines:
        click.echo(line)
    click.echo(f"wrote stats.md, stats.json and {len(result)} histograms to {out}")


def _hidden_state_stats(
    model: nn.Module, loader: Any, title: str, out: Path, progress: bool
) -> str:
    """Hidden-state statistics of a recurrent model into ``out``; the line to print."""
    from deconvviz.render.stats import hidden_state_figure, hidden_state_table
    from deconvviz.stats import hidden_state_stats

    hs = hidden_state_stats(model, loader, progress=progress)
    write_text(out / "stats.md", title + hidden_state_table(hs))
    write_json(out / "stats.json", {"hidden_states": hs.to_dict()})
    save_figure(out / "hidden_states.png", hidden_state_figure(hs), dpi=110)
    return (
        f"wrote hidden-state statistics to {out}: mean = {hs.overall_mean:.4g}; var = "
        f"{hs.overall_var:.4g}; saturated = {100 * float(hs.saturated_fraction.mean()):.2f}%"
    )


COMMANDS = [occlude, filters, stats]
