"""Command ``atlas``: every unit of every layer over a dataset, as a static site."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from deconvviz_cli.model_options import ModelSpec
from deconvviz_cli.options import (
    batch_size_option,
    choice_option,
    device_option,
    int_option,
    layer_option,
    max_images_option,
    out_option,
    progress_option,
    rule_option,
    run_data_options,
    top_option,
)


@click.command("atlas", short_help="Every unit of every layer over a dataset, as a static site.")
@run_data_options()
@layer_option(multiple=True, help="Layer to scan (default: every Conv2d)")
@top_option("Top activations kept per unit (from distinct images).", short=True)
@rule_option
@max_images_option("Scan only N images, spread evenly over the dataset.")
@batch_size_option(256, "Images per forward pass while scanning.")
@device_option(auto=True)
@choice_option(
    "--precision",
    choices=["fp32", "bf16"],
    default="fp32",
    help="bf16: scan and project under bfloat16 autocast (faster on GPUs and on CPUs with "
    "AVX-512 bf16/AMX; values about 1% off, near-equal top-k entries may swap).",
)
@click.option(
    "--resume/--no-resume",
    default=False,
    show_default=True,
    help="Continue an interrupted scan from OUT/scan-state.pt (refused if the model or data "
    "changed).",
)
@int_option(
    "--save-every", default=20, help="Write the scan state every N batches (and on Ctrl-C)."
)
@int_option(
    "--timeout",
    default=600,
    help="Under torchrun: seconds a process waits for a peer (joining, gathering) before it "
    "stops with an error naming the lost peer.",
)
@out_option("Site folder: index.html, a page per layer and per unit, images.")
@progress_option
def atlas_cmd(
    checkpoint: Path | None,
    model_spec: ModelSpec,
    data_dir: Path | None,
    dataset: str | None,
    split: str,
    layers: tuple[str, ...],
    k: int,
    rule: str,
    max_images: int | None,
    batch_size: int,
    device: str,
    precision: str,
    resume: bool,
    save_every: int,
    timeout: int,
    out: Path,
    progress: bool,
) -> None:
    """Scan a dataset once for the top-k activations of every unit of every chosen layer,
    project them all, and write a static site: an index of layers, a page per layer (a grid of
    its units) and a page per unit (its top-k patches and projections). Open OUT/index.html in
    a browser (file:// works) or serve OUT with any static server.

    Under torchrun every process scans and projects its own share, and rank 0 writes the site:

    \b
    Examples:
      deconvviz atlas -c runs/lenet5 --data-dir ../shared/data --out atlas/
      torchrun --nproc_per_node=4 -m deconvviz_cli atlas -c runs/demo -o atlas/
    """
    from deconvviz.export.atlas import build_atlas
    from deconvviz.sources.datasets import dataset_for_model

    loaded = model_spec.load(checkpoint)
    data = dataset_for_model(loaded.model, loaded.config, data_dir, dataset, split)
    about = _about(
        model_spec.source(checkpoint),
        str(model_spec) if checkpoint is not None else "",
        dataset,
        loaded.config,
        split,
        rule,
    )
    written = build_atlas(
        out,
        loaded.model,
        data,
        list(layers) or "conv",
        k,
        rule,
        max_images=max_images,
        batch_size=batch_size,
        device=device,
        precision=precision,
        resume=resume,
        save_every=save_every,
        timeout=timeout,
        about=about,
        progress=progress,
    )
    if written is not None:  # rank 0 writes the site and says so
        click.echo(written.line)


def _about(
    checkpoint: str, model: str, dataset: str | None, config: dict[str, Any], split: str, rule: str
) -> dict[str, str]:
    """What the site's index says it shows."""
    return {
        "model": checkpoint + (f" ({model})" if model else ""),
        "dataset": f"{dataset or config.get('dataset', 'from the run')} ({split})",
        "rule": rule,
    }


COMMANDS = [atlas_cmd]
