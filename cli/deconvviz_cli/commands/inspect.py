"""``deconvviz inspect``: what can be projected in a model, one row per layer call."""

from __future__ import annotations

from pathlib import Path

import click

from deconvviz_cli.model_options import ModelSpec, model_options
from deconvviz_cli.options import RULES, RUN_HELP


@click.command("inspect", short_help="Every layer: shape, receptive field, reverse step.")
@click.option(
    "--checkpoint",
    "-c",
    type=click.Path(path_type=Path),
    default=None,
    metavar="PATH",
    help=RUN_HELP,
)
@model_options
@click.option(
    "--channels",
    type=click.IntRange(min=1),
    default=None,
    help="Input channels (default: the first conv layer's).",
)
@click.option(
    "--rule",
    type=RULES,
    default="deconvnet",
    show_default=True,
    help="ReLU step the table describes.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the table as JSON here.",
)
def inspect_cmd(
    checkpoint: Path | None,
    model_spec: ModelSpec,
    channels: int | None,
    rule: str,
    json_path: Path | None,
) -> None:
    """A table of every layer of a model: name (one row per call of a shared module, as
    'layer1.0.relu:1'), type, output shape for --image-size inputs, receptive field size and
    stride in input pixels, the reverse step it gets, and any activation with no deconvnet rule.

    -c is optional here: without it the model keeps its random weights, which does not change
    the table.

    \b
    Examples:
      deconvviz inspect --model torchvision.models:resnet18 --image-size 224
      deconvviz inspect -c runs/lenet5
      deconvviz inspect --model their_resnet.py:resnet20 -c resnet20.th --image-size 32
    """
    from deconvviz.export.measures import write_inspection

    loaded = model_spec.load(checkpoint, quiet=True)
    written = write_inspection(
        loaded.model,
        loaded.config,
        image_size=model_spec.image_size,
        channels=channels,
        rule=rule,
        json_path=json_path,
    )
    click.echo(written.line)
