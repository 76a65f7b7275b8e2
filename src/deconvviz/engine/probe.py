"""The engine's forward passes: the probe that learns every layer's geometry, and the passes
stopped after or before a layer.

Three kinds of forward pass, each one :class:`~deconvviz.engine.tracer.Tracer` (which owns the
hooks) entering one :class:`~deconvviz.engine.swap.ReluSwap`:

* :meth:`Passes.probe`: the whole forward, no rule, following receptive fields, finding the
  first non-finite activation and judging layers of unknown type (linear or not);
* :meth:`Passes.forward_to`: stopped after a layer (autograd with the rule's ReLUs, or values);
* :meth:`Passes.input_of`: stopped just before a layer, with autograd (the convolution shortcut).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz.base._util import autocast
from deconvviz.base.checks import call_key, split_call
from deconvviz.base.errors import LayerError, NonFiniteError
from deconvviz.engine.receptive import ReceptiveField, RFTracker
from deconvviz.engine.rules import Rule
from deconvviz.engine.support import step_for
from deconvviz.engine.swap import Event, ReluSwap
from deconvviz.engine.tracer import Tracer


class DeconvvizWarning(UserWarning):
    """A layer or activation without a deconvnet rule (its plain gradient is used instead)."""


@dataclass
class _LayerInfo:
    """What one full probe pass learnt about a layer, for inputs of one shape."""

    calls: int = 0
    out_shape: tuple[int, ...] | None = None  # without the batch dimension; None: not a tensor
    rf: ReceptiveField | None = None
    bytes_per_sample: int = 0  # derived tensors made up to this layer, per input
    events_before: int = 0  # number of activation events that happened before its output
    crop_ok: bool = True  # False once crops failed for this layer (the model refused them)
    batch_stats: tuple[str, ...] = ()  # modules before it that normalise with batch statistics
    #: how branches of the signal meet inside the layer's forward: "add" (residual adds),
    #: "cat" (concatenations); calls with two or more inputs derived from the image
    merges: frozenset[str] = frozenset()


@dataclass
class _Probe:
    layers: dict[str, _LayerInfo]
    order: list[str]
    events: list[Event]
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class Passes:
    """The forward passes of one model: its modules' names, the rule, the precision."""

    model: nn.Module
    names: dict[nn.Module, str]
    rule: Rule
    precision: str = "fp32"

    def tracer(
        self, rule: Rule | None, tracker: RFTracker | None = None
    ) -> tuple[Tracer, ReluSwap]:
        tracer = Tracer(self.model, self.names)
        swap = ReluSwap(rule, tracer.stack, tracker)
        tracer.mode = swap
        return tracer, swap

    def probe(self, x: Tensor) -> tuple[_Probe, Counter[str]]:
        """One whole forward pass of ``x`` that records every layer call's geometry."""
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise NonFiniteError(
                f"the input holds {_non_finite(x)}; give images with finite values"
            )
        tracker = RFTracker()
        tracer, swap = self.tracer(None, tracker)
        recorder = _Recorder(tracker, swap, (int(x.shape[-2]), int(x.shape[-1])))
        tracer.on_call(recorder.start)
        tracer.on_return(recorder.record)
        # The pass records autograd (one input), so that the graph shows custom
        # autograd.Functions, whose backward the rule cannot reach.
        swap.recording = True
        with torch.inference_mode(False), tracer:
            leaf = normal(x).detach().requires_grad_(True)
            with torch.enable_grad():
                x = leaf.clone()  # not a leaf: the model may change its input in place
            tracker.watch(x)
            tracer.run(x, grad=True)
        if recorder.bad:
            _raise_non_finite(*recorder.bad[0])
        infos = recorder.infos
        for name, n in tracer.counts.items():
            for key in (name, *(call_key(name, k) for k in range(n))):
                if key in infos:
                    infos[key].calls = n
        probe = _Probe(infos, list(tracer.order), swap.events, tuple(x.shape[1:]))
        return probe, Counter(tracer.counts)

    def forward_to(self, x: Tensor, layer: str, *, grad: bool) -> Tensor:
        """The output of ``layer`` (``"name"`` or ``"name:call"``), the pass stopped there.

        ``grad``: recorded by autograd with the rule's ReLUs (for a backward pass); otherwise a
        copy of the values, no graph."""
        tracer, _ = self.tracer(self.rule if grad else None)
        name, call = split_call(layer)
        got: list[Tensor] = []

        @tracer.on_return
        def keep(n: str, c: int, module: nn.Module, args: Any, out: Any) -> None:
            if n == name and c == (call or 0) and not got:
                if not isinstance(out, Tensor):
                    raise LayerError(
                        f"layer {name!r} returns {type(out).__name__}, not a tensor; project at "
                        "one of its submodules instead"
                    )
                got.append(out if grad else out.clone())

        with torch.inference_mode(False), tracer, autocast(x.device, self.precision):
            tracer.run(normal(x), grad=grad, stop_after=layer)
        assert got, f"layer {layer!r} did not run"
        return got[0]

    def input_of(self, x: Tensor, layer: str) -> Tensor:
        """The input of ``layer`` (recorded by autograd with the rule's ReLUs); it never runs."""
        tracer, _ = self.tracer(self.rule)
        name, call = split_call(layer)
        got: list[Tensor] = []

        @tracer.on_call
        def keep(n: str, c: int, module: nn.Module, args: Any) -> None:
            if n == name and c == (call or 0):
                got.append(args[0])

        with torch.inference_mode(False), tracer, autocast(x.device, self.precision):
            tracer.run(normal(x), grad=True, stop_before=layer)
        assert got, f"layer {layer!r} did not run"
        return got[0]


class _Recorder:
    """The probe's hooks: each layer call's geometry, and the first non-finite output."""

    def __init__(self, tracker: RFTracker, swap: ReluSwap, size: tuple[int, int]) -> None:
        self.tracker, self.swap, self.size = tracker, swap, size
        self.infos: dict[str, _LayerInfo] = {}
        self.bad: list[tuple[str, nn.Module, Tensor]] = []  # the first layer with NaN/inf output
        self.starts: dict[tuple[str, int], tuple[int, int]] = {}

    def start(self, name: str, call: int, module: nn.Module, args: Any) -> None:
        self.starts[(name, call)] = (len(self.swap.events), len(self.swap.calls))

    def record(self, name: str, call: int, module: nn.Module, args: Any, out: Any) -> None:
        swap, tracker = self.swap, self.tracker
        swap.note(out)  # a custom autograd.Function's output returned by the layer itself
        first_event, first_call = self.starts.get((name, call), (len(swap.events), len(swap.calls)))
        if (
            _unknown_leaf(module)
            and len(swap.events) == first_event  # activations inside were judged already
            and args
            and isinstance(args[0], Tensor)
            and tracker.meta.get(args[0]) is not None
        ):
            odd = _not_linear(swap.calls[first_call:])
            if odd:
                swap.events.append(
                    Event(name, f"{type(module).__name__} (unknown type: {odd})", False)
                )
        # after the linearity judgement above: these calls are the engine's, not the layer's
        if (
            not self.bad
            and isinstance(out, Tensor)
            and out.is_floating_point()
            and not bool(torch.isfinite(out).all())
        ):
            self.bad.append((call_key(name, call) if call else name, module, out))
        info = _LayerInfo(
            events_before=len(swap.events),
            batch_stats=tuple(dict.fromkeys(swap.batch_stats)),
            merges=frozenset(
                _MERGES[f] for f, derived in swap.calls[first_call:] if derived > 1 and f in _MERGES
            ),
        )
        if isinstance(out, Tensor):
            info.out_shape = tuple(out.shape[1:])
            info.rf = tracker.field(out, self.size)
            info.bytes_per_sample = tracker.bytes_per_sample
        self.infos[call_key(name, call)] = info
        if call == 0:
            self.infos[name] = info


#: Calls that join two branches of the signal when two of their inputs derive from the image.
_MERGES = {
    **dict.fromkeys(("add", "__add__", "__radd__", "add_", "__iadd__"), "add"),
    **dict.fromkeys(("cat", "concat", "concatenate"), "cat"),
}


def _raise_non_finite(name: str, module: nn.Module, out: Tensor) -> None:
    """Say where non-finite activations first appear, and why (the layer's own tensors?)."""
    own = [
        (p, t)
        for p, t in module.named_parameters(recurse=False)
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ] + [
        (b, t)
        for b, t in module.named_buffers(recurse=False)
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    why = (
        f"its {own[0][0]} holds {_non_finite(own[0][1])}"
        if own
        else "its input was finite: an overflow in it"
    )
    raise NonFiniteError(
        f"the model's activations are not finite: {_non_finite(out)} first appear in the "
        f"output of layer {name!r} ({why}); check the checkpoint or the training run "
        "that made it"
    )


def forward_failed(model: nn.Module, x: Tensor, exc: Exception) -> str:
    """torch's message for a forward pass that failed on ``x``, with the likely fix."""
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    hint = (
        "check that the input's channel count and size are what the model expects (on the "
        "command line, --image-size N resizes images to the size it was trained on)"
    )
    if first_conv is not None and x.shape[1] != first_conv.in_channels:
        hint = (
            f"the model's first convolution expects {first_conv.in_channels} input channels "
            f"but the input has {x.shape[1]}"
        )
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"the model's forward pass failed on input of shape {tuple(x.shape)}: {msg}; {hint}"


# ------------------------------------------------------------------ validation


def _unknown_leaf(module: nn.Module) -> bool:
    """A module with no submodules whose type the support catalogue does not know."""
    return not any(True for _ in module.children()) and step_for(module, "").startswith(
        "unknown type"
    )


#: Calls that are linear in their input (or only read shapes): a layer of unknown type that
#: makes only these gets autograd's backward, which is then its exact reverse step.
_LINEAR_CALLS = frozenset(
    {
        "__get__",
        "size",
        "dim",
        "numel",
        "flip",
        "fliplr",
        "flipud",
        "rot90",
        "permute",
        "transpose",
        "t",
        "reshape",
        "view",
        "view_as",
        "flatten",
        "unflatten",
        "squeeze",
        "unsqueeze",
        "contiguous",
        "clone",
        "roll",
        "narrow",
        "__getitem__",
        "select",
        "index_select",
        "gather",
        "cat",
        "concat",
        "stack",
        "chunk",
        "split",
        "neg",
        "__neg__",
        "add",
        "__add__",
        "__radd__",
        "add_",
        "__iadd__",
        "sub",
        "__sub__",
        "__rsub__",
        "sub_",
        "mul",
        "__mul__",
        "__rmul__",
        "mul_",
        "__imul__",
        "div",
        "__truediv__",
        "div_",
        "pad",
        "pixel_shuffle",
        "pixel_unshuffle",
        "avg_pool2d",
        "adaptive_avg_pool2d",
        "conv2d",
        "conv_transpose2d",
        "linear",
        "matmul",
        "expand",
        "expand_as",
        "repeat",
        "to",
        "float",
        "double",
        "half",
        "type",
        "type_as",
        "detach",
        "sum",
        "mean",
        "interpolate",
        "upsample_nearest2d",
        "channel_shuffle",
        "movedim",
        "swapaxes",
    }
)
_PRODUCTS = frozenset(
    {"mul", "__mul__", "__rmul__", "mul_", "__imul__", "div", "__truediv__", "div_", "matmul"}
)


def _not_linear(calls: list[tuple[str, int]]) -> str:
    """What makes a traced forward nonlinear in its input (``""`` where nothing does): a call
    outside :data:`_LINEAR_CALLS`, or a product of two tensors that both derive from it."""
    for name, derived in calls:
        if name not in _LINEAR_CALLS:
            return f"calls {name}, not known to be linear"
        if name in _PRODUCTS and derived > 1:
            return f"multiplies its input by itself ({name})"
    return ""


def _non_finite(t: Tensor) -> str:
    """``'3 NaN and 1 infinite values'``: what is not finite in ``t``."""
    t = t.detach()
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    parts = [f"{nan} NaN"] * bool(nan) + [f"{inf} infinite"] * bool(inf)
    return " and ".join(parts) + " values"


def normal(t: Tensor) -> Tensor:
    """``t``, or a normal copy of it when it was made inside ``torch.inference_mode``."""
    return t.clone() if t.is_inference() else t
