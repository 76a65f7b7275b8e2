"""``deconvviz occlude``, ``filters`` and ``stats``: measurements of one trained run (its
occlusion maps, its filters, its activations). The paper's analyses live in ``analyses``."""

from __future__ import annotations

from pathlib import Path

import click

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
    checkpoint: Path | None,
    model_spec: ModelSpec,
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
    from deconvviz.export.measures import write_occlusion

    loaded = model_spec.load(checkpoint, device)
    written = write_occlusion(
        loaded.model,
        getattr(loaded, "config", None),
        image,
        out,
        device=device,
        image_size=model_spec.image_size,
        size=size,
        stride=stride,
        layer=layer,
        target=target,
        fill=fill,
        progress=progress,
    )
    click.echo(written.line)


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
    checkpoint: Path | None,
    model_spec: ModelSpec,
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
    from deconvviz.export.measures import write_filters

    loaded = model_spec.load(checkpoint)
    written = write_filters(loaded.model, out, layers, radius=radius, scale=scale, tol=tol)
    click.echo(written.line)


@click.command("stats", short_help="Activation statistics over a dataset split.")
@_run
@data_dir_option(required=False)
@out_option()
@layer_option(multiple=True, help="Layer to measure (default: each conv layer's ReLU output)")
@split_option("Which split of the dataset to measure.")
@batch_size_option(256, "Images per forward pass.")
@dataset_option
@max_images_option("Use only N images, spread evenly over the dataset.")
@workers_option("DataLoader worker processes reading images (for big image folders).")
@device_option()
@progress_option
def stats(
    checkpoint: Path | None,
    model_spec: ModelSpec,
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
    from deconvviz.export.measures import write_stats
    from deconvviz.sources.datasets import dataset_for_model

    loaded = model_spec.load(checkpoint, device)
    data = dataset_for_model(loaded.model, loaded.config, data_dir, dataset, split, max_images)
    dataset_note(data_dir, data.name, dataset)
    written = write_stats(
        loaded.model,
        data,
        out,
        source=model_spec.source(checkpoint if loaded.path is None else loaded.path),
        split=split,
        layers=layers,
        batch_size=batch_size,
        max_images=max_images,
        workers=workers,
        progress=progress,
    )
    click.echo(written.line)


COMMANDS = [occlude, filters, stats]
