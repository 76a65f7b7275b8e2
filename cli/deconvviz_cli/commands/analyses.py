"""``deconvviz invariance``, ``correspondence``, ``sanity`` and ``sensitivity``: the paper's
analyses and the projections' sanity checks (``train --evolution`` is in ``commands.train``).

Each command loads a run, takes a few images of its dataset, calls one library function and
writes ``<name>.png`` + ``<name>.json`` (plus a markdown table for the tables) into ``--out``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch

from deconvviz.base.errors import InputError
from deconvviz_cli._datasets import dataset_note
from deconvviz_cli.options import (
    choice_option,
    float_option,
    int_list,
    int_option,
    layer_option,
    output_options,
    run_data_options,
    seed_option,
    stack,
)

__all__ = [
    "correspondence_cmd",
    "invariance_cmd",
    "sanity_cmd",
    "sensitivity_cmd",
]


_common = stack(
    run_data_options("Dataset split the images come from."),
    int_option(
        "--index",
        "indices",
        min=0,
        multiple=True,
        help="Dataset index of an image (repeatable; default: --images images "
        "spread evenly over the split).",
    ),
    output_options,
)
"""The run, its images (``--split``, ``--index``) and the output: every analysis has them."""

_rules_option = click.option(
    "--rules",
    default="deconvnet,gradient,guided",
    show_default=True,
    help="Comma-separated projection rules.",
)
_signed_option = click.option(
    "--signed", is_flag=True, help="Compare signed maps instead of absolute ones."
)


def _fill_option(help: str) -> Any:
    """``--fill VALUE`` (default 0.0): the input value of pixels an analysis replaces."""
    return float_option("--fill", default=0.0, help=help)


def _layers_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--layer NAME`` (repeatable), and the older ``--layers A,B`` spelling (hidden)."""
    f = click.option(
        "--layers",
        "layers_csv",
        default=None,
        hidden=True,
        help="Comma-separated layers (older spelling of a repeated --layer).",
    )(f)
    return layer_option(
        multiple=True, help="Layer to compare (default: the first and the last hidden layer)"
    )(f)


def _load(
    opts: dict[str, Any], n_default: int
) -> tuple[Any, torch.Tensor, torch.Tensor, list[int]]:
    """The run, and ``(images, labels, dataset indices)`` from its dataset."""
    from deconvviz.sources.datasets import dataset_for_model
    from deconvviz.sources.loading import dataset_images

    loaded = opts["model_spec"].load(opts["checkpoint"], opts["device"])
    ds = dataset_for_model(
        loaded.model, loaded.config, opts["data_dir"], opts.get("dataset"), opts["split"]
    )
    dataset_note(opts["data_dir"], ds.name, opts.get("dataset"))
    n = n_default if opts["images"] is None else opts["images"]
    x, y, idx = dataset_images(ds, opts["indices"], n, opts["split"])
    return loaded, x, y, idx


def _layers(layers: tuple[str, ...] = (), csv: str | None = None) -> list[str] | None:
    """The layers of ``--layer NAME`` (repeated) and ``--layers A,B``; ``None`` for neither."""
    names = list(layers or ())
    if csv is not None:
        more = [v.strip() for v in csv.split(",") if v.strip()]
        if not more:
            raise InputError(f"--layers {csv!r} names no layer; give --layer NAME (repeatable)")
        names += more
    return names or None


def _rules(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise InputError(
            f"--rules {value!r} names no rule; give rules separated by commas "
            "(deconvnet,gradient,guided)"
        )
    return names


def _images_option(default: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return int_option(
        "--images", help=f"How many images, spread evenly over the split [default: {default}]."
    )


# ---------------------------------------------------------------------------- invariance


@click.command(
    "invariance", short_help="Feature distance and class probability under transformations."
)
@_common
@_images_option(8)
@choice_option(
    "--transform",
    choices=["translate", "htranslate", "scale", "rotate"],
    default="translate",
    help="translate = vertical shift in pixels (the paper's), htranslate = horizontal.",
)
@click.option(
    "--values",
    default=None,
    help="Comma-separated values to sweep (pixels, scale factors or degrees); "
    "default: a range suited to the transform.",
)
@_layers_options
@_fill_option("Input value for pixels moved in from outside the image.")
def invariance_cmd(
    transform: str,
    values: str | None,
    layers: tuple[str, ...],
    layers_csv: str | None,
    fill: float,
    **opts: Any,
) -> None:
    """Feature distance and true-class probability under a transformation (paper's Fig. 5).

    Writes invariance_<transform>.png and .json.
    """
    from deconvviz.export.analyses import run_analysis

    loaded, x, y, idx = _load(opts, 8)
    vals = None
    if values is not None:
        try:
            vals = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise InputError(
                f"--values must be numbers separated by commas, got {values!r}"
            ) from None
    written = run_analysis(
        "invariance",
        loaded.model,
        x,
        y,
        opts["out"],
        stem=f"invariance_{transform}",
        info=_info(opts, idx),
        transform=transform,
        values=vals,
        layers=_layers(layers, layers_csv),
        fill=fill,
        progress=opts["progress"],
    )
    click.echo(written.line)


# ---------------------------------------------------------------------------- correspondence


def _read_boxes(
    boxes_file: Path | None, box: tuple[str, ...], part: str | None
) -> tuple[Any, list[str] | None, list[int] | None]:
    """Boxes (``[P, N, 4]`` from a file, ``[N, 4]`` or one ``[1, 4]`` from ``--box``), part names,
    and the file's dataset indices."""
    from deconvviz.analyses.correspondence import read_boxes

    if boxes_file is not None and box:
        raise InputError("give --boxes FILE or --box, not both")
    if boxes_file is not None:
        return read_boxes(boxes_file)
    if not box:
        return None, None, None  # the default: a centred square (see correspondence_cmd)
    parsed = []
    for b in box:
        vals = int_list(b, "--box")
        if vals is None or len(vals) != 4:
            raise InputError(f"--box takes Y0,X0,Y1,X1 (half-open pixel box), got {b!r}")
        parsed.append(vals)
    return parsed, [part or "part"], None


@click.command(
    "correspondence", short_help="Do occluded parts change features consistently? (Table 1)"
)
@_common
@_images_option(5)
@click.option(
    "--box",
    multiple=True,
    metavar="Y0,X0,Y1,X1",
    help="The occluded part: one box for every image, or one per image (repeat, in "
    "--index order). Half-open input-pixel corners. Default (no --box, no --boxes): a "
    "centred square a quarter of the image side, named 'centre'.",
)
@click.option("--part", default=None, help="Name of the part given with --box (default: part).")
@click.option(
    "--boxes",
    "boxes_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='JSON {"indices": [i, ...], "parts": {"left eye": [[y0,x0,y1,x1], ...], ...}} '
    "with one box per image and part.",
)
@_layers_options
@int_option("--random", "n_random", default=20, help="Random occlusions of the same size per part.")
@seed_option("Seed of the random occlusions.")
@_fill_option("Value of the occluded pixels.")
def correspondence_cmd(
    box: tuple[str, ...],
    part: str | None,
    boxes_file: Path | None,
    layers: tuple[str, ...],
    layers_csv: str | None,
    n_random: int,
    seed: int,
    fill: float,
    **opts: Any,
) -> None:
    """Consistency of feature changes when the same part is occluded in several images
    (paper's Sec. 5.2 / Table 1), against random occlusions.

    Writes correspondence.png, .json and .md (the table).
    """
    from deconvviz.export.analyses import run_analysis

    boxes, names, spec_indices = _read_boxes(boxes_file, box, part)
    if spec_indices and not opts["indices"]:
        opts["indices"] = tuple(int(i) for i in spec_indices)
    loaded, x, _, idx = _load(opts, 5)
    if boxes is None:
        h, w = x.shape[-2:]
        side = max(2, min(h, w) // 4)
        y0, x0 = (h - side) // 2, (w - side) // 2
        boxes, names = [[y0, x0, y0 + side, x0 + side]], [part or "centre"]
    written = run_analysis(
        "correspondence",
        loaded.model,
        x,
        None,
        opts["out"],
        info=_info(opts, idx),
        boxes=boxes,
        layers=_layers(layers, layers_csv),
        n_random=n_random,
        seed=seed,
        parts=names,
        fill=fill,
        progress=opts["progress"],
    )
    click.echo(written.line)


# ---------------------------------------------------------------------------- sanity checks


@click.command("sanity", short_help="Model-randomisation sanity check of the projections.")
@_common
@_images_option(4)
@layer_option(
    multiple=False, help="Layer to project (default: the output layer, the predicted class)"
)
@int_option(
    "--channel",
    min=0,
    help="Channel/class to project (default: per image, the predicted class or the "
    "strongest channel).",
)
@_rules_option
@choice_option(
    "--mode",
    choices=["cascade", "independent"],
    default="cascade",
    help="Randomise cumulatively from the top, or one layer at a time.",
)
@_signed_option
@seed_option("Seed of the weight randomisation.")
def sanity_cmd(
    layer: str | None,
    channel: int | None,
    rules: str,
    mode: str,
    signed: bool,
    seed: int,
    **opts: Any,
) -> None:
    """Model-randomisation sanity check (Adebayo et al. 2018) for each rule side by side.

    Writes randomisation.png, .json and .md (the table).
    """
    from deconvviz.export.analyses import run_analysis

    loaded, x, _, idx = _load(opts, 4)
    written = run_analysis(
        "sanity",
        loaded.model,
        x,
        None,
        opts["out"],
        stem="randomisation",
        info=_info(opts, idx),
        layer=layer,
        channel=channel,
        rules=_rules(rules),
        mode=mode,
        absolute=not signed,
        seed=seed,
        progress=opts["progress"],
    )
    click.echo(written.line)


@click.command("sensitivity", short_help="Do projections of different classes differ?")
@_common
@_images_option(2)
@layer_option(
    multiple=False, help="Layer to project (default: the output layer, so channels are classes)"
)
@click.option(
    "--channels",
    default=None,
    help="Comma-separated channels/classes (default: up to --max-channels).",
)
@int_option(
    "--max-channels",
    default=10,
    min=2,
    help="Channels/classes compared when --channels is not given.",
)
@_rules_option
@_signed_option
def sensitivity_cmd(
    layer: str | None,
    channels: str | None,
    max_channels: int,
    rules: str,
    signed: bool,
    **opts: Any,
) -> None:
    """How much projections of different channels/classes differ on the same image
    (Mahendran & Vedaldi 2016).

    Writes sensitivity.png, .json and .md (the table).
    """
    from deconvviz.export.analyses import run_analysis

    loaded, x, _, idx = _load(opts, 2)
    written = run_analysis(
        "sensitivity",
        loaded.model,
        x,
        None,
        opts["out"],
        info=_info(opts, idx),
        layer=layer,
        channels=int_list(channels, "--channels"),
        rules=_rules(rules),
        max_channels=max_channels,
        absolute=not signed,
        progress=opts["progress"],
    )
    click.echo(written.line)


def _info(opts: dict[str, Any], idx: list[int]) -> dict[str, Any]:
    """What every analysis's JSON adds to its result: the images used and the run."""
    return {"dataset_indices": idx, "checkpoint": opts["model_spec"].source(opts["checkpoint"])}


def analysis_command(analysis: Any) -> click.Command:
    """The command of a registered analysis that has none written by hand: the run, its
    images and the output (as every analysis command), ``--images``, and its ``options``;
    parse -> ``run_analysis`` -> one line."""

    def callback(**kwargs: Any) -> None:
        from deconvviz.export.analyses import run_analysis

        keys = {o.key for o in analysis.options}
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in keys}
        loaded, x, y, idx = _load(kwargs, analysis.images)
        written = run_analysis(
            analysis.name, loaded.model, x, y, kwargs["out"], info=_info(kwargs, idx), **options
        )
        click.echo(written.line)

    command: Any = callback
    for opt in reversed(analysis.options):
        if opt.type is bool:
            command = click.option(opt.name, opt.key, is_flag=True, help=opt.help)(command)
        else:
            command = click.option(
                opt.name,
                opt.key,
                type=opt.type,
                default=opt.default,
                show_default=opt.default is not None,
                help=opt.help,
            )(command)
    command = _common(_images_option(analysis.images)(command))
    help_text = analysis.help or f"The {analysis.name} analysis. Writes {analysis.name}.png."
    return click.command(analysis.name, help=help_text)(command)


def registered_commands(taken: set[str]) -> list[click.Command]:
    """A command for every registered analysis with a compute function and no hand-written
    command (``taken``: the names of the commands there already are)."""
    from deconvviz.analyses.registry import analyses

    return [
        analysis_command(a)
        for a in analyses()
        if a.command is None and a.compute is not None and a.name not in taken
    ]
