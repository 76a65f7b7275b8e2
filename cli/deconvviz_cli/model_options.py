"""``--model``, ``--model-arg``, ``--trust-checkpoint``, ``--normalize``, ``--image-size``: how
every command that loads a model gets it (through :func:`deconvviz.sources.loading.load_model`).

A command decorated with :func:`model_options` receives one ``model_spec`` argument (a
:class:`ModelSpec`) and calls ``model_spec.load(checkpoint, device)``; the one-line layout
message goes to stderr when the command has succeeded (an error stays the only line).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from deconvviz.sources.loading import LoadedModel, load_model

__all__ = ["ModelSpec", "model_options"]

_NAMES = ("model", "model_args", "trust_checkpoint", "normalize", "image_size")


@dataclass(frozen=True)
class ModelSpec:
    """What the model options said."""

    model: str | None = None
    model_args: tuple[str, ...] = ()
    trust_checkpoint: bool = False
    normalize: str | None = None
    image_size: int | None = None
    #: layout lines kept back until the command succeeds (an error stays one line)
    held: list[str] | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return self.model or ""

    def source(self, checkpoint: Path | None) -> str:
        """What a command records as the model's origin: the checkpoint, else the model spec
        with its own initial weights (never ``"None"``)."""
        if checkpoint is not None:
            return str(checkpoint)
        return f"{self.model} (its own initial weights, no checkpoint)"

    def load(self, checkpoint: Path | None, device: str = "cpu", quiet: bool = False) -> Any:
        """The loaded model (:class:`deconvviz.sources.loading.LoadedModel`); says its layout on
        stderr when the user named a model, a normalisation or a trusted checkpoint (a run made
        by ``deconvviz train`` loads silently).

        ``checkpoint`` may be ``None`` where ``--model`` is given: the model keeps its own
        initial weights, on every command alike; with neither, a usage error names both."""
        if checkpoint is None and not self.model:
            raise click.UsageError(
                "give -c/--checkpoint (a run made by 'deconvviz train' or a weights file) or "
                "--model SPEC (e.g. torchvision.models:resnet18, with its own initial weights)",
                ctx=click.get_current_context(silent=True),
            )
        loaded: LoadedModel = load_model(
            model=self.model,
            checkpoint=checkpoint,
            model_args=list(self.model_args),
            trust_checkpoint=self.trust_checkpoint,
            normalize=self.normalize,
            image_size=self.image_size,
            map_location=device,
        )
        if not quiet and (self.model or self.normalize or self.trust_checkpoint):
            if self.held is not None:
                self.held.append(loaded.message)
            else:
                click.echo(loaded.message, err=True)
        return loaded


_OPTIONS = [
    click.option(
        "--model",
        "model",
        metavar="SPEC",
        default=None,
        help="The model: 'torchvision.models:resnet18', 'package.module:factory', "
        "'path/to/file.py:factory', 'timm:NAME' (needs the timm extra) or a bare name "
        "(resnet18, lenet5). Not needed for a run made by 'deconvviz train'.",
    ),
    click.option(
        "--model-arg",
        "model_args",
        multiple=True,
        metavar="KEY=VALUE",
        help="Constructor argument of --model (repeatable), e.g. num_classes=10.",
    ),
    click.option(
        "--trust-checkpoint",
        is_flag=True,
        default=False,
        help="Allow a checkpoint that holds pickled Python objects (a whole nn.Module); "
        "unpickling runs code from the file, so only for files you trust.",
    ),
    click.option(
        "--normalize",
        default=None,
        metavar="NAME|MEAN,STD,...",
        help="Input normalisation the model was trained with: imagenet, cifar10, mnist, none or "
        "MEAN,STD pairs per channel. Images stay pixels in [0, 1]; the model normalises them. "
        "Default: the run's own, else none.",
    ),
    click.option(
        "--image-size",
        type=click.IntRange(min=1),
        default=None,
        metavar="S",
        help="Input side the model takes: images are centre-cropped to square and resized "
        "to SxS (bicubic; datasets: bilinear, antialiased). Default: the run's own, else "
        "as stored.",
    ),
]


def model_options(f: Callable[..., Any], into: str = "model_spec") -> Callable[..., Any]:
    """Add the model options; the command gets one ``ModelSpec`` argument named ``into``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in _NAMES if name in kwargs}
        values["model_args"] = tuple(values.get("model_args") or ())
        held: list[str] = []
        kwargs[into] = ModelSpec(**values, held=held)
        result = f(*args, **kwargs)
        for line in held:  # said once the command has succeeded: errors stay one line
            click.echo(line, err=True)
        return result

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper
