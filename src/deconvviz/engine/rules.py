"""The reverse-path building blocks of a deconvnet, and the ReLU rules.

A deconvnet (Zeiler & Fergus 2014) maps a signal at a layer's output back towards the input:

========================  ===================================================================
forward layer             reverse step
========================  ===================================================================
max pooling               :func:`unpool2d` -- put each value at the forward pass's switch
ReLU                      :func:`rectify` -- ReLU applied to the reconstruction signal
convolution               :func:`transposed_conv2d` -- the layer's own filters, transposed
linear, BatchNorm (eval), the exact transpose of the forward op (which is what autograd
average pooling, flatten,  computes for it)
residual add, concat
========================  ===================================================================

Every linear step is exactly the autograd backward of its forward op, so the engine
(:mod:`deconvviz.engine.deconvnet`) lets autograd do them and replaces only the ReLU backward by
one of the rules registered here:

==============  =================================  ================================
rule            ReLU backward                      reference
==============  =================================  ================================
``deconvnet``   ``relu(g)``                        Zeiler & Fergus 2014
``gradient``    ``g * (x > 0)``                    Simonyan et al. 2013 (saliency)
``guided``      ``relu(g) * (x > 0)``              Springenberg et al. 2014
==============  =================================  ================================

Each rule is a :class:`Rule` object in one registry; a plugin adds its own with
:func:`register_rule` **at import time** (before the CLI builds its ``--rule`` choices, which
:func:`rule_names` lists when the command line is parsed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from deconvviz.base._util import pair
from deconvviz.base.errors import DeconvvizError, InputError, unknown_name

__all__ = [
    "ReluRule",
    "RULES",
    "Rule",
    "RuleReLU",
    "describe_rule",
    "get_rule",
    "register_rule",
    "rule_names",
    "rectify",
    "unpool2d",
    "transposed_conv2d",
    "uses_mask",
]

#: A ReLU backward function: ``fn(grad_output, forward_mask) -> grad_input`` where
#: ``forward_mask`` is ``x > 0`` for the ReLU's forward input ``x`` (``None`` for rules
#: registered with ``uses_mask=False``, which need not keep the forward pass's output).
ReluRule = Callable[[Tensor, Tensor | None], Tensor]


def rectify(signal: Tensor) -> Tensor:
    """The deconvnet's rectification: ReLU applied to the reconstruction signal itself.

    Unlike the gradient, it ignores where the forward pass's input was positive.

    Example:
        >>> rectify(torch.tensor([-1.0, 0.0, 2.0]))
        tensor([0., 0., 2.])
    """
    return torch.relu(signal)


def unpool2d(
    signal: Tensor, indices: Tensor, output_size: Sequence[int], *, kernel_size: int | None = None
) -> Tensor:
    """Unpool ``signal`` by placing each value at its switch (recorded max location).

    ``indices`` are the flat per-plane switch indices that ``F.max_pool2d(...,
    return_indices=True)`` returns. Where pooling windows overlap (AlexNet's 3x3 stride-2
    pooling), two outputs can share a switch; their values are **added**, which makes this the
    exact transpose of max pooling (``F.max_unpool2d`` would keep only one of them).

    Args:
        signal: ``[N, C, h, w]`` values at the pooled layer's output.
        indices: ``[N, C, h, w]`` switches from the forward pass.
        output_size: ``(H, W)`` (or ``(N, C, H, W)``) of the pooling layer's input.
        kernel_size: unused; accepted for symmetry with ``F.max_unpool2d``.

    Returns:
        ``[N, C, H, W]`` tensor, zero everywhere except at the switches.

    Example:
        >>> x = torch.tensor([[[[1.0, 3.0], [2.0, 0.0]]]])
        >>> y, idx = F.max_pool2d(x, 2, return_indices=True)
        >>> unpool2d(y, idx, (2, 2))
        tensor([[[[0., 3.],
                  [0., 0.]]]])
    """
    if signal.shape != indices.shape:
        raise InputError(
            f"unpool2d: signal {tuple(signal.shape)} and indices {tuple(indices.shape)} must have "
            "the same shape; pass the indices that max_pool2d returned for this very output"
        )
    if signal.dim() != 4:
        raise InputError(f"unpool2d expects [N, C, h, w] tensors, got {signal.dim()} dimensions")
    h_out, w_out = int(output_size[-2]), int(output_size[-1])
    n, c = signal.shape[:2]
    flat = signal.new_zeros(n, c, h_out * w_out)
    flat.scatter_add_(2, indices.reshape(n, c, -1), signal.reshape(n, c, -1))
    return flat.view(n, c, h_out, w_out)


def transposed_conv2d(
    signal: Tensor,
    weight: Tensor,
    output_size: Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """Apply the transposed filters of a convolution: the layer's own weights, no bias.

    This is the exact adjoint of ``F.conv2d(x, weight, stride=..., padding=..., ...)``: the
    result has the conv input's size ``output_size`` (the output padding that a strided
    convolution leaves ambiguous is resolved from it).

    Args:
        signal: ``[N, out_channels, h, w]`` signal at the convolution's output.
        weight: the convolution's weight ``[out_channels, in_channels / groups, kh, kw]``.
        output_size: ``(H, W)`` of the convolution's input.

    Returns:
        ``[N, in_channels, H, W]``.
    """
    stride_, padding_, dilation_ = (pair(v) for v in (stride, padding, dilation))
    h_out, w_out = int(output_size[-2]), int(output_size[-1])
    kh, kw = weight.shape[-2:]
    out_pad = []
    for size, s, p, d, k, n in zip(
        (h_out, w_out), stride_, padding_, dilation_, (kh, kw), signal.shape[-2:], strict=True
    ):
        natural = (n - 1) * s - 2 * p + d * (k - 1) + 1
        extra = size - natural
        if not 0 <= extra < max(s, d):
            raise InputError(
                f"transposed_conv2d: a signal of spatial size {tuple(signal.shape[-2:])} cannot "
                f"come from an input of size {(h_out, w_out)} with these stride/padding/kernel"
            )
        out_pad.append(extra)
    return F.conv_transpose2d(
        signal,
        weight,
        None,
        stride=stride_,
        padding=padding_,
        output_padding=tuple(out_pad),
        groups=groups,
        dilation=dilation_,
    )


# --------------------------------------------------------------------------- ReLU rules


@dataclass(frozen=True)
class Rule:
    """A ReLU backward rule of the reverse path.

    Attributes:
        name: how ``attach(model, rule=...)`` and ``--rule`` name it.
        backward: ``backward(grad_output, forward_mask) -> grad_input``.
        description: one line saying what the ReLU backward does (``Deconvnet.summary``).
        needs_mask: whether ``backward`` reads the forward mask ``x > 0``; when not, the engine
            does not keep the ReLU's output for the backward pass and passes ``None``.
    """

    name: str
    backward: ReluRule
    description: str
    needs_mask: bool = True

    def __call__(self, grad: Tensor, mask: Tensor | None) -> Tensor:
        return self.backward(grad, mask)


class RuleReLU(torch.autograd.Function):
    """ReLU forward (in place or not); backward by a :class:`Rule`.

    ``nn.ReLU(inplace=True)`` and ``relu_`` keep their in-place forward; the backward is the
    same for both."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: Rule, inplace: bool) -> Tensor:
        if inplace:
            out = x.relu_()
            ctx.mark_dirty(x)
        else:
            out = torch.relu(x)
        ctx.rule = rule
        if rule.needs_mask:
            ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        mask = ctx.saved_tensors[0] > 0 if ctx.saved_tensors else None
        return ctx.rule(grad, mask), None, None


def _deconvnet(grad: Tensor, mask: Tensor | None) -> Tensor:
    return torch.relu(grad)


def _gradient(grad: Tensor, mask: Tensor | None) -> Tensor:
    assert mask is not None
    return grad * mask


def _guided(grad: Tensor, mask: Tensor | None) -> Tensor:
    assert mask is not None
    return torch.relu(grad) * mask


#: The one registry: rule name -> :class:`Rule`.
RULES: dict[str, Rule] = {}


def register_rule(
    name: str | Rule,
    rule: ReluRule | None = None,
    description: str = "",
    *,
    uses_mask: bool = True,
) -> Rule:
    """Register a ReLU backward rule (duplicate names are refused); returns its :class:`Rule`.

    Either ``register_rule(Rule(...))`` or ``register_rule(name, fn, description,
    uses_mask=...)``. ``uses_mask=False`` declares that ``fn`` ignores the forward mask.
    Register at import time of your plugin, before ``attach`` or the CLI need the name.

    Example:
        >>> register_rule("abs", lambda g, m: g.abs(), "abs(g)", uses_mask=False)  # doctest: +SKIP
    """
    if isinstance(name, Rule):
        entry = name
    else:
        if rule is None:
            raise InputError("register_rule needs a backward: register_rule(name, fn, description)")
        entry = Rule(name, rule, description, uses_mask)
    if entry.name in RULES:
        raise DeconvvizError(
            f"a rule named {entry.name!r} is already registered; pick another name"
        )
    RULES[entry.name] = entry
    return entry


def rule_names() -> list[str]:
    """Names of the registered rules, in registration order."""
    return list(RULES)


def get_rule(name: str) -> Rule:
    """The rule registered under ``name`` (callable as ``rule(grad, mask)``)."""
    try:
        return RULES[name]
    except (KeyError, TypeError):
        raise InputError(unknown_name("rule", str(name), RULES)) from None


def uses_mask(rule: str | Rule) -> bool:
    """Whether ``rule`` (a :class:`Rule` or a registered name) needs the forward mask ``x > 0``."""
    return (rule if isinstance(rule, Rule) else get_rule(rule)).needs_mask


def describe_rule(name: str) -> str:
    """One line saying what the ReLU backward of rule ``name`` does."""
    return get_rule(name).description


register_rule("deconvnet", _deconvnet, "rectify: relu(signal) (Zeiler & Fergus)", uses_mask=False)
register_rule("gradient", _gradient, "gradient: signal * (forward input > 0)")
register_rule("guided", _guided, "guided backprop: relu(signal) * (forward input > 0)")
