"""One definition of each option that several commands share, so that it looks the same on all.

``-c/--checkpoint``, ``--model``, ``--device``, ``--layer``, ``--data-dir``, ``--dataset``,
``--split``, ``--rule``, ``--out``, ``--progress/--no-progress``, ``--top``, ``--max-images``,
``--batch-size``, ``--iterations``, ``--workers``, ``--seed`` and ``--target`` are defined here
once; every command module uses these decorators instead of its own ``click.option(...)``.
Options of a single command module stay in that module (:func:`int_option` and :func:`stack`
keep those short too).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = [
    "RULES",
    "batch_size_option",
    "checkpoint_option",
    "choice_option",
    "data_dir_option",
    "dataset_option",
    "device_option",
    "float_option",
    "int_list",
    "int_option",
    "iterations_option",
    "layer_option",
    "max_images_option",
    "model_option",
    "out_option",
    "output_options",
    "progress_option",
    "project_layers_option",
    "rule_option",
    "run_data_options",
    "seed_option",
    "split_option",
    "stack",
    "top_option",
    "target_option",
    "workers_option",
]

F = TypeVar("F", bound=Callable[..., Any])

RUN_HELP = (
    "Run directory made by 'deconvviz train' (or a checkpoint .pt file). Optional with "
    "--model: without it the model keeps its own initial weights."
)


def checkpoint_option(f: F) -> F:
    """``-c/--checkpoint PATH``: the run to load; optional where ``--model`` is given (the model
    then keeps its own initial weights; :meth:`ModelSpec.load` asks for one of the two)."""
    return click.option(
        "--checkpoint",
        "-c",
        default=None,
        type=click.Path(path_type=Path),
        metavar="PATH",
        help=RUN_HELP,
    )(f)


def model_option(f: F) -> F:
    """``--model``, ``--model-arg``, ``--trust-checkpoint``, ``--normalize``, ``--image-size``:
    how to build and feed the model (see :mod:`deconvviz_cli.model_options`).

    The command receives them as one ``model_spec`` argument, a
    :class:`deconvviz_cli.model_options.ModelSpec`; ``model_spec.load(checkpoint, device)``
    is the one way every command loads its model (:func:`deconvviz.sources.loading.load_model`).
    """
    from deconvviz_cli.model_options import model_options

    return model_options(f, into="model_spec")  # type: ignore[return-value]


def _check_device(auto: bool) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or ctx.resilient_parsing:
            return value
        from deconvviz.base.devices import resolve_device
        from deconvviz.base.errors import InputError

        try:
            resolve_device(value, auto=auto)
        except InputError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        return value

    return callback


def device_option(*, auto: bool = False) -> Callable[[F], F]:
    """``--device NAME``: where the model runs; checked against the devices this machine has.

    Args:
        auto: also accept ``auto`` (a GPU where there is one), for commands that train.
    """
    more = " or auto (a GPU where there is one)" if auto else ""
    return click.option(
        "--device",
        default="cpu",
        show_default=True,
        metavar="NAME",
        callback=_check_device(auto),
        help=f"Where the model runs: cpu, cuda, cuda:N{more}.",
    )


def layer_option(*, multiple: bool, help: str, per_call: bool = False) -> Callable[[F], F]:
    """``--layer NAME`` as ``named_modules()`` spells it; repeatable where ``multiple``.

    Args:
        multiple: repeatable; the parameter is then ``layers`` (a tuple), else ``layer``.
        help: what the layer is for (the spelling is added).
        per_call: the command projects through the engine, which also takes ``NAME:N``, the
            N-th call of a module the forward pass calls several times (a ResNet block's ReLU).
    """
    extra = "; repeatable" if multiple else ""
    spelling = "; NAME:N for the N-th call of a shared module" if per_call else ""
    return click.option(
        "--layer",
        "layers" if multiple else "layer",
        multiple=multiple,
        default=None,
        metavar="NAME",
        help=f"{help}, as named_modules() spells it{spelling}{extra}.",
    )


def data_dir_option(*, required: bool, help: str | None = None) -> Callable[[F], F]:
    """``--data-dir DIR``: the folder holding the dataset."""
    return click.option(
        "--data-dir",
        required=required,
        default=None,
        type=click.Path(path_type=Path),
        metavar="DIR",
        help=help
        or "Folder holding the run's dataset, or a root such as ../shared/data. Not needed for "
        "runs trained on the shipped CIFAR-10 sample (deconvviz demo).",
    )


def dataset_option(f: F) -> F:
    """``--dataset NAME``: which dataset under ``--data-dir`` a loaded run reads (default: the
    run's own). The training commands, which choose what to train on, keep their own."""
    return click.option(
        "--dataset",
        default=None,
        help="Dataset under --data-dir (cifar10-course, cifar10, mnist); default: the run's.",
    )(f)


def _check_out(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Make sure ``--out`` can be written before any work is done: create it (and remove the
    folders made here again when the command ends without writing anything into them)."""
    if value is None or ctx.resilient_parsing:
        return value
    path = Path(value)
    created: list[Path] = []  # deepest first
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    if not probe.is_dir():
        raise click.BadParameter(
            f"{value} cannot be a folder: {probe} is a file; pass a folder path", ctx, param
        )

    def remove_empty() -> None:
        for folder in created:
            try:
                folder.rmdir()  # only when empty: nothing written there
            except OSError:
                break

    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".deconvviz-write-check.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        remove_empty()
        why = exc.strerror or type(exc).__name__
        raise click.BadParameter(
            f"cannot write to {value} ({why}); pass a folder you can write to", ctx, param
        ) from None
    ctx.call_on_close(remove_empty)
    return value


def out_option(
    help: str = "Output folder (created; existing files are replaced atomically).",
) -> Callable[[F], F]:
    """``-o/--out DIR``: where the command writes (required; checked to be writable)."""
    return click.option(
        "--out",
        "-o",
        required=True,
        type=click.Path(path_type=Path, file_okay=False),
        metavar="DIR",
        callback=_check_out,
        help=help,
    )


def _progress(ctx: click.Context, param: click.Parameter, value: bool | None) -> bool:
    """``None`` (neither flag given): bars only when stderr is a terminal, so that a log file
    gets no carriage returns or escape codes."""
    if value is not None:
        return value
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_option(f: F) -> F:
    """``--progress/--no-progress``: progress bars on stderr (default: when it is a terminal)."""
    return click.option(
        "--progress/--no-progress",
        default=None,
        callback=_progress,
        help="Show progress bars on stderr (default: only when stderr is a terminal, so that "
        "logs stay free of bar redraws).",
    )(f)


def int_list(value: str | None, what: str) -> list[int] | None:
    """The integers of a comma-separated option value (``"1,2,3"``); ``None`` for ``None``.

    Raises:
        InputError: a value is not an integer (the message names the option ``what``).
    """
    from deconvviz.base.errors import InputError

    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what} must be integers separated by commas, got {value!r}") from None


class RuleChoice(click.Choice):
    """``--rule``'s choices: the registered rules, read when the command line is parsed, so a
    rule a plugin registers at import (``deconvviz.engine.rules.register_rule``) is accepted."""

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
"""The ``--rule`` type: every registered rule."""

rule_option = click.option(
    "--rule",
    type=RULES,
    default="deconvnet",
    show_default=True,
    help="ReLU step of the reverse path: deconvnet (Zeiler & Fergus), gradient (saliency) or "
    "guided (guided backprop).",
)


def split_option(help: str = "Which split of the dataset to use.") -> Callable[[F], F]:
    """``--split test|train``: which split of the run's dataset (default: test)."""
    return choice_option("--split", choices=["test", "train"], default="test", help=help)


def stack(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """One decorator that applies ``decorators`` as if they were written above a function in
    this order (the first one's option comes first in ``--help``)."""

    def decorate(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return decorate


def int_option(
    *decls: str, help: str, default: int | None = None, min: int = 1, **attrs: Any
) -> Any:
    """An integer option of at least ``min``; its default is shown where it has one (a
    repeatable one, ``multiple=True``, has none: it collects a tuple)."""
    if default is not None:
        attrs.setdefault("show_default", True)
    if not attrs.get("multiple"):
        attrs["default"] = default
    return click.option(*decls, type=click.IntRange(min=min), help=help, **attrs)


def choice_option(*decls: str, choices: list[str], default: Any, help: str) -> Any:
    """An option taking one of ``choices``, its default shown."""
    return click.option(
        *decls, type=click.Choice(choices), default=default, show_default=True, help=help
    )


def float_option(*decls: str, default: float, help: str) -> Any:
    """A number option, its default shown."""
    return click.option(*decls, type=float, default=default, show_default=True, help=help)


def run_data_options(split_help: str = "Which split of the dataset to use.") -> Callable[[F], F]:
    """``-c``, the model options, ``--data-dir``, ``--dataset``, ``--split``: a loaded run and
    the dataset split it reads, in this order on every command that scans a run's dataset."""
    return stack(
        checkpoint_option,
        model_option,
        data_dir_option(required=False),
        dataset_option,
        split_option(split_help),
    )


project_layers_option = layer_option(
    multiple=True, help="Layer to project (default: every Conv2d)", per_call=True
)
"""``--layer NAME`` (repeatable) of the commands that project every chosen layer's maps."""


def output_options(f: F) -> F:
    """``--out``, ``--device``, ``--progress/--no-progress``, in this order (the last options of
    most commands that load a run and write into a folder)."""
    return stack(out_option(), device_option(), progress_option)(f)


def top_option(help: str, *, short: bool = False) -> Callable[[F], F]:
    """``--top K`` (also ``-k`` where ``short``): top activations kept per unit (default 9)."""
    return int_option(*(["-k"] if short else []), "--top", "k", default=9, help=help)


def max_images_option(help: str, default: int | None = None) -> Callable[[F], F]:
    """``--max-images N``: use only N images of the dataset, spread evenly over it."""
    return int_option("--max-images", default=default, help=help)


def batch_size_option(default: int, help: str) -> Callable[[F], F]:
    """``--batch-size N``: images per forward pass, or per training step."""
    return int_option("--batch-size", default=default, help=help)


def iterations_option(default: int, help: str) -> Callable[[F], F]:
    """``--iterations N``: optimizer steps."""
    return int_option("--iterations", default=default, help=help)


def workers_option(help: str) -> Callable[[F], F]:
    """``--workers N``: DataLoader worker processes (default 0: read in the main process)."""
    return int_option("--workers", default=0, min=0, help=help)


def seed_option(help: str) -> Callable[[F], F]:
    """``--seed N`` (default 0)."""
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def target_option(help: str) -> Callable[[F], F]:
    """``--target CLASS``: the class to explain (default: the predicted one)."""
    return int_option("--target", min=0, help=help)
