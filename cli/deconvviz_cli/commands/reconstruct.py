"""Commands ``reconstruct``, ``compare``, ``report`` and ``demo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from deconvviz.report import SECTIONS
from deconvviz_cli._datasets import dataset_note
from deconvviz_cli.model_options import ModelSpec
from deconvviz_cli.options import (
    checkpoint_option,
    data_dir_option,
    dataset_option,
    device_option,
    layer_option,
    model_option,
    out_option,
    progress_option,
)


class RuleChoice(click.Choice):
    """``--rule``'s choices: the registered rules, read when the command line is parsed, so a
    rule a plugin registers at import (``deconvviz.rules.register_rule``) is accepted."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        from deconvviz.engine.rules import rule_names

        return tuple(rule_names())

    @choices.setter
    def choices(self, _: object) -> None:
        pass  # always the registry's


RULES = RuleChoice()

_data_dir = data_dir_option(required=False)
_split = click.option(
    "--split",
    type=click.Choice(["test", "train"]),
    default="test",
    show_default=True,
    help="Which split of the dataset to use.",
)
_layer = layer_option(multiple=True, help="Layer to project (default: every Conv2d)", per_call=True)
_rule = click.option(
    "--rule",
    type=RULES,
    default="deconvnet",
    show_default=True,
    help="ReLU step of the reverse path: deconvnet (Zeiler & Fergus), gradient (saliency) or "
    "guided (guided backprop).",
)


@click.command(
    "reconstruct", short_help="Project feature maps back to pixels (the paper's Fig. 2)."
)
@checkpoint_option
@model_option
@_data_dir
@dataset_option
@_split
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="PATH",
    help="Project these images (PNG/JPEG; repeatable) instead of scanning a dataset.",
)
@_layer
@click.option(
    "--channel",
    "channels",
    multiple=True,
    type=click.IntRange(min=0),
    metavar="C",
    help="Only these feature maps (repeatable); default: all.",
)
@click.option(
    "--top",
    "k",
    type=click.IntRange(min=1),
    default=9,
    show_default=True,
    help="Dataset mode: top activations per feature map.",
)
@_rule
@click.option(
    "--max-images",
    type=click.IntRange(min=1),
    default=None,
    help="Dataset mode: scan only the first N images.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Dataset mode: DataLoader worker processes reading images (for big image folders).",
)
@click.option(
    "--compare/--no-compare",
    default=False,
    show_default=True,
    help="Image mode: also write compare.png, our deconvnet beside captum's saliency, guided "
    "backprop, integrated gradients and occlusion for each image's predicted class.",
)
@out_option()
@device_option()
@progress_option
def reconstruct_cmd(
    checkpoint: Path,
    model_factory: ModelSpec,
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
    run = model_factory.load(checkpoint, device)
    what = (list(layers) or None, list(channels) or None, rule)
    if images:
        click.echo(_images_mode(run, images, what, compare, out, progress))
        return
    data = _dataset_split(run, data_dir, dataset, split, max_images)
    click.echo(_dataset_mode(run, data, what, k, workers, out, progress))


def _images_mode(
    run: Any,
    images: tuple[Path, ...],
    what: tuple[Any, Any, str],
    compare: bool,
    out: Path,
    progress: bool,
) -> str:
    """Project each image's strongest activations (and --compare); the line to print."""
    from deconvviz import export_reconstructions as export
    from deconvviz import reconstruct as rec

    layers, chans, rule = what
    want_c, want_size = rec.expected_input(run.model, run.config)
    x = rec.load_images(images, want_c, want_size)
    results = rec.reconstruct_images(run.model, x, layers, chans, rule, progress=progress)
    pngs = export.write_image_reconstructions(results, out, [p.stem for p in images])
    if compare:
        from deconvviz._io import save_figure
        from deconvviz.compare import compare_methods
        from deconvviz.render.reconstruct import comparison_figure

        comp = compare_methods(run.model, x, progress=progress)
        classes = _class_names(run.config)
        pngs.append(save_figure(out / "compare.png", comparison_figure(comp, classes)))
    size = "x".join(str(s) for s in x.shape[-2:])
    return (
        f"wrote {len(pngs)} figures to {out} ({len(images)} images as {x.shape[1]}x{size}, "
        f"layers {', '.join(results)}, rule {rule})"
    )


def _dataset_split(
    run: Any, data_dir: Path | None, dataset: str | None, split: str, max_images: int | None
) -> Any:
    """The run's dataset split (its first ``max_images``), said on stderr when picked."""
    from torch.utils.data import Subset

    from deconvviz.datasets import dataset_for_model

    data = dataset_for_model(run.model, run.config, data_dir, dataset, split, max_images)
    dataset_note(data_dir, getattr(data, "name", None), dataset)
    if max_images is not None and len(data) > max_images:
        data = Subset(data, range(max_images))
    return data


def _dataset_mode(
    run: Any,
    data: Any,
    what: tuple[Any, Any, str],
    k: int,
    workers: int,
    out: Path,
    progress: bool,
) -> str:
    """Project each feature map's top-k activations over ``data``; the line to print."""
    from deconvviz import export_reconstructions as export
    from deconvviz import reconstruct as rec

    layers, chans, rule = what
    found = rec.reconstruct_dataset(
        run.model, data, layers, k, rule, channels=chans, progress=progress, num_workers=workers
    )
    pngs = export.write_dataset_reconstructions(found, out)
    return (
        f"wrote {len(pngs)} figures to {out} (top-{k} of {len(data)} images, "
        f"layers {', '.join(found)}, rule {rule})"
    )


def _class_names(config: dict[str, Any]) -> list[str] | None:
    name = config.get("dataset") if config else None
    if name in ("cifar10", "cifar10-course", "cifar10-sample"):
        from deconvviz.data import CIFAR10_CLASSES

        return list(CIFAR10_CLASSES)
    if name == "mnist":
        return [str(d) for d in range(10)]
    return None


@click.command("compare", short_help="Our deconvnet beside captum's attribution methods.")
@checkpoint_option
@model_option
@click.option(
    "--image",
    "images",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    metavar="PATH",
    help="Images to explain (PNG/JPEG; repeatable, at most 8).",
)
@click.option(
    "--target",
    type=click.IntRange(min=0),
    default=None,
    help="Class to explain; default: each image's predicted class.",
)
@click.option(
    "--baseline",
    type=float,
    default=0.0,
    show_default=True,
    help="Input value integrated gradients starts from and occlusion fills with.",
)
@click.option(
    "--occlusion-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Occluder side in pixels.",
)
@out_option()
@device_option()
@progress_option
def compare_cmd(
    checkpoint: Path,
    model_factory: ModelSpec,
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
    from deconvviz._io import save_figure, write_json
    from deconvviz.compare import compare_methods
    from deconvviz.reconstruct import expected_input, load_images
    from deconvviz.render.reconstruct import comparison_figure

    if len(images) > 8:
        raise click.UsageError("compare draws at most 8 images; give fewer --image")
    run = model_factory.load(checkpoint, device)
    want_c, want_size = expected_input(run.model, run.config)
    x = load_images(images, want_c, want_size)
    comp = compare_methods(
        run.model, x, target, baseline=baseline, occlusion_size=occlusion_size, progress=progress
    )
    classes = _class_names(run.config)
    path = save_figure(out / "compare.png", comparison_figure(comp, classes))
    write_json(
        out / "compare.json",
        {
            "images": [str(p) for p in images],
            "methods": list(comp.methods),
            "target": comp.target.tolist(),
            "probability": comp.probability.tolist(),
        },
    )
    click.echo(f"wrote {path} ({len(images)} images, {len(comp.methods)} methods)")


@click.command("report", short_help="Write a static HTML report of a trained model.")
@checkpoint_option
@model_option
@_data_dir
@dataset_option
@_split
@_layer
@click.option(
    "--top",
    "k",
    type=click.IntRange(min=1),
    default=9,
    show_default=True,
    help="Top activations per feature map in the reconstructions.",
)
@_rule
@click.option(
    "--images",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Images (the dataset's first) that get occlusion maps and the method comparison.",
)
@click.option(
    "--max-images",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Scan at most this many images for statistics and reconstructions.",
)
@click.option(
    "--section",
    "sections",
    multiple=True,
    type=click.Choice([key for key, _ in SECTIONS]),
    help="Only these sections (repeatable); default: all.",
)
@out_option()
@device_option()
@progress_option
def report_cmd(
    checkpoint: Path,
    model_factory: ModelSpec,
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
    from deconvviz.report import report_from_run

    report = report_from_run(
        checkpoint,
        data_dir,
        out,
        loaded=model_factory.load(checkpoint, device),
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
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Training iterations (with --train).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Training batch size (with --train).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (with --train).")
@device_option(auto=True)
@click.option(
    "--images",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Images that get occlusion maps and the method comparison.",
)
@click.option(
    "--top",
    "k",
    type=click.IntRange(min=1),
    default=9,
    show_default=True,
    help="Top activations per feature map in the reconstructions.",
)
@click.option(
    "--max-images",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Images scanned for statistics, reconstructions and class selectivity.",
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
    from deconvviz.demo import run_demo

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


COMMANDS: list[click.Command] = [reconstruct_cmd, compare_cmd, report_cmd, demo_cmd]
