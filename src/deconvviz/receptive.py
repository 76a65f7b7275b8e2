"""Receptive fields, found by watching the forward pass.

While the engine runs a forward pass it follows every tensor that derives from the input and
keeps, per spatial dimension, an affine map from an output position ``p`` to the interval of
input pixels that can influence it: ``[p * jump + start, p * jump + end]`` (inclusive). Convolutions
and pooling compose the map; elementwise ops (ReLU, BatchNorm in eval, residual adds, channel
concatenations) take the union of their inputs' maps. Any op whose spatial behaviour is not
known (global pooling, flatten, resizing, a position-dependent constant) makes the map unknown,
and the engine then falls back to dense, full-image projections.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary


@dataclass(frozen=True)
class ReceptiveField:
    """Where in the input an activation at position ``(row, col)`` of a layer can look.

    Attributes:
        jump: input pixels between neighbouring positions of the layer, ``(rows, cols)``.
        start: offset of position 0's first input pixel (negative where padding is used).
        end: offset of position 0's last input pixel (inclusive).
        input_size: ``(H, W)`` of the input this was measured on.
    """

    jump: tuple[int, int]
    start: tuple[int, int]
    end: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        """Side lengths of one activation's receptive field, in input pixels (unclipped)."""
        return (self.end[0] - self.start[0] + 1, self.end[1] - self.start[1] + 1)

    def box(self, row: int, col: int, clip: bool = True) -> tuple[int, int, int, int]:
        """Input-pixel box ``(y0, x0, y1, x1)`` (half-open) seen by activation ``(row, col)``.

        Example:
            >>> rf = ReceptiveField((2, 2), (-2, -2), (5, 5), (28, 28))
            >>> rf.box(0, 0)
            (0, 0, 6, 6)
        """
        y0 = row * self.jump[0] + self.start[0]
        x0 = col * self.jump[1] + self.start[1]
        y1 = row * self.jump[0] + self.end[0] + 1
        x1 = col * self.jump[1] + self.end[1] + 1
        if clip:
            h, w = self.input_size
            y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        return (y0, x0, y1, x1)


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()

# (jump_h, jump_w, start_h, start_w, end_h, end_w)
_Meta = tuple[int, int, int, int, int, int]

_CONV = {"conv2d"}
_MAXPOOL = {"max_pool2d", "max_pool2d_with_indices", "_max_pool2d"}
_AVGPOOL = {"avg_pool2d"}
# Ops that act on each spatial position independently (or only mix channels / batch).
_LOCAL = {
    "add",
    "add_",
    "__add__",
    "__radd__",
    "__iadd__",
    "sub",
    "sub_",
    "__sub__",
    "__rsub__",
    "__isub__",
    "mul",
    "mul_",
    "__mul__",
    "__rmul__",
    "__imul__",
    "div",
    "div_",
    "__truediv__",
    "__itruediv__",
    "neg",
    "__neg__",
    "relu",
    "relu_",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_min_",
    "batch_norm",
    "dropout",
    "dropout2d",
    "feature_dropout",
    "alpha_dropout",
    "cat",
    "concat",
    "contiguous",
    "clone",
    "to",
    "float",
    "double",
    "half",
    "type",
    "hardtanh",
    "hardtanh_",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "elu_",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "softplus",
    "mish",
    "hardswish",
    "hardsigmoid",
    "threshold",
    "threshold_",
    "relu6",
    "selu",
    "celu",
    "prelu",
    "abs",
    "exp",
    "log",
    "pow",
    "__pow__",
    "sqrt",
    "square",
    "requires_grad_",
    "detach",
    "__getitem__",
}


def _as_pair(v: Any, default: int) -> tuple[int, int]:
    if v is None:
        return (default, default)
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(i) for i in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


class RFTracker:
    """Follows the receptive-field map of every tensor derived from the input."""

    def __init__(self) -> None:
        self.meta: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.bytes_per_sample = 0  # size of every derived tensor made, per batch item

    def watch(self, x: Tensor) -> None:
        self.meta[x] = (1, 1, 0, 0, 0, 0) if x.dim() == 4 else UNKNOWN

    def field(self, t: Tensor, input_size: tuple[int, int]) -> ReceptiveField | None:
        m = self.meta.get(t)
        if m is None or m is UNKNOWN or t.dim() != 4:
            return None
        return ReceptiveField((m[0], m[1]), (m[2], m[3]), (m[4], m[5]), input_size)

    def update(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        ins = list(_tensors(args)) + list(_tensors(kwargs))
        metas = [self.meta.get(t) for t in ins]
        derived = [(t, m) for t, m in zip(ins, metas, strict=True) if m is not None]
        if not derived:
            return
        outs = list(_tensors(out))
        if not outs:
            return
        for o in outs:
            if o.dim() > 0:
                self.bytes_per_sample += o.numel() // max(o.shape[0], 1) * o.element_size()
        new = self._rule(func, args, kwargs, derived, ins, outs)
        for o in outs:
            self.meta[o] = new if (new is UNKNOWN or o.dim() == 4) else UNKNOWN

    def _rule(
        self, func: Any, args: tuple, kwargs: dict, derived: list, ins: list, outs: list
    ) -> Any:
        if any(m is UNKNOWN for _, m in derived):
            return UNKNOWN
        name = getattr(func, "__name__", "")
        first = args[0] if args else None
        out0 = outs[0]
        if out0.dim() != 4:
            return UNKNOWN
        if name in _CONV or name in _MAXPOOL or name in _AVGPOOL:
            if not isinstance(first, Tensor) or self.meta.get(first) is None:
                return UNKNOWN  # e.g. a convolution whose *weight* depends on the input
            m = self.meta[first]
            if name in _CONV:
                weight = args[1] if len(args) > 1 else kwargs["weight"]
                if self.meta.get(weight) is not None:
                    return UNKNOWN
                kernel = tuple(int(k) for k in weight.shape[-2:])
                stride = _as_pair(_arg(args, kwargs, 3, "stride", 1), 1)
                dilation = _as_pair(_arg(args, kwargs, 5, "dilation", 1), 1)
                pad_arg = _arg(args, kwargs, 4, "padding", 0)
                if isinstance(pad_arg, str):
                    if pad_arg == "valid":
                        padding = (0, 0)
                    else:  # 'same': PyTorch pads (total // 2) before
                        padding = (
                            dilation[0] * (kernel[0] - 1) // 2,
                            dilation[1] * (kernel[1] - 1) // 2,
                        )
                else:
                    padding = _as_pair(pad_arg, 0)
            else:
                kernel = _as_pair(_arg(args, kwargs, 1, "kernel_size", None), 1)
                stride = _as_pair(_arg(args, kwargs, 2, "stride", None) or kernel, 1)
                padding = _as_pair(_arg(args, kwargs, 3, "padding", 0), 0)
                dilation = (
                    _as_pair(_arg(args, kwargs, 4, "dilation", 1), 1)
                    if name in _MAXPOOL
                    else (1, 1)
                )
            jh, jw, sh, sw, eh, ew = m
            return (
                jh * stride[0],
                jw * stride[1],
                sh - padding[0] * jh,
                sw - padding[1] * jw,
                eh + (dilation[0] * (kernel[0] - 1) - padding[0]) * jh,
                ew + (dilation[1] * (kernel[1] - 1) - padding[1]) * jw,
            )
        if name not in _LOCAL:
            return UNKNOWN
        if name == "__getitem__" and not _keeps_positions(args[1] if len(args) > 1 else None):
            return UNKNOWN
        hw = tuple(out0.shape[-2:])
        spatial = [m for t, m in derived if t.dim() == 4 and tuple(t.shape[-2:]) == hw]
        if len(spatial) != len(derived) or not spatial:
            return UNKNOWN
        # A constant that varies over positions (a positional embedding, say) breaks the
        # translation equivariance the crops rely on.
        for t in ins:
            if (
                self.meta.get(t) is None
                and t.dim() >= 2
                and tuple(t.shape[-2:]) == hw
                and hw != (1, 1)
            ):
                return UNKNOWN
        jumps = {(m[0], m[1]) for m in spatial}
        if len(jumps) != 1:
            return UNKNOWN
        ((jh, jw),) = jumps
        return (
            jh,
            jw,
            min(m[2] for m in spatial),
            min(m[3] for m in spatial),
            max(m[4] for m in spatial),
            max(m[5] for m in spatial),
        )


def _keeps_positions(index: Any) -> bool:
    """Whether ``x[index]`` on an ``[N, C, H, W]`` tensor leaves the spatial dimensions alone
    (it selects along the batch or channel dimension only, with ints or slices)."""
    items = index if isinstance(index, tuple) else (index,)
    return len(items) <= 2 and all(isinstance(i, (int, slice)) for i in items)


def _arg(args: tuple, kwargs: dict, pos: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    if len(args) > pos:
        return args[pos]
    return default


def receptive_field(
    model: torch.nn.Module, layer: str, input_shape: tuple[int, ...]
) -> ReceptiveField | None:
    """The receptive field of ``layer``'s activations for inputs of ``input_shape``.

    Returns ``None`` when the layer's output is not a spatial map whose receptive field can be
    followed (after a flatten or a global pooling, say).

    Example:
        >>> rf = receptive_field(model, "conv2", (1, 1, 28, 28))  # doctest: +SKIP
        >>> rf.size, rf.jump                                      # doctest: +SKIP
        ((14, 14), (2, 2))
    """
    from deconvviz.engine import attach

    with attach(model, warn=False) as dn:
        return dn.receptive_field(layer, input_shape)
