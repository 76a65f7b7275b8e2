"""The report commands: ``report`` (of a trained model) and ``demo`` (of the shipped one)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from deconvviz.export.report import SECTIONS
from deconvviz_cli._datasets import dataset_note
from deconvviz_cli.model_options import ModelSpec
from deconvviz_cli.options import (
    batch_size_option,
    data_dir_option,
    device_option,
    int_option,
    iterations_option,
    layer_option,
    max_images_option,
    out_option,
    output_options,
    progress_option,
    rule_option,
    run_data_options,
    seed_option,
    top_option,
)

_TOP = "Top activations per feature map in the reconstructions."


@click.command("report", short_help="Write a static HTML report of a trained model.")
@run_data_options()
@layer_option(
    multiple=True,
    help="Layer to project, measure (statistics) and compare (invariance, correspondence); "
    "default: every Conv2d for projections, each conv layer's ReLU for statistics, the first "
    "and top layers for the analyses",
    per_call=True,
)
@top_option(_TOP)
@rule_option
@int_option(
    "--images",
    default=4,
    help="Images (the dataset's first) that get occlusion maps and the method comparison.",
)
@max_images_option(
    "Scan at most this many images (spread evenly over the dataset) for statistics and "
    "reconstructions.",
    default=2000,
)
@click.option(
    "--section",
    "sections",
    multiple=True,
    type=click.Choice([key for key, _ in SECTIONS]),
    help="Only these sections (repeatable); default: all.",
)
@output_options
def report_cmd(
    checkpoint: Path | None,
    model_spec: ModelSpec,
    data_dir: Path | None,
    dataset: str | None,
    split: str,
    layers: tuple[str, ...],
    k: int,
    rule: str,
    images: int,
    max_images: int,
    sections: tuple[str, ...],
    out: Path,
    device: str,
    progress: bool,
) -> None:
    """Write a static HTML report (index.html) of a trained model.

    It links every figure: training curves, first-layer filters, activation statistics,
    per-layer reconstructions, occlusion maps, the method comparison and the analyses, with a
    manifest.json of versions, config and seed. Open OUT/index.html in a browser.
    """
    from deconvviz.export.report import report_from_run

    report = report_from_run(
        checkpoint,
        data_dir,
        out,
        loaded=model_spec.load(checkpoint, device),
        dataset=dataset,
        split=split,
        layers=list(layers) or None,
        k=k,
        rule=rule,
        images=images,
        max_images=max_images,
        sections=list(sections) or None,
        map_location=device,
        progress=progress,
    )
    used = json.loads(report.manifest.read_text()).get("dataset") or {}
    dataset_note(data_dir, used.get("name") if isinstance(used, dict) else None, dataset)
    skipped = f", skipped: {', '.join(s for s, _ in report.skipped)}" if report.skipped else ""
    click.echo(f"wrote {report.index} ({len(report.figures)} figures{skipped})")


@click.command(
    "demo", short_help="The whole report of the shipped ZF-style CIFAR-10 network (no training)."
)
@out_option("Output folder: index.html, manifest.json, figures/ (and run/, with --train).")
@data_dir_option(
    required=False,
    help="Use the CIFAR-10 found here (cifar10.npz or cifar-10-batches-py): its test split "
    "(and, with --train, its full train split); default: the 500-image CIFAR-10 sample "
    "shipped with deconvviz (works offline).",
)
@click.option(
    "--train",
    "train_now",
    is_flag=True,
    help="Train LeNet5 from scratch instead (the origin report's setup; a model that has "
    "learned little).",
)
@iterations_option(300, "Training iterations (with --train).")
@batch_size_option(50, "Training batch size (with --train).")
@seed_option("Random seed (with --train).")
@device_option(auto=True)
@int_option("--images", default=4, help="Images that get occlusion maps and the method comparison.")
@top_option(_TOP)
@max_images_option(
    "Images scanned for statistics, reconstructions and class selectivity.", default=500
)
@progress_option
def demo_cmd(
    out: Path,
    data_dir: Path | None,
    train_now: bool,
    iterations: int,
    batch_size: int,
    seed: int,
    device: str,
    images: int,
    k: int,
    max_images: int,
    progress: bool,
) -> None:
    """Write the whole report of the shipped ZF-style CIFAR-10 network (under a minute on a CPU).

    With --train, train LeNet5 from scratch first (the origin report's setup).

    \b
    Example:
      deconvviz demo --out demo      # then open demo/index.html
    """
    from deconvviz.export.demo import run_demo

    result = run_demo(
        out,
        data_dir=data_dir,
        train=train_now,
        iterations=iterations,
        batch_size=batch_size,
        seed=seed,
        device=device,
        images=images,
        k=k,
        max_images=max_images,
        progress=progress,
    )
    where = "the shipped CIFAR-10 sample" if result.data == "sample" else result.data
    if result.model == "lenet5":
        what = f"LeNet5 trained {iterations} iterations on {where}, test accuracy"
    else:
        what = f"the shipped ZF-style network on {where}; CIFAR-10 test accuracy"
    click.echo(
        f"wrote {result.report.index} ({what} {result.final_test_acc:.3f}, "
        f"{len(result.report.figures)} figures)"
    )


COMMANDS: list[click.Command] = [report_cmd, demo_cmd]
