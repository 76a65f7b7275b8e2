"""Convolution filters: per-filter RMS, dead filters, and the paper's RMS renormalisation.

Zeiler & Fergus (2014, Sec. 3) "renormalize each filter in the convolutional layers whose RMS
value exceeds a fixed radius of 1e-1 to this fixed radius", after every update, so that no
filter dominates. :func:`renormalise_` does that in place; :class:`RenormaliseHook` does it as
a training callback ``cb(iteration, model)`` or as an optimizer step hook.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from deconvviz.base.checks import check_positive_int
from deconvviz.base.errors import InputError, LayerError, unknown_name

__all__ = [
    "conv_layers",
    "filter_weight",
    "filter_rms",
    "dead_filters",
    "filter_summary",
    "renormalise_",
    "RenormaliseHook",
]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def conv_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The (non-transposed) convolution layers of ``model`` by ``named_modules()`` name.

    The model itself is included under the name ``""`` when it is a convolution.
    """
    return {name: m for name, m in model.named_modules() if isinstance(m, _CONV_TYPES)}


def filter_weight(weight: Tensor | nn.Module) -> Tensor:
    """The filters ``[out, in, *kernel]`` of a convolution layer, or a weight tensor, detached.

    Args:
        weight: a ``Conv1d/2d/3d`` module or its weight tensor (at least 2-D, filters along
            the first dimension).

    Returns:
        The detached weight tensor (not a copy: do not modify it).
    """
    if isinstance(weight, nn.Module):
        if not isinstance(weight, _CONV_TYPES):
            raise InputError(
                f"expected a convolution layer (Conv1d/Conv2d/Conv3d) or its weight tensor, "
                f"got a {type(weight).__name__}; pick a conv layer, e.g. model.conv1"
            )
        weight = weight.weight
    if not isinstance(weight, Tensor):
        raise InputError(f"expected a weight tensor or conv layer, got {type(weight).__name__}")
    if weight.dim() < 2 or weight.shape[0] == 0:
        raise InputError(
            f"expected filters [out, in, *kernel], got a weight of shape {tuple(weight.shape)}"
        )
    if not weight.is_floating_point():
        raise InputError(f"filter weights must be floating point, got {weight.dtype}")
    return weight.detach()


def filter_rms(weight: Tensor | nn.Module) -> Tensor:
    """Root mean square of each filter: ``sqrt(mean(w[o] ** 2))`` over its inputs and kernel.

    Args:
        weight: a conv layer or its weight ``[out, in, *kernel]``.

    Returns:
        ``[out]`` RMS per output filter (same dtype and device as the weight).

    Example:
        >>> filter_rms(torch.full((2, 1, 3, 3), 0.5))
        tensor([0.5000, 0.5000])
    """
    w = filter_weight(weight)
    return w.reshape(w.shape[0], -1).pow(2).mean(dim=1).sqrt()


def dead_filters(weight: Tensor | nn.Module, tol: float = 1e-6) -> Tensor:
    """Indices of the filters whose RMS is at most ``tol`` (near-zero norm: they see nothing).

    Args:
        weight: a conv layer or its weight ``[out, in, *kernel]``.
        tol: absolute RMS threshold (non-negative).

    Returns:
        ``[k]`` long tensor of filter indices, ascending (on the CPU).
    """
    if not tol >= 0:
        raise InputError(f"tol must be a non-negative number, got {tol!r}")
    rms = filter_rms(weight)
    return (rms <= tol).nonzero().flatten().cpu()


def _select(model: nn.Module, layers: list[str] | None) -> dict[str, nn.Module]:
    convs = conv_layers(model)
    if layers is None:
        return convs
    chosen = {}
    for name in layers:
        if name not in convs:
            modules = dict(model.named_modules())
            if name in modules:
                raise LayerError(
                    f"layer {name!r} is a {type(modules[name]).__name__}, not a convolution; "
                    f"renormalisation applies to conv layers: {sorted(convs)}"
                )
            raise LayerError(unknown_name("conv layer", name, convs))
        chosen[name] = convs[name]
    return chosen


def renormalise_(
    module: nn.Module, radius: float = 0.1, layers: list[str] | None = None
) -> dict[str, int]:
    """Scale every conv filter whose RMS exceeds ``radius`` back to RMS ``radius``, in place.

    Filters with RMS at most ``radius`` are left untouched (bit for bit); the others are
    multiplied by ``radius / rms``, keeping their direction. Biases are not changed. Safe to call
    on a model that is training: the update is done under ``torch.no_grad()``.

    Args:
        module: a conv layer or a model containing conv layers.
        radius: the fixed RMS radius (the paper uses 0.1).
        layers: names of the conv layers to renormalise (default: all of them).

    Returns:
        ``{layer name: number of filters scaled}`` for every layer considered.

    Example:
        >>> conv = torch.nn.Conv2d(1, 2, 3)
        >>> with torch.no_grad():
        ...     conv.weight[0] = 1.0
        ...     conv.weight[1] = 0.01
        >>> renormalise_(conv, radius=0.1)  # the conv itself is named ''
        {'': 1}
        >>> [round(v, 6) for v in filter_rms(conv).tolist()]
        [0.1, 0.01]
    """
    if isinstance(radius, bool) or not isinstance(radius, int | float) or not radius > 0:
        raise InputError(f"radius must be a positive number, got {radius!r}")
    chosen = _select(module, layers)
    if not chosen:
        raise LayerError(
            f"{type(module).__name__} has no Conv1d/Conv2d/Conv3d layers to renormalise"
        )
    counts: dict[str, int] = {}
    with torch.no_grad():
        for name, conv in chosen.items():
            w = conv.weight
            assert isinstance(w, Tensor)
            rms = filter_rms(w)
            over = rms > radius
            counts[name] = int(over.sum())
            if counts[name]:
                scale = torch.where(over, radius / rms, torch.ones_like(rms))
                w[over] = w[over] * scale[over].view(-1, *([1] * (w.dim() - 1)))
    return counts


class RenormaliseHook:
    """The paper's filter renormalisation as a training callback.

    Call it as ``cb(iteration, model)`` after each optimizer step (the trainer's callback
    convention), or let it run after every ``optimizer.step()`` with :meth:`register`.

    Args:
        radius: the RMS radius (default 0.1, as in the paper).
        every: renormalise every ``every`` iterations (default: each one).
        layers: conv layer names (default: all conv layers).

    Attributes:
        calls: how many times it renormalised.
        scaled: total filters scaled so far, per layer.
        last: the counts of the most recent renormalisation.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=10.0)
        >>> cb = RenormaliseHook(radius=0.1)
        >>> for it in range(3):
        ...     opt.zero_grad()
        ...     model(torch.randn(8, 1, 8, 8)).square().mean().backward()
        ...     opt.step()
        ...     _ = cb(it, model)
        >>> bool(filter_rms(model[0]).max() <= 0.1 + 1e-6)
        True
    """

    def __init__(self, radius: float = 0.1, every: int = 1, layers: list[str] | None = None):
        if isinstance(radius, bool) or not isinstance(radius, int | float) or not radius > 0:
            raise InputError(f"radius must be a positive number, got {radius!r}")
        check_positive_int("every", every)
        self.radius = float(radius)
        self.every = every
        self.layers = layers
        self.calls = 0
        self.scaled: dict[str, int] = {}
        self.last: dict[str, int] = {}

    def __call__(self, iteration: int, model: nn.Module) -> dict[str, int]:
        """Renormalise ``model`` if ``iteration`` is due; returns the counts (empty if not due)."""
        if iteration % self.every != 0:
            return {}
        self.last = renormalise_(model, self.radius, self.layers)
        self.calls += 1
        for name, k in self.last.items():
            self.scaled[name] = self.scaled.get(name, 0) + k
        return self.last

    def register(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> RemovableHandle:
        """Run after every ``optimizer.step()``; returns a handle whose ``remove()`` stops it."""
        step = [0]

        def hook(_opt: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
            self(step[0], model)
            step[0] += 1

        return optimizer.register_step_post_hook(hook)

    def __repr__(self) -> str:
        return f"RenormaliseHook(radius={self.radius}, every={self.every}, layers={self.layers})"


def filter_summary(
    model: nn.Module, layers: list[str] | None = None, radius: float = 0.1, tol: float = 1e-6
) -> dict[str, dict[str, Any]]:
    """Per ``Conv2d`` layer: its weight shape, the RMS of each filter, the dead filters (RMS at
    or below ``tol``) and how many filters exceed the renormalisation ``radius``.

    Args:
        model: the model.
        layers: ``Conv2d`` layers by ``named_modules()`` name (default: every one), in order.
        radius: the renormalisation radius counted against.
        tol: RMS at or below which a filter counts as dead.

    Returns:
        ``{layer: {"shape", "rms", "dead", "over_radius"}}`` of plain (JSON-able) values.

    Raises:
        LayerError: a layer is unknown or not a ``Conv2d``, or the model has none.
    """
    convs = {k: m for k, m in conv_layers(model).items() if isinstance(m, nn.Conv2d)}
    if layers:
        modules = dict(model.named_modules())
        for layer in layers:
            if layer in convs:
                continue
            if layer in modules:
                raise LayerError(
                    f"layer {layer!r} is a {type(modules[layer]).__name__}, not a Conv2d; "
                    f"pick one of {sorted(convs)}"
                )
            raise LayerError(unknown_name("conv layer", layer, convs))
        convs = {layer: convs[layer] for layer in dict.fromkeys(layers)}
    if not convs:
        raise LayerError("the model has no Conv2d layers to draw")
    summary: dict[str, dict[str, Any]] = {}
    for name, conv in convs.items():
        rms = filter_rms(conv)
        summary[name] = {
            "shape": list(conv.weight.shape),
            "rms": rms.tolist(),
            "dead": dead_filters(conv, tol).tolist(),
            "over_radius": int((rms > radius).sum()),
        }
    return summary
