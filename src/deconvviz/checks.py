"""Input checks shared by every layer: images, labels, layer names, the model's device and dtype.

Rank 0 (base): imports only torch and :mod:`deconvviz.errors`. Each check returns the value in
the form the library computes with, or raises a :class:`deconvviz.errors.DeconvvizError` whose
message names the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz.errors import InputError, LayerError, unknown_name

__all__ = [
    "check_images",
    "check_labels",
    "check_layers",
    "model_device_dtype",
    "module_names",
    "to_model",
]


def model_device_dtype(
    model: nn.Module, like: Tensor | None = None
) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype the model computes in.

    Those of its first floating parameter, else of its first floating buffer; a model with
    neither gives ``like``'s (a tensor to fall back to), else CPU and float32.

    Raises:
        InputError: ``model`` is not a ``torch.nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(model).__name__}; pass the model")
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    if like is not None:
        return like.device, like.dtype
    return torch.device("cpu"), torch.float32


def to_model(x: Tensor, model: nn.Module) -> Tensor:
    """``x`` on the model's device, and in its floating dtype when ``x`` is floating point
    (integer inputs, e.g. token ids, keep their dtype)."""
    device, dtype = model_device_dtype(model, like=x)
    return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)


def check_images(model: nn.Module, images: Any, what: str = "images") -> Tensor:
    """``images`` as a float tensor ``[N, C, H, W]`` on the model's device and dtype."""
    if not isinstance(images, Tensor):
        raise InputError(f"{what} must be a torch.Tensor [N, C, H, W], got {type(images).__name__}")
    if images.dim() == 3:
        raise InputError(
            f"{what} must have shape [N, C, H, W], got {tuple(images.shape)}; add a batch "
            "dimension with x.unsqueeze(0)"
        )
    if images.dim() != 4:
        raise InputError(f"{what} must have shape [N, C, H, W], got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise InputError(f"{what} is empty (N = 0); pass at least one image")
    if not images.is_floating_point():
        raise InputError(
            f"{what} must be floating point, got {images.dtype}; scale to the model's input range "
            "with x.float() / 255 (or as the model expects)"
        )
    if not bool(torch.isfinite(images).all()):
        raise InputError(f"{what} contain NaN or infinite values")
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
