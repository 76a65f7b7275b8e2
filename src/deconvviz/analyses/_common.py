"""Helpers shared by the analyses: forward passes that capture layer outputs, layer choices,
batches and image picking (the input checks live in :mod:`deconvviz.base.checks`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz.base.checks import module_names
from deconvviz.base.errors import InputError, LayerError
from deconvviz.engine.tracer import Tracer


def forward_trace(
    model: nn.Module, x: Tensor
) -> tuple[list[str], dict[str, tuple[int, ...] | None], Counter[str]]:
    """One eval-mode forward pass on ``x[:1]``: submodules in call order, output shapes, calls.

    Returns:
        ``(order, shapes, calls)``: names in the order their forward *finished* (leaves before
        their parents), each one's output shape without the batch dimension (``None`` when not
        a tensor), and how often each was called.
    """
    order: list[str] = []
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: Counter[str] = Counter()
    tracer = Tracer(model)

    @tracer.on_return
    def post(name: str, call: int, module: nn.Module, args: Any, out: Any) -> None:
        calls[name] += 1
        if calls[name] == 1:
            order.append(name)
            shapes[name] = tuple(out.shape[1:]) if isinstance(out, Tensor) else None

    with tracer:
        try:
            tracer.run(x[:1], exact=False)
        except InputError:
            raise
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(
                f"the model's forward pass failed on input of shape {tuple(x.shape)}: {msg}; "
                "check the images' channel count and size (on the command line, --image-size N "
                "resizes images to the size the model was trained on)"
            ) from exc
    return order, shapes, calls


def capture(
    model: nn.Module, x: Tensor, layers: Sequence[str], *, need_output: bool = True
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Outputs of ``layers`` (cloned, ``[N, ...]``) and the model's output, for input ``x``.

    Runs in eval mode without autograd; hooks live only during the call. When
    ``need_output`` is False the forward pass stops after the last wanted layer.
    """
    modules = module_names(model)
    tracer = Tracer(model, {modules[name]: name for name in layers})
    got: dict[str, Tensor] = {}

    @tracer.on_return
    def post(name: str, call: int, module: nn.Module, args: Any, out: Any) -> None:
        if call > 0:
            raise LayerError(
                f"layer {name!r} is called more than once per forward pass (a shared module), so "
                "its output is ambiguous; pick a layer that runs once"
            )
        if not isinstance(out, Tensor):
            raise LayerError(
                f"layer {name!r} returns {type(out).__name__}, not a tensor; pick one of its "
                "submodules"
            )
        got[name] = out.detach().clone()
        if not need_output and len(got) == len(tracer.names):
            tracer.stop()

    with tracer:
        out = tracer.run(x, exact=False)
    missing = [n for n in layers if n not in got]
    if missing:
        raise LayerError(
            f"layer {missing[0]!r} is not called by the model's forward pass; pick a layer "
            "that runs"
        )
    if need_output:
        return got, _logits(out)
    return got, None


def _logits(out: Any) -> Tensor:
    """The model's output as class scores ``[N, classes]`` (the first element of a tuple)."""
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        out = out[0]
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(
            f"the model must return class scores [N, classes], got {shape}; wrap it so that "
            "its forward returns logits"
        )
    return out.detach()


def parametric_layers(
    model: nn.Module, x: Tensor, upto: str | None = None, tensor_only: bool = False
) -> list[str]:
    """Submodules with their own parameters, in forward order, that run before ``upto``'s output
    is made (all of them when ``upto`` is None); with ``tensor_only``, only those that return
    one tensor (not an RNN's ``(output, state)`` tuple) and run once."""
    modules = module_names(model)
    order, shapes, calls = forward_trace(model, x)
    if tensor_only:
        order = [n for n in order if shapes.get(n) is not None and calls[n] == 1]
    if upto is not None:
        if upto not in order:
            raise LayerError(
                f"layer {upto!r} is not called by the model's forward pass; pick one that runs"
            )
        # Everything that finished before upto, plus upto's own submodules (which finish
        # before it); modules whose forward encloses upto's finish after it and are excluded
        # unless they own parameters used before (a container's own parameters are rare).
        order = order[: order.index(upto) + 1]
    return [n for n in order if any(True for _ in modules[n].parameters(recurse=False))]


def default_layers(model: nn.Module, x: Tensor) -> tuple[str, ...]:
    """The paper's "first" and "top" layers: the first parametric layer's output and the last
    hidden layer (the parametric layer before the output layer); one name when they coincide."""
    params = parametric_layers(model, x, tensor_only=True)
    if not params:
        raise LayerError(
            "the model has no layers with parameters, so there is no first or top layer; pass "
            "layers=(...) explicitly"
        )
    first = params[0]
    top = params[-2] if len(params) >= 2 else params[-1]
    return (first,) if first == top else (first, top)


def output_layer(model: nn.Module, x: Tensor) -> str:
    """The last submodule whose output is ``[N, C]`` class scores (the logits layer)."""
    order, shapes, calls = forward_trace(model, x)
    for name in reversed(order):
        shape = shapes.get(name)
        if shape is not None and len(shape) == 1 and calls[name] == 1:
            return name
    raise LayerError(
        "found no layer that outputs [N, C] vectors (class scores); pass layer=... explicitly"
    )


def batches(n: int, size: int) -> Iterator[slice]:
    """Slices ``[start, start + size)`` covering ``range(n)``."""
    if size < 1:
        raise InputError(f"batch_size must be a positive integer, got {size}")
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def pick_images(dataset: Any, n: int) -> tuple[Tensor, Tensor | None, list[int]]:
    """``n`` images spread evenly over ``dataset`` (datasets are often sorted by class).

    Returns:
        ``(images [n, C, H, W], labels [n] or None when items carry no label, indices)``.
    """
    try:
        total = len(dataset)
    except TypeError:
        raise InputError(
            f"dataset must support len() and indexing, got {type(dataset).__name__}"
        ) from None
    if total == 0:
        raise InputError("the dataset is empty; pass one with images")
    n = min(int(n), total)
    idx = torch.linspace(0, total - 1, n).round().long().unique().tolist()
    images: list[Tensor] = []
    labels: list[int | None] = []
    for i in idx:
        item = dataset[i]
        if isinstance(item, Tensor):
            images.append(item)
            labels.append(None)
        elif isinstance(item, (tuple, list)) and item and isinstance(item[0], Tensor):
            images.append(item[0])
            labels.append(int(item[1]) if len(item) > 1 else None)
        else:
            raise InputError(
                f"dataset items must be image tensors or (image, label) pairs, got "
                f"{type(item).__name__}"
            )
    x = torch.stack(images)
    y = None if any(v is None for v in labels) else torch.tensor(labels, dtype=torch.long)
    return x, y, idx
