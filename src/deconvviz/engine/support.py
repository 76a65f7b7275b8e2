"""The support catalogue: what each layer type and each activation call gets on the reverse path.

Used by the engine (which ReLU spellings it swaps, which activations have no rule), by
:func:`deconvviz.engine.summary.layer_table` and ``Deconvnet.summary`` (the reverse step of each
layer), and by the statistics (which calls are ReLUs). Imports only torch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NO_RULE_FUNCS",
    "RELU_FUNCS",
    "RELU_IN_PLACE",
    "RELU_OUT_OF_PLACE",
    "has_no_rule",
    "relu_form",
    "step_for",
]

#: The calls that are a ReLU whatever their arguments (``F.relu_`` is ``torch.relu_``).
RELU_OUT_OF_PLACE: frozenset[Any] = frozenset({F.relu, torch.relu, torch.Tensor.relu})
RELU_IN_PLACE: frozenset[Any] = frozenset({torch.relu_, torch.Tensor.relu_})
RELU_FUNCS: frozenset[Any] = RELU_OUT_OF_PLACE | RELU_IN_PLACE
# Calls that are a ReLU when their bound is exactly 0, and an activation without a rule otherwise.
_CLAMPS = {"clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_"}
_UPPER_CLAMPS = {"clamp_max", "clamp_max_"}
_MAXIMA = {"maximum", "max"}  # binary forms only: max(x, other)
_MINIMA = {"minimum", "min", "fmax", "fmin"}  # binary forms only
_THRESHOLDS = {"threshold", "threshold_", "_threshold"}
_RELU_LIKE = _CLAMPS | _UPPER_CLAMPS | _MAXIMA | _MINIMA | _THRESHOLDS
#: Activation functions (by ``__name__``) with no deconvnet rule: their plain gradient is used.
NO_RULE_FUNCS = {
    "tanh",
    "tanh_",
    "sigmoid",
    "sigmoid_",
    "gelu",
    "silu",
    "elu",
    "elu_",
    "selu",
    "celu",
    "leaky_relu",
    "leaky_relu_",
    "hardtanh",
    "hardtanh_",
    "softplus",
    "mish",
    "hardswish",
    "hardsigmoid",
    "prelu",
    "rrelu",
    "rrelu_",
    "logsigmoid",
    "softsign",
    "tanhshrink",
    "glu",
    "relu6",
    "softmax",
    "log_softmax",
    "layer_norm",
    "group_norm",
    "instance_norm",
    "local_response_norm",
}

_NO_RULE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Softplus,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LogSigmoid,
    nn.Softsign,
    nn.Tanhshrink,
    nn.GLU,
    nn.Threshold,
    nn.Softmax,
    nn.LogSoftmax,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RNNBase,
    nn.MultiheadAttention,
)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_PARAMETRIZATIONS: tuple[type[nn.Module], ...] = (torch.nn.utils.parametrize.ParametrizationList,)

# type -> reverse step, for the summary (first match wins; ReLU is described by the rule)
_STEPS: list[tuple[tuple[type[nn.Module], ...], str]] = [
    ((nn.ReLU,), "<relu>"),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "transposed filters (own weights, no bias)"),
    (
        (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d),
        "convolution with the same filters (its transpose)",
    ),
    ((nn.Linear,), "W^T (own weights, no bias)"),
    (
        (
            nn.MaxPool1d,
            nn.MaxPool2d,
            nn.MaxPool3d,
            nn.AdaptiveMaxPool1d,
            nn.AdaptiveMaxPool2d,
            nn.AdaptiveMaxPool3d,
        ),
        "unpool with the forward pass's switches (shared switches add)",
    ),
    (
        (
            nn.AvgPool1d,
            nn.AvgPool2d,
            nn.AvgPool3d,
            nn.AdaptiveAvgPool1d,
            nn.AdaptiveAvgPool2d,
            nn.AdaptiveAvgPool3d,
        ),
        "spread evenly over each window (transpose of averaging)",
    ),
    (
        (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
        "scale by gamma / sqrt(running_var + eps) (eval mode)",
    ),
    (
        (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout),
        "identity (eval mode)",
    ),
    ((nn.Flatten,), "unflatten"),
    ((nn.Unflatten,), "flatten"),
    ((nn.Identity,), "identity"),
    (
        (nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d),
        "gather at the switches (transpose of unpooling)",
    ),
    ((nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle), "the inverse rearrangement"),
    (
        (
            nn.ReflectionPad1d,
            nn.ReflectionPad2d,
            nn.ReflectionPad3d,
            nn.ReplicationPad1d,
            nn.ReplicationPad2d,
            nn.ReplicationPad3d,
        ),
        "transpose of padding (reflected/replicated pixels add back)",
    ),
    (
        (nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d),
        "crop (transpose of padding)",
    ),
    ((nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d), "transpose of upsampling"),
    (_NO_RULE_MODULES, "NO deconvnet rule: its plain gradient is used"),
    (_CONTAINERS, "its submodules' steps"),
]


# torchvision.ops layers that are linear (identity in eval mode): autograd is their exact transpose.
# Matched by name so that the engine does not import torchvision.
_TORCHVISION_LINEAR = {
    "Permute": "the inverse permutation",
    "StochasticDepth": "identity (eval mode)",
}


def step_for(module: nn.Module, relu_step: str) -> str:
    """The reverse step ``module`` gets (``relu_step``: how the rule describes ReLU's)."""
    if isinstance(module, nn.Threshold) and module.threshold == 0 and module.value == 0:
        return relu_step  # Threshold(0, 0) is a ReLU
    cls = type(module)
    if cls.__module__.startswith("torchvision.ops") and cls.__name__ in _TORCHVISION_LINEAR:
        return _TORCHVISION_LINEAR[cls.__name__]
    for types, step in _STEPS:
        if isinstance(module, types):
            return relu_step if step == "<relu>" else step
    if isinstance(module, _PARAMETRIZATIONS):
        return "computes a parametrized weight (off the signal's path)"
    if not any(True for _ in module.children()):
        return (
            "unknown type: its forward is traced (ReLU calls get the rule; other activations, "
            "custom autograd Functions and a nonlinear forward are reported) and autograd "
            "gives its reverse step"
        )
    return (
        "its submodules' steps; residual adds send the signal down every branch, "
        "concatenations split it"
    )


def has_no_rule(module: nn.Module) -> bool:
    """Whether ``module`` is an activation or layer type with no deconvnet rule."""
    return step_for(module, "").startswith("NO deconvnet rule")


def _is_zero(v: Any) -> bool:
    """A bound that is exactly 0: a number, or a constant tensor of zeros."""
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return v == 0
    if isinstance(v, Tensor):
        return not v.requires_grad and v.numel() > 0 and bool((v == 0).all())
    return False


def relu_form(func: Any, name: str, args: tuple, kwargs: dict) -> tuple[str, Any, bool] | None:
    """Whether a call is a ReLU spelt another way.

    Returns ``("relu", x, in_place)`` for ``clamp(x, min=0)``, ``x.clamp_min(0)``,
    ``torch.maximum(x, zeros)``, ``F.threshold(x, 0, 0)`` and their in-place forms;
    ``("other", None, False)`` for the same calls with any other bound (no deconvnet rule);
    ``None`` for everything else."""
    if func in RELU_OUT_OF_PLACE or func in RELU_IN_PLACE:
        inplace = func in RELU_IN_PLACE or bool(
            kwargs.get("inplace", args[1] if func is F.relu and len(args) > 1 else False)
        )
        return ("relu", args[0], inplace)
    if name not in _RELU_LIKE or not args or not isinstance(args[0], Tensor):
        return None
    x = args[0]
    inplace = name.endswith("_") or bool(kwargs.get("inplace", False))
    if name in _CLAMPS:
        lo = kwargs.get("min", args[1] if len(args) > 1 else None)
        hi = kwargs.get("max", args[2] if len(args) > 2 else None)
        if hi is None and _is_zero(lo):
            return ("relu", x, inplace)
        return ("other", None, False)
    if name in _UPPER_CLAMPS:
        return ("other", None, False)
    if name in _THRESHOLDS:
        th = kwargs.get("threshold", args[1] if len(args) > 1 else None)
        val = kwargs.get("value", args[2] if len(args) > 2 else None)
        inplace = inplace or bool(len(args) > 3 and args[3])
        if _is_zero(th) and _is_zero(val):
            return ("relu", x, inplace)
        return ("other", None, False)
    other = kwargs.get("other", args[1] if len(args) > 1 else None)
    if not isinstance(other, Tensor):
        return None  # torch.max(x), torch.max(x, dim): reductions, not activations
    if name in _MAXIMA:
        for a, b in ((x, other), (other, x)):
            if (
                _is_zero(b)
                and not _is_zero(a)
                and torch.broadcast_shapes(a.shape, b.shape) == a.shape
                and torch.result_type(a, b) == a.dtype
            ):
                return ("relu", a, False)
        if _is_zero(x) and _is_zero(other):
            return ("relu", x, False)
        return ("other", None, False)
    if name in _MINIMA:
        return ("other", None, False)
    return None
