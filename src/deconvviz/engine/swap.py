"""The ReLU swap: a function mode that gives every ReLU call of a forward pass the rule's backward.

:class:`ReluSwap` sees every torch call of a pass (the :class:`~deconvviz.engine.tracer.Tracer`
enters it): it replaces each ReLU call -- however it is spelt, see
:func:`~deconvviz.engine.support.relu_form` -- by :class:`~deconvviz.engine.rules.RuleReLU`,
logs the activation calls (with or without a rule) and, when given a tracker, follows the
receptive field of every tensor derived from the input.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakTensorKeyDictionary

from deconvviz.engine.receptive import RFTracker
from deconvviz.engine.rules import Rule, RuleReLU
from deconvviz.engine.support import NO_RULE_FUNCS, RELU_FUNCS, _is_zero, relu_form

__all__ = ["Event", "ReluSwap"]


@dataclass
class Event:
    """One activation call of a forward pass."""

    module: str  # innermost module running when the call happened ('' = the model itself)
    func: str
    supported: bool


#: Comparisons that make a rectifier's mask ``x > 0`` (``x >= 0`` too), and the casts a mask
#: may go through before it is used (``(x > 0).float()``).
_MASK_OPS = {"gt", "__gt__", "ge", "__ge__"}
_MASK_CASTS = {"float", "double", "half", "bfloat16", "to", "type_as", "type"}
_MUL = {"mul", "__mul__", "__rmul__", "multiply"}


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
        #: the pass records autograd (set by the engine): a ReLU seen while autograd is off
        #: is then inside a custom autograd.Function or a no_grad block, beyond the rule's reach
        self.recording = False
        #: while True, calls pass through untouched (the engine's own probing calls)
        self.paused = False
        #: every call of a pass that follows receptive fields: its name and how many of its
        #: tensor arguments derive from the input (to judge layers of unknown type)
        self.calls: list[tuple[str, int]] = []
        self.events: list[Event] = []
        #: modules (innermost running) whose forward normalised with the batch's own
        #: statistics (``batch_norm`` with ``training=True``: BatchNorm without running stats)
        self.batch_stats: list[str] = []
        self._masks: WeakTensorKeyDictionary = WeakTensorKeyDictionary()  # mask -> ref to x
        self._customs: set[int] = set()  # autograd nodes of custom Functions already logged

    def note(self, t: Any) -> None:
        """Log a tensor made by a custom ``torch.autograd.Function`` (its node in the graph
        names the class): the engine cannot know that function's backward, so no rule is
        applied through it. Needs a pass that records autograd."""
        node = getattr(t, "grad_fn", None) if isinstance(t, Tensor) else None
        cls = getattr(node, "_forward_cls", None)
        if cls is None or cls is RuleReLU or id(node) in self._customs:
            return
        self._customs.add(id(node))
        self._log(f"{cls.__name__}.apply (a custom autograd.Function)", False)

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if self.tracker is not None:
            derived = sum(
                1 for t in _tensor_args(args, kwargs) if self.tracker.meta.get(t) is not None
            )
            self.calls.append((name, derived))
        for t in _tensor_args(args, kwargs):
            self.note(t)
        if name == "batch_norm" and _arg(args, kwargs, 5, "training", False):
            self.batch_stats.append(self.stack[-1] if self.stack else "")
        rect = self._rectifier(name, args, kwargs)
        if rect is not None:
            out = self._relu(func, rect[0], rect[1], False, args, kwargs, always=True)
            if self.tracker is not None:  # a ReLU for the receptive field too
                self.tracker.update(torch.relu, (rect[1],), {}, out)
            return out
        elif (form := relu_form(func, name, args, kwargs)) is not None and form[0] == "relu":
            out = self._relu(func, name, form[1], form[2], args, kwargs)
        elif form is not None or name in NO_RULE_FUNCS:
            if form is None or self._derived(args, kwargs):
                self._log(name, False)
            out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
            self._mask_of(name, args, kwargs, out)
        if self.tracker is not None:
            self.tracker.update(func, args, kwargs, out)
        return out

    def _mask_of(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        """Remember ``out`` when it is a rectifier's mask: ``x > 0`` (or a cast of one)."""
        if not isinstance(out, Tensor) or not args or not isinstance(args[0], Tensor):
            return
        if name in _MASK_OPS:
            other = _arg(args, kwargs, 1, "other", None)
            if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
                self._masks[out] = weakref.ref(args[0])
        elif name in _MASK_CASTS and args[0] in self._masks:
            self._masks[out] = self._masks[args[0]]

    def _rectifier(self, name: str, args: tuple, kwargs: dict) -> tuple[str, Tensor] | None:
        """``torch.where(x > 0, x, 0)`` or ``x * (x > 0)``: a ReLU spelt with its mask."""
        if name == "where" and len(args) == 3 and not kwargs:
            mask, x, zero = args
            if (
                isinstance(mask, Tensor)
                and isinstance(x, Tensor)
                and mask in self._masks
                and self._masks[mask]() is x
                and _is_zero(zero)
                and mask.shape == x.shape
            ):
                return "where(x > 0, x, 0)", x
        if name in _MUL and len(args) == 2 and not kwargs:
            a, b = args
            if isinstance(b, Tensor) and b in self._masks and self._masks[b]() is a:
                pass
            elif isinstance(a, Tensor) and a in self._masks and self._masks[a]() is b:
                a, b = b, a
            else:
                return None
            if isinstance(a, Tensor) and a.shape == b.shape and a.is_floating_point():
                return "x * (x > 0)", a
        return None

    def _relu(
        self,
        func: Any,
        name: str,
        x: Tensor,
        inplace: bool,
        args: tuple,
        kwargs: dict,
        always: bool = False,
    ) -> Any:
        """A ReLU call: logged, and run with the rule's backward when autograd records it.

        Inside a custom ``autograd.Function``'s forward (or a ``no_grad`` block) of a pass that
        records autograd, the rule cannot act: such a call is logged without a rule."""
        if always or func in RELU_FUNCS or self._derived(args, kwargs):
            unseen = self.recording and not torch.is_grad_enabled()
            suffix = "_" if inplace and not name.endswith("_") else ""
            if unseen:
                self._log(f"{name}{suffix} (autograd off here: no rule)", False)
            else:
                self._log(name + suffix, True)
        if self.rule is not None and torch.is_grad_enabled() and x.requires_grad:
            if always:  # a masked spelling: its forward is a ReLU's
                return RuleReLU.apply(x, self.rule, False)
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


def _arg(args: tuple, kwargs: dict, pos: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[pos] if len(args) > pos else default


def _tensor_args(args: tuple, kwargs: dict) -> Iterator[Tensor]:
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, Tensor))
