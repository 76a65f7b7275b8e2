"""The receptive-field op catalogue: which torch calls keep every position's map (elementwise,
per-channel and batch/channel-only ops), which compose a window (convolutions, pooling, strided
slices) and with what kernel, stride, padding and dilation, which write in place, and the
arithmetic of the maps. :class:`~deconvviz.engine.receptive.RFTracker` applies it to every call
of a forward pass.

A map is :data:`Meta` ``(jump_h, jump_w, start_h, start_w, end_h, end_w)``, or :data:`UNKNOWN`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from deconvviz.base._util import pair


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()

# (jump_h, jump_w, start_h, start_w, end_h, end_w)
Meta = tuple[int, int, int, int, int, int]

CONV = {"conv2d"}
MAXPOOL = {"max_pool2d", "max_pool2d_with_indices", "_max_pool2d"}
AVGPOOL = {"avg_pool2d"}
# Ops that act on each spatial position independently (or only mix channels / batch).
LOCAL = {
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
    "__setitem__",
}
# Ops whose 1-d tensor arguments are per-channel parameters, not broadcast along W.
PER_CHANNEL = {"batch_norm", "prelu"}
CAT = {"cat", "concat"}


def tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from tensors(o)


Pair = tuple[int, int]


def window(name: str, args: tuple, kwargs: dict) -> tuple[Pair, Pair, Pair, Pair]:
    """``(kernel, stride, padding, dilation)`` of a convolution or pooling call."""
    if name not in CONV:
        kernel = pair(arg(args, kwargs, 1, "kernel_size", None), default=1)
        stride = pair(arg(args, kwargs, 2, "stride", None) or kernel, default=1)
        padding = pair(arg(args, kwargs, 3, "padding", 0), default=0)
        dilated = name in MAXPOOL
        dilation = pair(arg(args, kwargs, 4, "dilation", 1), default=1) if dilated else (1, 1)
        return kernel, stride, padding, dilation
    weight = arg(args, kwargs, 1, "weight", None)
    kernel = (int(weight.shape[-2]), int(weight.shape[-1]))
    stride = pair(arg(args, kwargs, 3, "stride", 1), default=1)
    dilation = pair(arg(args, kwargs, 5, "dilation", 1), default=1)
    pad_arg = arg(args, kwargs, 4, "padding", 0)
    if not isinstance(pad_arg, str):
        padding = pair(pad_arg, default=0)
    elif pad_arg == "valid":
        padding = (0, 0)
    else:  # 'same': PyTorch pads (total // 2) before
        padding = (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
    return kernel, stride, padding, dilation


_EMPTY_LO = 1 << 30


def window_support(
    lo: tuple[int, ...],
    hi: tuple[int, ...],
    n_out: int,
    kernel: int,
    stride: int,
    padding: int,
    dilation: int,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Along one dimension, the first and last input pixel each output position of a window op
    reads, from those of its input positions (padding reads nothing)."""
    n_in = len(lo)
    out_lo, out_hi = [], []
    for q in range(n_out):
        a, b = _EMPTY_LO, -1
        for t in range(kernel):
            i = q * stride - padding + t * dilation
            if 0 <= i < n_in and hi[i] >= lo[i]:
                a, b = min(a, lo[i]), max(b, hi[i])
        out_lo.append(a)
        out_hi.append(b)
    return tuple(out_lo), tuple(out_hi)


def compose(m: Meta, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Meta:
    """The map after a window op (convolution, pooling) applied to a tensor with map ``m``."""
    jh, jw, sh, sw, eh, ew = m
    return (
        jh * stride[0],
        jw * stride[1],
        sh - padding[0] * jh,
        sw - padding[1] * jw,
        eh + (dilation[0] * (kernel[0] - 1) - padding[0]) * jh,
        ew + (dilation[1] * (kernel[1] - 1) - padding[1]) * jw,
    )


def written_in_place(func: Any, args: tuple, kwargs: dict) -> Tensor | None:
    """The tensor an op writes into in place (``x.mul_(m)``, ``x[i] = v``, ``out=``), if any."""
    name = getattr(func, "__name__", "")
    out = kwargs.get("out")
    if isinstance(out, Tensor):
        return out
    first = args[0] if args else None
    if not isinstance(first, Tensor):
        return None
    in_place = (
        (name.endswith("_") and not name.startswith("__"))
        or name == "__setitem__"
        or (name.startswith("__i") and name.endswith("__") and name != "__index__")
        or bool(kwargs.get("inplace", False))
    )
    return first if in_place else None


def position_free(t: Tensor, per_channel: bool) -> bool:
    """Whether a constant ``t``, broadcast against an ``[N, C, H, W]`` result (aligned from the
    right), has the same value at every spatial position."""
    if t.dim() == 0 or (per_channel and t.dim() == 1):
        return True
    dims = [d for d in (-1, -2) if t.dim() >= -d and t.shape[d] > 1]
    if not dims:
        return True
    ref = t
    for d in dims:
        ref = ref.narrow(d, 0, 1)
    try:
        return bool((t == ref).all())  # NaN counts as varying
    except RuntimeError:
        return False


def sliced(m: Any, index: Any) -> Any:
    """The map after ``x[index]`` (``x`` with map ``m``) when the index takes every ``s``-th
    row and ``t``-th column from fixed offsets (``x[:, :, ::2, ::2]``, a ResNet shortcut):
    a position-independent subsampling, like a 1x1 window with stride ``(s, t)``; ``None`` for
    any other index (left to the other rules)."""
    if m is None or m is UNKNOWN:
        return None
    items = index if isinstance(index, tuple) else (index,)
    if items and items[-1] is Ellipsis:
        items = items[:-1]
    if len(items) not in (3, 4) or not all(isinstance(i, slice) for i in items):
        return None
    if any(i != slice(None) for i in items[:2]):
        return None
    spatial = [*items[2:], slice(None)][:2]
    steps = []
    for sl in spatial:
        start, step = sl.start or 0, 1 if sl.step is None else sl.step
        if not (isinstance(start, int) and isinstance(step, int)) or start < 0 or step < 1:
            return None  # a negative start counts from the end: depends on the size
        if sl.stop is not None and (not isinstance(sl.stop, int) or sl.stop < 0):
            return None
        steps.append((start, step))
    if all(step == 1 and start == 0 for start, step in steps):
        return None  # positions kept: the local rule's case
    (ah, sh), (aw, sw) = steps
    jh, jw, s0, s1, e0, e1 = m
    return (jh * sh, jw * sw, s0 + ah * jh, s1 + aw * jw, e0 + ah * jh, e1 + aw * jw)


def pads_channels_only(pads: Any) -> bool:
    """Whether ``F.pad``'s ``pad`` leaves W and H alone (its first four entries are 0)."""
    if not isinstance(pads, (list, tuple)) or len(pads) < 4 or len(pads) % 2:
        return False
    return all(isinstance(p, int) and p == 0 for p in pads[:4])


def keeps_positions(index: Any) -> bool:
    """Whether ``x[index]`` on an ``[N, C, H, W]`` tensor leaves the spatial dimensions alone
    (it selects along the batch or channel dimension only, with ints or slices; H and W are
    left out or taken whole with ``:`` or a trailing ``...``)."""
    items = index if isinstance(index, tuple) else (index,)
    if items and items[-1] is Ellipsis:
        items = items[:-1]
    if len(items) > 4:
        return False
    if not all(isinstance(i, (int, slice)) and not isinstance(i, bool) for i in items[:2]):
        return False
    return all(i == slice(None) for i in items[2:])


def arg(args: tuple, kwargs: dict, pos: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    if len(args) > pos:
        return args[pos]
    return default
