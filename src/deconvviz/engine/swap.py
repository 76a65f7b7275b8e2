"""The ReLU swap: a function mode that gives every ReLU call of a forward pass the rule's backward.

:class:`ReluSwap` sees every torch call of a pass (the :class:`~deconvviz.engine.tracer.Tracer`
enters it): it replaces each ReLU call -- however it is spelt, see
:func:`~deconvviz.engine.support.relu_form` -- by :class:`~deconvviz.engine.rules.RuleReLU`,
logs the activation calls (with or without a rule) and, when given a tracker, follows the
receptive field of every tensor derived from the input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from deconvviz.engine.receptive import RFTracker
from deconvviz.engine.rules import Rule, RuleReLU
from deconvviz.engine.support import NO_RULE_FUNCS, RELU_FUNCS, relu_form

__all__ = ["Event", "ReluSwap"]


@dataclass
class Event:
    """One activation call of a forward pass."""

    module: str  # innermost module running when the call happened ('' = the model itself)
    func: str
    supported: bool


class ReluSwap(TorchFunctionMode):
    """Sees every torch call of a forward pass: swaps ReLUs, logs activations, follows RFs.

    Args:
        rule: the backward of every swapped ReLU; ``None`` keeps the plain ReLU (passes
            without autograd).
        stack: names of the modules running now, innermost last (the tracer's ``stack``).
        tracker: follows receptive fields when given.
    """

    def __init__(self, rule: Rule | None, stack: list[str], tracker: RFTracker | None):
        super().__init__()
        self.rule = rule
        self.stack = stack
        self.tracker = tracker
        self.events: list[Event] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        form = relu_form(func, name, args, kwargs)
        if (form is not None and form[0] != "relu") or name in NO_RULE_FUNCS:
            if form is None or self._derived(args, kwargs):
                self._log(name, False)
            out = func(*args, **kwargs)
        elif form is not None:
            out = self._relu(func, name, form[1], form[2], args, kwargs)
        else:
            out = func(*args, **kwargs)
        if self.tracker is not None:
            self.tracker.update(func, args, kwargs, out)
        return out

    def _relu(
        self, func: Any, name: str, x: Tensor, inplace: bool, args: tuple, kwargs: dict
    ) -> Any:
        """A ReLU call: logged, and run with the rule's backward when autograd records it."""
        if func in RELU_FUNCS or self._derived(args, kwargs):
            self._log(name + ("_" if inplace and not name.endswith("_") else ""), True)
        if self.rule is not None and torch.is_grad_enabled() and x.requires_grad:
            return RuleReLU.apply(x, self.rule, inplace)
        return func(*args, **kwargs)

    def _derived(self, args: tuple, kwargs: dict) -> bool:
        """Whether a call reads a tensor that derives from the input (so it is on some path)."""
        for t in _tensor_args(args, kwargs):
            if t.requires_grad or (
                self.tracker is not None and self.tracker.meta.get(t) is not None
            ):
                return True
        return False

    def _log(self, func: str, supported: bool) -> None:
        self.events.append(Event(self.stack[-1] if self.stack else "", func, supported))


def _tensor_args(args: tuple, kwargs: dict) -> Iterator[Tensor]:
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, Tensor))
