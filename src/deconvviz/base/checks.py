"""Input checks shared by every layer: images, labels, layer names, channel lists, the model's
device and dtype.

Rank 0 (base): imports only torch and :mod:`deconvviz.base.errors`. Each check returns the value in
the form the library computes with, or raises a :class:`deconvviz.base.errors.DeconvvizError` whose
message names the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz.base.errors import ClassNamesWarning, InputError, LayerError, unknown_name

__all__ = [
    "batch_images",
    "call_key",
    "check_batch",
    "check_channels",
    "check_device",
    "check_images",
    "check_labels",
    "check_layer",
    "check_layers",
    "check_model",
    "check_positive_int",
    "class_label",
    "class_names_for",
    "conv_layer_names",
    "default_layers",
    "model_device_dtype",
    "module_names",
    "split_call",
    "to_model",
]


def check_positive_int(name: str, value: Any, *, or_none: bool = False) -> None:
    """Refuse ``value`` unless it is an ``int`` >= 1 (``True``/``False`` refused too), or
    ``None`` when ``or_none``: ``InputError("NAME must be a positive integer[ or None], got
    VALUE")``."""
    if or_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a positive integer or None" if or_none else "a positive integer"
        raise InputError(f"{name} must be {allowed}, got {value!r}")


def check_model(model: Any) -> nn.Module:
    """``model`` if it is a ``torch.nn.Module``; an :class:`InputError` otherwise."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def model_device_dtype(
    model: nn.Module, like: Tensor | None = None
) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype the model computes in.

    Those of its first floating parameter, else of its first floating buffer; a model with
    neither gives ``like``'s (a tensor to fall back to), else CPU and float32.

    Raises:
        InputError: ``model`` is not a ``torch.nn.Module``.
    """
    check_model(model)
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    if like is not None:
        return like.device, like.dtype
    return torch.device("cpu"), torch.float32


@dataclass(frozen=True)
class Resolved:
    """A public call's model, checked once at its door, with where it computes and the layers
    it chose: the functions it is handed to check none of it again."""

    model: nn.Module
    device: torch.device
    dtype: torch.dtype
    layers: tuple[str, ...] = ()
    precision: str = "fp32"


def resolve_model(model: Any, layers: Sequence[str] = (), precision: str = "fp32") -> Resolved:
    """``model`` checked (an :class:`InputError` otherwise) and resolved to a :class:`Resolved`;
    ``layers`` and ``precision`` are the caller's, already checked."""
    device, dtype = model_device_dtype(model)
    return Resolved(model, device, dtype, tuple(layers), precision)


def to_model(x: Tensor, model: nn.Module) -> Tensor:
    """``x`` on the model's device, and in its floating dtype when ``x`` is floating point
    (integer inputs, e.g. token ids, keep their dtype)."""
    device, dtype = model_device_dtype(model, like=x)
    return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)


def check_batch(x: Any, what: str = "images", *, finite: bool = True) -> Tensor:
    """``x`` itself if it is a non-empty floating-point tensor ``[N, C, H, W]`` (with no NaN or
    infinite value when ``finite``); it is not moved (see :func:`check_images`).

    Raises:
        InputError: naming ``what`` and the fix (e.g. ``x.unsqueeze(0)`` for one image).
    """
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor [N, C, H, W], got {type(x).__name__}")
    if x.dim() == 3:
        raise InputError(
            f"{what} must have shape [N, C, H, W], got {tuple(x.shape)}; add a batch "
            "dimension with x.unsqueeze(0)"
        )
    if x.dim() != 4:
        raise InputError(f"{what} must have shape [N, C, H, W], got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{what} is an empty batch (N = 0); pass at least one image")
    if not x.is_floating_point():
        raise InputError(
            f"{what} must be a floating-point tensor, got {x.dtype}; scale to the model's input "
            "range with x.float() / 255 (or as the model expects)"
        )
    if finite and not bool(torch.isfinite(x).all()):
        raise InputError(f"{what} contain NaN or infinite values")
    return x


def check_device(x: Tensor, model: nn.Module, what: str = "x") -> Tensor:
    """``x`` itself if it is in the dtype and on the device of the model's parameters (a model
    without parameters takes any); unlike :func:`check_images`, nothing is converted: the
    engine never copies a caller's batch behind their back.

    Raises:
        InputError: naming the conversion or the move that fixes it.
    """
    param = next(model.parameters(), None)
    if param is None:
        return x
    if param.dtype != x.dtype:
        raise InputError(
            f"{what} is {x.dtype} but the model's parameters are {param.dtype}; convert one of "
            f"them ({what}.to({param.dtype}) or model.to({x.dtype}))"
        )
    if param.device != x.device:
        raise InputError(
            f"{what} is on {x.device} but the model is on {param.device}; move {what} with "
            f"{what}.to({str(param.device)!r})"
        )
    return x


def check_images(model: nn.Module, images: Any, what: str = "images") -> Tensor:
    """``images`` (checked by :func:`check_batch`) as a float tensor ``[N, C, H, W]`` on the
    model's device and dtype, detached."""
    images = check_batch(images, what)
    device, dtype = model_device_dtype(model)
    return images.detach().to(device=device, dtype=dtype)


def check_labels(labels: Any, n: int) -> Tensor:
    """``labels`` as an int64 CPU tensor ``[n]``."""
    try:
        t = torch.as_tensor(labels)
    except (TypeError, ValueError):
        raise InputError(f"labels must be a sequence of class indices, got {labels!r}") from None
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1 or t.shape[0] != n:
        raise InputError(f"labels must be [N] = [{n}] class indices, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"labels must be integers (class indices), got {t.dtype}")
    return t.to(torch.int64).cpu()


def module_names(model: nn.Module) -> dict[str, nn.Module]:
    """Named submodules (``named_modules()`` spelling), the model itself excluded."""
    return {name: m for name, m in model.named_modules() if m is not model}


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of the 2-D convolution layers of ``model`` (``named_modules()`` order): the one
    definition of the default layers of every dataset pipeline (scan, reconstruct, the report,
    the atlas)."""
    return [name for name, m in model.named_modules() if name and isinstance(m, nn.Conv2d)]


def default_layers(model: nn.Module, what: str = "scan") -> list[str]:
    """:func:`conv_layer_names`, or a :class:`LayerError` when the model has none (``what``:
    the job, for the message)."""
    names = conv_layer_names(model)
    if not names:
        raise LayerError(
            f"{type(model).__name__} has no Conv2d layers to {what} by default; name the "
            "layers to use: --layer NAME (layers=[...] in Python)"
        )
    return names


def check_layers(model: nn.Module, layers: Sequence[str]) -> tuple[str, ...]:
    """Validate layer names against the model's submodules."""
    if isinstance(layers, str):
        layers = (layers,)
    try:
        names = tuple(layers)
    except TypeError:
        raise LayerError(f"layers must be a list of layer names, got {layers!r}") from None
    if not names:
        raise LayerError("layers is empty; name at least one layer (as named_modules() spells it)")
    known = module_names(model)
    for name in names:
        if not isinstance(name, str):
            raise LayerError(f"layer names must be strings, got {name!r}")
        if name not in known:
            raise LayerError(unknown_name("layer", name, list(known)))
    if len(set(names)) != len(names):
        raise LayerError(f"layers {list(names)} repeat a name; give each layer once")
    return names


def call_key(name: str, call: int) -> str:
    """``"name:call"``: how a call of a module run several times per pass is named."""
    return f"{name}:{call}"


def split_call(layer: str) -> tuple[str, int | None]:
    """``"layer1.0.relu:1"`` -> ``("layer1.0.relu", 1)``; a plain name -> ``(name, None)``."""
    name, sep, call = layer.rpartition(":")
    if sep and name and call.isdigit():
        return name, int(call)
    return layer, None


def check_layer(model: nn.Module, name: Any, *, calls: bool = False) -> nn.Module:
    """The submodule ``name`` names (``named_modules()`` spelling, the model itself excluded).

    Args:
        calls: accept ``"name:N"`` (the N-th call of a module run several times per pass; which
            calls exist is the engine's to check) and return ``name``'s module.

    Raises:
        LayerError: unknown name, listing close matches.
    """
    known = module_names(model)
    base = split_call(name)[0] if calls and isinstance(name, str) else name
    if not isinstance(base, str) or base not in known:
        raise LayerError(unknown_name("layer", str(name), list(known)))
    return known[base]


def check_layer_calls(model: nn.Module, layers: Sequence[Any]) -> list[str]:
    """``layers`` in order, repeats dropped, each naming a submodule (``"name:N"``, the N-th
    call of a module run several times per pass, is accepted: which calls exist is the
    engine's to check); a :class:`LayerError` listing close matches otherwise."""
    known = module_names(model)
    out: list[str] = []
    for name in layers:
        base = split_call(name)[0] if isinstance(name, str) else name
        if not isinstance(base, str) or base not in known:
            raise LayerError(unknown_name("layer", str(name), list(known)))
        if name not in out:
            out.append(name)
    return out


def check_channels(
    channel: Any, n_channels: int, layer: str | None = None, *, what: str = "channel"
) -> tuple[list[int], bool]:
    """``(channels, single)``: ``channel`` (an int, a 0-d tensor, or a sequence of ints) as a
    list of channel indices of a layer with ``n_channels`` channels, and whether it was one int.

    Args:
        layer: named in the out-of-range message when given.
        what: the argument's name in the messages.

    Raises:
        InputError: not ints, an empty list, or a channel outside ``0..n_channels - 1``.

    Example:
        >>> check_channels(3, 8), check_channels([0, 7], 8)
        (([3], True), ([0, 7], False))
    """
    single = isinstance(channel, int) or (isinstance(channel, Tensor) and channel.dim() == 0)
    try:
        chans = [int(channel)] if single else [int(c) for c in channel]
    except (TypeError, ValueError):
        raise InputError(f"{what} must be an int or a list of ints, got {channel!r}") from None
    if not chans:
        raise InputError(f"{what} is an empty list; give at least one channel")
    bad = [c for c in chans if not 0 <= c < n_channels]
    if bad:
        owner = "the layer" if layer is None else repr(layer)
        raise InputError(
            f"channel {bad[0]} is out of range: {owner} has {n_channels} channels "
            f"(0..{n_channels - 1})"
        )
    return chans, single


def class_label(k: int, names: Sequence[str] | None) -> str:
    """How a figure or a message names output ``k``: its class name where ``names`` has one,
    else ``"class k"`` (so that ``p(class 124)`` reads as a class, not a number)."""
    return names[k] if names is not None and 0 <= k < len(names) else f"class {k}"


def class_names_for(names: Sequence[str] | None, outputs: int | None) -> list[str] | None:
    """``names`` (a dataset's classes) when they can name a model's ``outputs`` (its number of
    classes; ``None``: not known); otherwise ``None``, with a :class:`ClassNamesWarning`, so that
    a 3-class folder never labels output 0 of a 1000-class model."""
    if names is None:
        return None
    names = [str(n) for n in names]
    if outputs is not None and len(names) != outputs:
        warnings.warn(
            f"the dataset names {len(names)} classes but the model has {outputs} outputs; "
            "outputs are shown by number, not by the dataset's class names (give a dataset "
            "whose classes are the model's, in its order)",
            ClassNamesWarning,
            stacklevel=3,
        )
        return None
    return names


def batch_images(batch: Any) -> Tensor:
    """The image tensor of a loader batch or dataset item: a tensor, an ``(images, labels, ...)``
    sequence, or a dict with key ``image``, ``images``, ``x`` or ``input``."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("image", "images", "x", "input"):
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    raise InputError(
        f"got a {type(batch).__name__} where images were expected: batches and dataset items "
        "must be image tensors or (images, labels) pairs"
    )
