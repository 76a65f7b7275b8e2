"""``deconvviz train lenet5|zfnet|rnn`` (with its ``--evolution`` hook) and ``deconvviz sweep
lenet5|rnn``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from deconvviz.base.errors import InputError
from deconvviz.sources.checkpoint import resume_config
from deconvviz.training.train import TrainConfig, TrainResult, train_from_data
from deconvviz_cli._datasets import dataset_note
from deconvviz_cli._output import write_result
from deconvviz_cli.options import (
    batch_size_option,
    choice_option,
    data_dir_option,
    device_option,
    float_option,
    int_list,
    int_option,
    iterations_option,
    out_option,
    progress_option,
    seed_option,
    stack,
)

__all__ = ["sweep", "train"]

_DATA_HELP = "Folder holding the dataset, or a root such as ../shared/data."
_BATCH = "Training batch size."
_EVAL = "Evaluate on the whole test set every N iterations."
_CELLS = ["rnn", "lstm", "gru"]

# The options ``train`` and ``sweep`` share, each defined once.
_loss = choice_option(
    "--loss",
    choices=["stable", "course"],
    default="stable",
    help="'course' is the course's naive -sum(y*log(softmax)), which can NaN.",
)
_init = choice_option(
    "--init", choices=["course", "pytorch"], default="course", help="Weight initialisation."
)
_seed = seed_option("Seeds the initialisation and the batch order.")
_eval_every = int_option("--eval-every", default=100, help=_EVAL)
_device = device_option(auto=True)
_sweep_data_out = stack(
    data_dir_option(required=True, help=_DATA_HELP),
    out_option("Sweep directory (one run folder per configuration, and results.md)."),
)


def _optimizer(default: str) -> Any:
    """``--optimizer adam|sgd``."""
    return choice_option("--optimizer", choices=["adam", "sgd"], default=default, help="Optimiser.")


def _lr(default: float) -> Any:
    """``--lr``."""
    return float_option("--lr", default=default, help="Learning rate.")


def _momentum(default: float) -> Any:
    """``--momentum``."""
    return float_option("--momentum", default=default, help="SGD momentum.")


def _dataset(choices: list[str], default: str, help: str) -> Any:
    """``--dataset``: the datasets a training command can read."""
    return choice_option("--dataset", choices=choices, default=default, help=help)


def _hidden(default: int, help: str) -> Any:
    """``--hidden N``: a model's hidden size."""
    return int_option("--hidden", default=default, help=help)


def _recipe_options(**defaults: Any) -> list[Any]:
    """Options for a modern recipe (weight decay, schedule, augmentation, bf16...)."""
    d = {
        "weight_decay": 0.0,
        "nesterov": False,
        "schedule": "constant",
        "label_smoothing": 0.0,
        "augment": "none",
        "precision": "fp32",
        **defaults,
    }
    return _regularisation_options(d) + _input_options(d)


def _regularisation_options(d: dict[str, Any]) -> list[Any]:
    """``--weight-decay``, ``--nesterov``, ``--schedule``, ``--label-smoothing``."""
    return [
        float_option("--weight-decay", default=d["weight_decay"], help="L2 weight decay."),
        click.option(
            "--nesterov/--no-nesterov",
            default=d["nesterov"],
            show_default=True,
            help="Nesterov momentum (sgd with --momentum > 0).",
        ),
        choice_option(
            "--schedule",
            choices=["constant", "onecycle"],
            default=d["schedule"],
            help="Learning rate: constant, or onecycle (warm up over 15% of the steps from "
            "lr/10, then decay linearly to 0).",
        ),
        float_option(
            "--label-smoothing",
            default=d["label_smoothing"],
            help="Label smoothing of the cross-entropy loss.",
        ),
    ]


def _input_options(d: dict[str, Any]) -> list[Any]:
    """``--augment``, ``--precision``, ``--renormalise``, ``--normalize``."""
    return [
        choice_option(
            "--augment",
            choices=["none", "crop-flip"],
            default=d["augment"],
            help="crop-flip: random crops of 4-pixel reflect-padded images and horizontal flips.",
        ),
        choice_option(
            "--precision",
            choices=["fp32", "bf16"],
            default=d["precision"],
            help="bf16: bfloat16 autocast (fast on CPUs with AMX/AVX-512 bf16 and on GPUs).",
        ),
        click.option(
            "--renormalise",
            type=float,
            default=None,
            metavar="RADIUS",
            help="The paper's filter renormalisation: after each step, scale conv filters "
            "whose RMS exceeds RADIUS back to it (the paper used 0.1).",
        ),
        click.option(
            "--normalize",
            default=None,
            metavar="NAME|MEAN,STD,...",
            help="Train the model on normalised inputs: cifar10, imagenet, mnist or MEAN,STD "
            "pairs (one per channel). Stored in the run; every command that loads it normalises "
            "again, while data and figures stay in pixels.",
        ),
    ]


def _common_train_options(
    *,
    batch_size: int,
    iterations: int,
    lr: float,
    fetches: str,
    momentum: float = 0.0,
    optimizer: str = "adam",
    **recipe: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Every option the ``train`` commands share, with this command's defaults."""
    options = [
        data_dir_option(required=True, help=_DATA_HELP),
        out_option("Run directory for checkpoint.pt, config.json, metrics.json, curves.png."),
        *_optimiser_options(optimizer, lr, momentum),
        *_length_options(batch_size, iterations),
        *_setup_options(),
        *_run_options(fetches),
        *_recipe_options(**recipe),
    ]

    return stack(evolution_options, *options)  # --evolution LAYER (below) comes first


def _optimiser_options(optimizer: str, lr: float, momentum: float) -> list[Any]:
    """``--optimizer``, ``--lr``, ``--momentum``."""
    return [_optimizer(optimizer), _lr(lr), _momentum(momentum)]


def _length_options(batch_size: int, iterations: int) -> list[Any]:
    """``--batch-size``, ``--iterations``, ``--epochs``, ``--eval-every``."""
    return [
        batch_size_option(batch_size, _BATCH),
        iterations_option(iterations, "Optimizer steps (ignored with --epochs)."),
        click.option(
            "--epochs",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Passes over the training set, instead of --iterations.",
        ),
        _eval_every,
    ]


def _setup_options() -> list[Any]:
    """``--seed``, ``--per-class``, ``--loss``, ``--init``."""
    per_class = "Train on the first N images of every class (default: all)."
    return [_seed, int_option("--per-class", help=per_class), _loss, _init]


def _run_options(fetches: str) -> list[Any]:
    """``--device``, ``--resume``, ``--overwrite``, ``--download``, ``--progress``."""
    return [
        _device,
        click.option(
            "--resume",
            is_flag=True,
            help="Continue the run in --out from its checkpoint (options given here "
            "override only iterations/epochs/eval-every/device).",
        ),
        click.option("--overwrite", is_flag=True, help="Replace a run already in --out."),
        click.option(
            "--download",
            is_flag=True,
            help=f"Fetch {fetches} with torchvision if it is missing (needs network).",
        ),
        progress_option,
    ]


# ---------------------------------------------------------------------------- train --evolution


def evolution_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--evolution`` options of ``deconvviz train``."""
    return stack(
        click.option(
            "--evolution",
            default=None,
            metavar="LAYER",
            help="Record the feature evolution of LAYER (paper's Fig. 4) at evaluation "
            "points; writes evolution.png/.json into the run directory.",
        ),
        click.option(
            "--evolution-channels",
            default=None,
            metavar="C,C,...",
            help="Feature maps to follow (default: the first 8).",
        ),
        int_option(
            "--evolution-every",
            help="Record when the iteration is a multiple of N (default: at every "
            "evaluation point).",
        ),
        int_option(
            "--evolution-pool",
            default=256,
            help="Test images searched for the strongest activation.",
        ),
    )(f)


class EvolutionHook:
    """Builds the :class:`~deconvviz.analyses.FeatureEvolution` callback for ``train`` from the
    ``--evolution`` options and writes its figure into the run directory afterwards."""

    def __init__(self, opts: dict[str, Any]) -> None:
        self.layer: str | None = opts.pop("evolution", None)
        self.channels = int_list(opts.pop("evolution_channels", None), "--evolution-channels")
        self.every: int | None = opts.pop("evolution_every", None)
        self.pool: int = opts.pop("evolution_pool", 256)
        self.callback: Any = None

    def callbacks(self, config: Any, data_dir: Path, download: bool = False) -> list[Any]:
        """The callbacks to pass to ``train`` (none without ``--evolution``)."""
        if self.layer is None:
            return []
        from deconvviz.analyses import FeatureEvolution, pick_images
        from deconvviz.sources.data import dataset_for_config
        from deconvviz.sources.models import build_model

        test_set = dataset_for_config(config.to_dict(), data_dir, "test", download=download)
        pool, _, _ = pick_images(test_set, self.pool)
        self.callback = FeatureEvolution(
            pool, self.layer, self.channels, every=self.every, pool_size=self.pool
        )
        import torch

        with torch.random.fork_rng(devices=[]):  # fail before training on a wrong layer name
            self.callback.validate(build_model(config.model))
        return [self.callback]

    def write(self, run_dir: Path) -> Path | None:
        """Write ``evolution.png`` and ``evolution.json`` into ``run_dir`` (if anything was
        recorded)."""
        if self.callback is None or not self.callback.records:
            return None
        from deconvviz.render.analyses import evolution_figure

        result = self.callback.result()
        return write_result(Path(run_dir), "evolution", evolution_figure(result), result.to_dict())


# Every TrainConfig field is a command-line option, except these three.
_TRAIN_KEYS = tuple(
    f.name
    for f in dataclasses.fields(TrainConfig)
    if f.name not in ("model", "dataset", "eval_batch_size")
)


def _config(
    ctx: click.Context, model: dict[str, Any], dataset: str | None, opts: dict[str, Any]
) -> TrainConfig:
    values = {k: opts[k] for k in _TRAIN_KEYS}
    if opts["epochs"] is not None and _given_here(ctx, "iterations"):
        raise InputError("give --iterations or --epochs, not both")
    if not opts["resume"]:
        return TrainConfig(model=model, dataset=dataset, **values)
    given = {k: v for k, v in values.items() if _given_here(ctx, k)}
    model_given = {k: v for k, v in model.items() if k != "model" and _given_here(ctx, k)}
    return TrainConfig.from_dict(resume_config(opts["out"], given, model_given))


def _given_here(ctx: click.Context, param: str) -> bool:
    return ctx.get_parameter_source(param) is ParameterSource.COMMANDLINE


def _report(result: TrainResult, out: Path) -> str:
    cfg = result.config
    what = cfg.model["model"]
    if what == "rnn":
        what = f"{cfg.model['cell']}-{cfg.model['hidden']}"
    head = f"{what} {cfg.optimizer} lr={cfg.lr:g}"
    if result.status == "diverged":
        return (
            f"{head}: diverged (NaN/inf loss) at iteration {result.diverged_at}, last test "
            f"accuracy {result.last_test_acc:.3f}; run saved in {out}"
        )
    return (
        f"{head}: test accuracy {result.final_test_acc:.4f} after {result.iterations} iterations "
        f"({result.wall_seconds:.0f} s); run saved in {out}"
    )


def _run(
    ctx: click.Context, model: dict[str, Any], dataset: str | None, opts: dict[str, Any]
) -> None:
    evolution = EvolutionHook(opts)
    config = _config(ctx, model, dataset, opts)
    callbacks = evolution.callbacks(config, opts["data_dir"], opts["download"])
    try:
        result = train_from_data(
            config,
            opts["data_dir"],
            opts["out"],
            progress=opts["progress"],
            resume=opts["out"] if opts["resume"] else None,
            overwrite=opts["overwrite"],
            download=opts["download"],
            callbacks=callbacks,
        )
    finally:  # also after Ctrl-C: what was recorded so far
        evolution_png = evolution.write(opts["out"])
    extra = f"; feature evolution in {evolution_png}" if evolution_png is not None else ""
    click.echo(_report(result, opts["out"]) + extra)


_rnn_dataset = _dataset(
    ["mnist"],
    "mnist",
    "The RNNs read MNIST's rows (picked from a --data-dir that holds several datasets).",
)


def _given(ctx: click.Context, param: str) -> Any:
    """The parameter's value where the user gave it on the command line, else None."""
    if ctx.get_parameter_source(param) is ParameterSource.COMMANDLINE:
        return ctx.params.get(param)
    return None


@click.group(
    "train", short_help="Train LeNet5 or the ZF-style net on CIFAR-10, or an RNN on MNIST."
)
def train() -> None:
    """Train an example target: LeNet5 or the ZF-style net on CIFAR-10, RNN/LSTM/GRU on MNIST."""


@train.command("lenet5", short_help="Train the course's LeNet5 on CIFAR-10.")
@_common_train_options(batch_size=50, iterations=2000, lr=1e-3, fetches="CIFAR-10")
@_dataset(
    ["auto", "cifar10-course", "cifar10"],
    "auto",
    "cifar10-course (1x28x28 class folders) or cifar10 (npz / batches); auto: the one "
    "dataset under --data-dir, or from a folder holding several the one that fits the model "
    "(cifar10-course for 1x28x28).",
)
@int_option(
    "--in-channels", help="Model input channels (default: the dataset's; 1 turns colour to grey)."
)
@int_option("--image-size", help="Model input size (default: the dataset's; others are resized).")
@click.pass_context
def train_lenet5(
    ctx: click.Context, dataset: str, in_channels: int | None, image_size: int | None, **opts: Any
) -> None:
    """Train the course's LeNet5 (defaults: adam 1e-3, batch 50, 2000 iterations).

    The report's setup: --dataset cifar10-course --per-class 500.
    """
    from deconvviz.sources.data import choose_dataset, load_dataset

    if dataset == "auto" and not opts["resume"]:  # a folder holding several: LeNet5's own
        dataset = choose_dataset(opts["data_dir"], "lenet5", in_channels, image_size)
        dataset_note(opts["data_dir"], dataset)
    name: str | None = None if dataset == "auto" else dataset
    if not opts["resume"] and (in_channels is None or image_size is None):
        probe = load_dataset(opts["data_dir"], dataset, "test", download=opts["download"])
        name = probe.name
        channels, size, _ = probe.image_shape
        in_channels = channels if in_channels is None else in_channels
        image_size = size if image_size is None else image_size
    model = {
        "model": "lenet5",
        "in_channels": in_channels or 1,
        "image_size": image_size or 28,
        "init": opts.pop("init"),
    }
    _run(ctx, model, name, opts)


@train.command(
    "zfnet-cifar", short_help="Train the ZF-style 5-conv net on CIFAR-10 (the demo's model)."
)
@_common_train_options(
    batch_size=256,
    iterations=2000,
    fetches="CIFAR-10",
    lr=0.1,
    momentum=0.9,
    optimizer="sgd",
    weight_decay=5e-4,
    nesterov=True,
    schedule="onecycle",
    label_smoothing=0.1,
    augment="crop-flip",
    precision="bf16",
)
@int_option("--width", default=64, help="conv1 channels (w).")
@_hidden(256, "fc6 units.")
@_dataset(
    ["cifar10"],
    "cifar10",
    "The full CIFAR-10 (npz or cifar-10-batches-py; picked from a --data-dir that holds "
    "several datasets).",
)
@click.pass_context
def train_zfnet(ctx: click.Context, width: int, hidden: int, dataset: str, **opts: Any) -> None:
    """Train the Zeiler & Fergus-style 5-conv net on the full CIFAR-10 (the demo's model).

    The shipped model's recipe: --epochs 20 with the defaults (sgd, nesterov momentum 0.9,
    lr 0.1 one-cycle, weight decay 5e-4, label smoothing 0.1, crop-flip, bf16).
    """
    opts.pop("init")
    model = {"model": "zfnet-cifar", "width": width, "hidden": hidden}
    if not opts["resume"]:
        dataset_note(opts["data_dir"], dataset, _given(ctx, "dataset"))
    _run(ctx, model, dataset, opts)


@train.command("rnn", short_help="Train an RNN, LSTM or GRU on MNIST rows.")
@_common_train_options(batch_size=128, iterations=390, lr=1e-3, fetches="MNIST")
@choice_option("--cell", choices=_CELLS, default="rnn", help="Recurrent cell.")
@_hidden(128, "Hidden size.")
@_rnn_dataset
@click.pass_context
def train_rnn(ctx: click.Context, cell: str, hidden: int, dataset: str, **opts: Any) -> None:
    """Train an RNN/LSTM/GRU on MNIST rows (defaults: adam 1e-3, batch 128, 390 steps)."""
    model = {"model": "rnn", "cell": cell, "hidden": hidden, "init": opts.pop("init")}
    if not opts["resume"]:
        dataset_note(opts["data_dir"], dataset, _given(ctx, "dataset"))
    _run(ctx, model, dataset, opts)


def _parse_grid(values: tuple[str, ...]) -> list[tuple[str, float]]:
    grid = []
    for value in values:
        opt, sep, lr = value.partition(":")
        try:
            if not sep:
                raise ValueError
            grid.append((opt.strip(), float(lr)))
        except ValueError as exc:
            raise click.BadParameter(
                f"{value!r} is not OPTIMIZER:LR (e.g. adam:1e-3)", param_hint="--config"
            ) from exc
    return grid


def _sweep_report(result: Any) -> str:
    done = sum(1 for r in result.rows if r.get("status") == "ok")
    diverged = sum(1 for r in result.rows if r.get("status") == "diverged")
    return (
        f"{result.kind} sweep: {len(result.rows)} configurations ({done} ok, {diverged} diverged; "
        f"{len(result.trained)} trained now); table in {result.results_md}"
    )


_ITERS = "Optimizer steps per configuration."


def _grid_axis(*decls: str, help: str, **attrs: Any) -> Any:
    """A repeatable option naming the values of one axis of a sweep's grid."""
    return click.option(*decls, multiple=True, help=help, **attrs)


_sweep_common = stack(_loss, _init, _seed, _device, progress_option)
"""Options both sweeps share: --loss, --init, --seed, --device, --progress."""


@click.group("sweep", short_help="Run the origin report's training grids (resumable).")
def sweep() -> None:
    """Run the origin report's grids (resumable: finished configurations are kept)."""


@sweep.command("lenet5", short_help="LeNet5: optimisers x learning rates.")
@_sweep_data_out
@_grid_axis(
    "--config",
    "configs",
    metavar="OPTIMIZER:LR",
    help="A configuration, repeatable (default: adam:1e-2 adam:1e-3 adam:1e-4 sgd:1e-2 sgd:1e-3).",
)
@_dataset(
    ["cifar10-course", "cifar10"],
    "cifar10-course",
    "Dataset under --data-dir: cifar10-course (the report's setup) or cifar10.",
)
@int_option("--per-class", default=500, help="Train on the first N images of every class.")
@batch_size_option(50, _BATCH)
@iterations_option(2000, _ITERS)
@_eval_every
@_momentum(0.0)
@_sweep_common
@click.pass_context
def sweep_lenet5_cmd(
    ctx: click.Context, data_dir: Path, out: Path, configs: tuple[str, ...], **opts: Any
) -> None:
    """LeNet5: optimisers x learning rates on the course's CIFAR-10 variant."""
    from deconvviz.training.sweep import LENET5_GRID, sweep_lenet5

    dataset_note(data_dir, opts["dataset"], _given(ctx, "dataset"))
    grid = _parse_grid(configs) if configs else list(LENET5_GRID)
    click.echo(_sweep_report(sweep_lenet5(data_dir, out, grid=grid, **opts)))


@sweep.command("rnn", short_help="RNN/LSTM/GRU x hidden sizes on MNIST.")
@_sweep_data_out
@_grid_axis(
    "--cell",
    "cells",
    type=click.Choice(_CELLS),
    help="Recurrent cell, repeatable (default: rnn lstm gru).",
)
@int_option("--hidden", "hiddens", multiple=True, help="Hidden size, repeatable (default: 64 256).")
@_optimizer("adam")
@_lr(1e-3)
@batch_size_option(128, _BATCH)
@iterations_option(390, _ITERS)
@_eval_every
@_sweep_common
@_rnn_dataset
@click.pass_context
def sweep_rnn_cmd(
    ctx: click.Context,
    data_dir: Path,
    out: Path,
    cells: tuple[str, ...],
    hiddens: tuple[int, ...],
    dataset: str,
    **opts: Any,
) -> None:
    """RNN/LSTM/GRU x hidden sizes on MNIST."""
    from deconvviz.training.sweep import RNN_CELLS, RNN_HIDDENS, sweep_rnn

    dataset_note(data_dir, dataset, _given(ctx, "dataset"))

    result = sweep_rnn(
        data_dir, out, cells=cells or RNN_CELLS, hiddens=hiddens or RNN_HIDDENS, **opts
    )
    click.echo(_sweep_report(result))
