"""The projection commands: ``reconstruct`` and ``compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from deconvviz_cli._datasets import dataset_note
from deconvviz_cli.model_options import ModelSpec
from deconvviz_cli.options import (
    checkpoint_option,
    float_option,
    int_option,
    max_images_option,
    model_option,
    output_options,
    project_layers_option,
    rule_option,
    run_data_options,
    target_option,
    top_option,
    workers_option,
)


def _images_option(required: bool, help: str) -> Any:
    """``--image PATH`` (repeatable): images to project or explain."""
    return click.option(
        "--image",
        "images",
        multiple=True,
        required=required,
        type=click.Path(path_type=Path),
        metavar="PATH",
        help=help,
    )


@click.command(
    "reconstruct", short_help="Project feature maps back to pixels (the paper's Fig. 2)."
)
@run_data_options()
@_images_option(False, "Project these images (PNG/JPEG; repeatable) instead of scanning a dataset.")
@project_layers_option
@int_option(
    "--channel",
    "channels",
    min=0,
    multiple=True,
    metavar="C",
    help="Only these feature maps (repeatable); default: all.",
)
@top_option("Dataset mode: top activations per feature map.")
@rule_option
@max_images_option("Dataset mode: scan only N images, spread evenly over the dataset.")
@workers_option("Dataset mode: DataLoader worker processes reading images (for big image folders).")
@click.option(
    "--compare/--no-compare",
    default=False,
    show_default=True,
    help="Image mode: also write compare.png, our deconvnet beside captum's saliency, guided "
    "backprop, integrated gradients and occlusion for each image's predicted class.",
)
@output_options
def reconstruct_cmd(
    checkpoint: Path | None,
    model_spec: ModelSpec,
    data_dir: Path | None,
    dataset: str | None,
    split: str,
    images: tuple[Path, ...],
    layers: tuple[str, ...],
    channels: tuple[int, ...],
    k: int,
    rule: str,
    max_images: int | None,
    workers: int,
    compare: bool,
    out: Path,
    device: str,
    progress: bool,
) -> None:
    """Project feature maps back to pixels (the paper's Fig. 2).

    Dataset mode (default): for every chosen layer, each feature map's top-k activations over
    the dataset, projected, beside the image patches that caused them. Image mode (--image):
    for each image, the strongest activation of each feature map, projected.

    \b
    Examples:
      deconvviz reconstruct -c runs/lenet5 --data-dir ../shared/data --out out/rec
      deconvviz reconstruct -c runs/lenet5 --image cat.png --layer conv2 --out out/cat
    """
    if images and compare and len(images) > 8:
        raise click.UsageError("--compare draws at most 8 images; give fewer --image")
    from deconvviz.export.reconstructions import (
        write_dataset_projections,
        write_image_projections,
    )

    loaded = model_spec.load(checkpoint, device)
    chosen, chans = list(layers) or None, list(channels) or None
    if images:
        written = write_image_projections(
            loaded.model,
            loaded.config,
            images,
            out,
            layers=chosen,
            channels=chans,
            rule=rule,
            compare=compare,
            progress=progress,
        )
    else:
        data = _dataset_split(loaded, data_dir, dataset, split, max_images)
        written = write_dataset_projections(
            loaded.model,
            data,
            out,
            k=k,
            max_images=max_images,
            layers=chosen,
            channels=chans,
            rule=rule,
            num_workers=workers,
            progress=progress,
        )
    click.echo(written.line)


def _dataset_split(
    loaded: Any, data_dir: Path | None, dataset: str | None, split: str, max_images: int | None
) -> Any:
    """The run's dataset split, said on stderr when picked (image folders list only
    ``max_images`` files, spread over their classes; every dataset is cut to that many images,
    spread evenly, by the scan)."""
    from deconvviz.sources.datasets import dataset_for_model

    data = dataset_for_model(loaded.model, loaded.config, data_dir, dataset, split, max_images)
    dataset_note(data_dir, getattr(data, "name", None), dataset)
    return data


@click.command("compare", short_help="Our deconvnet beside captum's attribution methods.")
@checkpoint_option
@model_option
@_images_option(True, "Images to explain (PNG/JPEG; repeatable, at most 8).")
@target_option("Class to explain; default: each image's predicted class.")
@float_option(
    "--baseline",
    default=0.0,
    help="Input value integrated gradients starts from and occlusion fills with.",
)
@int_option("--occlusion-size", default=8, help="Occluder side in pixels.")
@output_options
def compare_cmd(
    checkpoint: Path | None,
    model_spec: ModelSpec,
    images: tuple[Path, ...],
    target: int | None,
    baseline: float,
    occlusion_size: int,
    out: Path,
    device: str,
    progress: bool,
) -> None:
    """Our deconvnet beside captum's attribution methods, for the same images and class.

    Writes compare.png (one row per image: input, deconvnet, saliency, guided backprop,
    integrated gradients, occlusion) and compare.json (target classes and probabilities).
    """
    from deconvviz.export.measures import write_comparison

    if len(images) > 8:
        raise click.UsageError("compare draws at most 8 images; give fewer --image")
    loaded = model_spec.load(checkpoint, device)
    written = write_comparison(
        loaded.model,
        loaded.config,
        images,
        out,
        target=target,
        baseline=baseline,
        occlusion_size=occlusion_size,
        progress=progress,
    )
    click.echo(written.line)


COMMANDS: list[click.Command] = [reconstruct_cmd, compare_cmd]
