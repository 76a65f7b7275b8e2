"""The deconvnet engine: :func:`attach` and the :class:`Deconvnet` handle.

How it works (see ``docs/method.md``):

* Every linear step of a deconvnet's reverse path (transposed filters, unpooling with switches,
  ``W^T``, BatchNorm scaling, average-pool spreading, residual adds, concatenations) is exactly the
  autograd backward of the forward op. Only the ReLU step differs. So the engine runs the
  model's own forward under a :class:`torch.overrides.TorchFunctionMode` that replaces every ReLU
  *call* -- ``nn.ReLU`` (in-place or not), ``F.relu``, ``torch.relu``, ``x.relu()``, ``relu_``,
  and ReLUs spelt ``clamp(x, min=0)``, ``torch.maximum(x, zeros)`` or ``F.threshold(x, 0, 0)`` --
  with an autograd function whose backward is the chosen rule, then asks autograd for the
  gradient of the seeded layer output with respect to the input. Functional ReLUs, reused ReLU
  modules and skip connections are all covered because the rule acts on each call.
* A projection's seed is one activation (its own value), so its reverse path is nonzero only in
  that activation's receptive field. When the receptive field can be followed (see
  :mod:`deconvviz.receptive`), each seed runs on a crop of the input that holds its receptive
  field, aligned to the layer's stride; this gives exactly the same result as the full image
  (tested) and is what makes projecting every channel of a layer fast. Downstream of any op
  whose effect depends on the absolute position the receptive field is not followed and full
  images are used; every crop is also checked: the seed's value computed on the crop must equal
  the full image's, or the engine warns and uses full images for that layer.
* Nothing is attached to the model between calls: hooks live only during a pass and are removed
  in ``finally``; ``training`` flags are restored; parameters never get ``.grad``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from deconvviz.errors import (
    DeconvvizError,
    InputError,
    LayerError,
    UnsupportedLayerError,
    unknown_name,
)
from deconvviz.receptive import ReceptiveField, RFTracker
from deconvviz.rules import ReluRule, describe_rule, get_rule, uses_mask

__all__ = ["Deconvnet", "DeconvvizWarning", "attach", "eval_mode", "exact_cuda", "layer_output"]

DEFAULT_MAX_MEMORY = 512 * 2**20


class DeconvvizWarning(UserWarning):
    """A layer or activation without a deconvnet rule (its plain gradient is used instead)."""


# ---------------------------------------------------------------------- what each layer gets

_RELU_OUT_OF_PLACE = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_IN_PLACE = {torch.relu_, torch.Tensor.relu_}
# Calls that are a ReLU when their bound is exactly 0, and an activation without a rule otherwise.
_CLAMPS = {"clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_"}
_UPPER_CLAMPS = {"clamp_max", "clamp_max_"}
_MAXIMA = {"maximum", "max"}  # binary forms only: max(x, other)
_MINIMA = {"minimum", "min", "fmax", "fmin"}  # binary forms only
_THRESHOLDS = {"threshold", "threshold_", "_threshold"}
_RELU_LIKE = _CLAMPS | _UPPER_CLAMPS | _MAXIMA | _MINIMA | _THRESHOLDS
_NO_RULE_FUNCS = {
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


def _step_for(module: nn.Module, relu_step: str) -> str:
    if isinstance(module, nn.Threshold) and module.threshold == 0 and module.value == 0:
        return relu_step  # Threshold(0, 0) is a ReLU
    cls = type(module)
    if cls.__module__.startswith("torchvision.ops") and cls.__name__ in _TORCHVISION_LINEAR:
        return _TORCHVISION_LINEAR[cls.__name__]
    for types, step in _STEPS:
        if isinstance(module, types):
            return relu_step if step == "<relu>" else step
    if not any(True for _ in module.children()):
        return "NO deconvnet rule known for this layer type: its plain gradient is used"
    return (
        "its submodules' steps; residual adds send the signal down every branch, "
        "concatenations split it"
    )


def _has_no_rule(module: nn.Module) -> bool:
    return _step_for(module, "").startswith("NO deconvnet rule")


# ---------------------------------------------------------------------- the ReLU replacement


class _RuleReLU(torch.autograd.Function):
    """ReLU forward; backward by the attached rule."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: ReluRule) -> Tensor:
        out = torch.relu(x)
        ctx.rule = rule
        if uses_mask(rule):
            ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        mask = ctx.saved_tensors[0] > 0 if ctx.saved_tensors else None
        return ctx.rule(grad, mask), None


class _RuleReLUInPlace(torch.autograd.Function):
    """In-place ReLU forward (``relu_`` / ``nn.ReLU(inplace=True)``); backward by the rule."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: ReluRule) -> Tensor:
        x.relu_()
        ctx.mark_dirty(x)
        ctx.rule = rule
        if uses_mask(rule):
            ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        mask = ctx.saved_tensors[0] > 0 if ctx.saved_tensors else None
        return ctx.rule(grad, mask), None


@dataclass
class _Event:
    module: str  # innermost module running when the call happened ('' = the model itself)
    func: str
    supported: bool


def _is_zero(v: Any) -> bool:
    """A bound that is exactly 0: a number, or a constant tensor of zeros."""
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return v == 0
    if isinstance(v, Tensor):
        return not v.requires_grad and v.numel() > 0 and bool((v == 0).all())
    return False


def _relu_form(func: Any, name: str, args: tuple, kwargs: dict) -> tuple[str, Any, bool] | None:
    """Whether a call is a ReLU spelt another way.

    Returns ``("relu", x, in_place)`` for ``clamp(x, min=0)``, ``x.clamp_min(0)``,
    ``torch.maximum(x, zeros)``, ``F.threshold(x, 0, 0)`` and their in-place forms;
    ``("other", None, False)`` for the same calls with any other bound (no deconvnet rule);
    ``None`` for everything else."""
    if func in _RELU_OUT_OF_PLACE or func in _RELU_IN_PLACE:
        inplace = func in _RELU_IN_PLACE or bool(
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


class _Mode(TorchFunctionMode):
    """Sees every torch call of a forward pass: swaps ReLUs, logs activations, follows RFs."""

    def __init__(self, rule: ReluRule | None, stack: list[str], tracker: RFTracker | None):
        super().__init__()
        self.rule = rule
        self.stack = stack
        self.tracker = tracker
        self.events: list[_Event] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        form = _relu_form(func, name, args, kwargs)
        if (form is not None and form[0] != "relu") or name in _NO_RULE_FUNCS:
            if form is None or self._derived(args, kwargs):
                self._log(name, False)
            out = func(*args, **kwargs)
        elif form is not None:
            _, x, inplace = form
            if func in _RELU_OUT_OF_PLACE or func in _RELU_IN_PLACE or self._derived(args, kwargs):
                self._log(name + ("_" if inplace and not name.endswith("_") else ""), True)
            if self.rule is not None and torch.is_grad_enabled() and x.requires_grad:
                fn = _RuleReLUInPlace if inplace else _RuleReLU
                out = fn.apply(x, self.rule)
            else:
                out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        if self.tracker is not None:
            self.tracker.update(func, args, kwargs, out)
        return out

    def _derived(self, args: tuple, kwargs: dict) -> bool:
        """Whether a call reads a tensor that derives from the input (so it is on some path)."""
        for t in _tensor_args(args, kwargs):
            if t.requires_grad or (
                self.tracker is not None and self.tracker.meta.get(t) is not None
            ):
                return True
        return False

    def _log(self, func: str, supported: bool) -> None:
        self.events.append(_Event(self.stack[-1] if self.stack else "", func, supported))


def _tensor_args(args: tuple, kwargs: dict) -> Iterator[Tensor]:
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, Tensor))


class _StopForward(Exception):
    pass


@dataclass
class _LayerInfo:
    """What one full probe pass learnt about a layer, for inputs of one shape."""

    calls: int = 0
    out_shape: tuple[int, ...] | None = None  # without the batch dimension; None: not a tensor
    rf: ReceptiveField | None = None
    bytes_per_sample: int = 0  # derived tensors made up to this layer, per input
    events_before: int = 0  # number of activation events that happened before its output
    crop_ok: bool = True  # False once crops failed for this layer (the model refused them)


@dataclass
class _Probe:
    layers: dict[str, _LayerInfo]
    order: list[str]
    events: list[_Event]
    input_shape: tuple[int, ...]


@dataclass
class _PassOut:
    target: Tensor | None = None
    counts: Counter = field(default_factory=Counter)
    order: list[str] = field(default_factory=list)
    events: list[_Event] = field(default_factory=list)
    infos: dict[str, _LayerInfo] = field(default_factory=dict)


# ---------------------------------------------------------------------- the handle


class Deconvnet:
    """Deconvnet reverse paths attached to a model. Create it with :func:`attach`.

    Attributes:
        model: the model (never modified).
        rule: ``"deconvnet"``, ``"gradient"`` or ``"guided"``.
        layers: projectable layer names, as ``named_modules()`` spells them, in forward order once a
            projection has run (definition order before); a module called several times per
            forward pass is listed once per call, as ``"name:0"``, ``"name:1"``...

    Example:
        >>> with deconvviz.attach(model) as dn:                       # doctest: +SKIP
        ...     rec = dn.project(x, layer="features.3", channel=5)
    """

    def __init__(
        self,
        model: nn.Module,
        rule: str = "deconvnet",
        strict: bool = False,
        *,
        crop: bool = True,
        max_memory: int = DEFAULT_MAX_MEMORY,
        warn: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(
                f"attach() needs a torch.nn.Module, got {type(model).__name__}; "
                "pass the model itself"
            )
        self.model = model
        self.rule = rule
        self._rule_fn = get_rule(rule)
        self.strict = strict
        self.crop = crop
        self.max_memory = int(max_memory)
        self._warn = warn
        self._attached = True
        self._names: dict[nn.Module, str] = {}
        self._modules: dict[str, nn.Module] = {}
        for name, module in model.named_modules():
            if module is model:
                continue
            self._modules[name] = module
            self._names.setdefault(module, name)
        self.layers: list[str] = [
            n for n, m in self._modules.items() if not isinstance(m, (nn.ModuleList, nn.ModuleDict))
        ]
        self._layer_names = list(self.layers)
        if not self.layers:
            raise InputError(
                f"the model ({type(model).__name__}) has no submodules, so there is no layer to "
                "project; build it from nn.Module layers (nn.Conv2d, nn.ReLU, ...) as attributes"
            )
        self._probes: dict[tuple, _Probe] = {}
        #: one entry per batch of seeds projected: ``(layer, (crop height, crop width), seeds,
        #: how)`` with how ``"crop"`` (verified against the full image's values), ``"full"``
        #: (full-image pass) or ``"fallback"`` (a crop disagreed or failed; redone on full
        #: images). For tests and debugging; the last 10 000 batches are kept.
        self.crop_log: deque[tuple[str, tuple[int, int], int, str]] = deque(maxlen=10_000)
        self._warned: set[tuple[str, str]] = set()
        no_rule = [n for n, m in self._modules.items() if _has_no_rule(m)]
        if no_rule and strict:
            raise UnsupportedLayerError(
                "strict mode: these layers have no deconvnet rule: "
                + ", ".join(f"{n!r} ({type(self._modules[n]).__name__})" for n in no_rule)
                + "; replace them by ReLU, or attach with strict=False to use their plain gradient"
            )
        if no_rule and warn:
            warnings.warn(
                "no deconvnet rule for "
                + ", ".join(f"{n!r} ({type(self._modules[n]).__name__})" for n in no_rule)
                + ": their plain gradient is used; attach(..., strict=True) refuses such models",
                DeconvvizWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Deconvnet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()  # never swallows the user's exception

    def detach(self) -> None:
        """Release the model. Idempotent. Nothing stays attached to the model in any case: hooks
        only live during a projection; this just makes further use of the handle an error."""
        self._attached = False
        self._probes.clear()

    def _check_attached(self) -> None:
        if not self._attached:
            raise DeconvvizError("this Deconvnet was detached; call deconvviz.attach(model) again")

    # ------------------------------------------------------------------ description

    def summary(self) -> str:
        """A table of every layer and the reverse step it gets, plus the activation functions
        the last forward pass called (functional ReLUs included)."""
        relu_step = describe_rule(self.rule)
        lines = [
            f"Deconvnet(rule={self.rule!r}, strict={self.strict}) on {type(self.model).__name__}"
        ]
        width = max(len(n) for n in self._modules) if self._modules else 10
        for name, module in self._modules.items():
            depth = name.count(".")
            if isinstance(module, _CONTAINERS) and not depth:
                lines.append(f"  {name:<{width}}  {type(module).__name__}")
                continue
            lines.append(
                f"  {name:<{width}}  {type(module).__name__:<18} -> {_step_for(module, relu_step)}"
            )
        if self._probes:
            probe = next(reversed(self._probes.values()))
            calls = Counter((e.module, e.func, e.supported) for e in probe.events)
            if calls:
                lines.append("  activation calls seen in the forward pass:")
                for (where_called, func, ok), n in calls.items():
                    where = f"in {where_called!r}" if where_called else "in the model's forward"
                    step = relu_step if ok else "NO deconvnet rule: its plain gradient is used"
                    lines.append(f"    {func} x{n} {where} -> {step}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ passes

    def _run(
        self,
        x: Tensor,
        target: str | None,
        *,
        grad: bool,
        stop: bool,
        track: bool = False,
        clone_target: bool = False,
        target_input: bool = False,
    ) -> _PassOut:
        """One forward pass with temporary hooks; returns the target's output and what it saw.

        Runs outside ``torch.inference_mode`` (projections need autograd): an input made inside
        it is an inference tensor, which is copied to a normal one first."""
        with torch.inference_mode(False):
            if x.is_inference():
                x = x.clone()
            return self._run_pass(
                x,
                target,
                grad=grad,
                stop=stop,
                track=track,
                clone_target=clone_target,
                target_input=target_input,
            )

    def _run_pass(
        self,
        x: Tensor,
        target: str | None,
        *,
        grad: bool,
        stop: bool,
        track: bool,
        clone_target: bool,
        target_input: bool,
    ) -> _PassOut:
        res = _PassOut()
        stack: list[str] = []
        tracker = RFTracker() if track else None
        mode = _Mode(self._rule_fn if grad else None, stack, tracker)
        names = self._names
        size = tuple(x.shape[-2:])
        tname, tcall = _split_layer(target) if target is not None else (None, None)
        want = tcall or 0

        def pre(module: nn.Module, args: Any) -> None:
            name = names[module]
            stack.append(name)
            res.counts[name] += 1
            if res.counts[name] == 1:
                res.order.append(name)
            if target_input and name == tname and res.counts[name] - 1 == want:
                res.target = args[0]  # the target's input; the target itself never runs
                raise _StopForward

        def post(module: nn.Module, args: Any, out: Any) -> None:
            name = names[module]
            if stack and stack[-1] == name:
                stack.pop()
            call = res.counts[name] - 1
            if track:
                info = _LayerInfo(events_before=len(mode.events))
                if isinstance(out, Tensor):
                    info.out_shape = tuple(out.shape[1:])
                    assert tracker is not None
                    info.rf = tracker.field(out, size)  # type: ignore[arg-type]
                    info.bytes_per_sample = tracker.bytes_per_sample
                res.infos[f"{name}:{call}"] = info
                if call == 0:
                    res.infos[name] = info
            if name == tname and call == want and res.target is None:
                if not isinstance(out, Tensor):
                    raise LayerError(
                        f"layer {name!r} returns {type(out).__name__}, not a tensor; project at "
                        "one of its submodules instead"
                    )
                res.target = out.clone() if clone_target else out
                if stop:
                    raise _StopForward

        handles = []
        try:
            for module in names:
                handles.append(module.register_forward_pre_hook(pre))
                handles.append(module.register_forward_hook(post))
            grad_ctx = torch.enable_grad() if grad else torch.no_grad()
            with eval_mode(self.model), grad_ctx, exact_cuda(x, names), mode:
                if tracker is not None:
                    tracker.watch(x)
                with contextlib.suppress(_StopForward):
                    self.model(x)
        finally:
            for h in handles:
                h.remove()
        for name, n in res.counts.items():
            for key in (name, *(f"{name}:{k}" for k in range(n))):
                if key in res.infos:
                    res.infos[key].calls = n
        res.events = mode.events
        return res

    def _probe(self, x: Tensor) -> _Probe:
        """A full forward pass on one input, learning every layer's geometry (cached per shape)."""
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        probe = self._probes.get(key)
        if probe is not None:
            return probe
        try:
            res = self._run(x[:1].detach().clone(), None, grad=False, stop=False, track=True)
        except (DeconvvizError, KeyboardInterrupt):
            raise
        except Exception as exc:  # torch's own message, wrapped with the fix
            raise InputError(self._forward_failed(x, exc)) from exc
        probe = _Probe(res.infos, res.order, res.events, tuple(x.shape[1:]))
        self._probes[key] = probe
        known = set(self._layer_names)
        called: list[str] = []
        for n in res.order:
            if n in known:
                calls = res.counts[n]
                called += [n] if calls == 1 else [f"{n}:{k}" for k in range(calls)]
        self.layers = called + [n for n in self._layer_names if n not in res.infos]
        return probe

    def _forward_failed(self, x: Tensor, exc: Exception) -> str:
        first_conv = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        hint = "check that the input's channel count and size are what the model expects"
        if first_conv is not None and x.shape[1] != first_conv.in_channels:
            hint = (
                f"the model's first convolution expects {first_conv.in_channels} input channels "
                f"but the input has {x.shape[1]}"
            )
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the model's forward pass failed on input of shape {tuple(x.shape)}: {msg}; {hint}"

    # ------------------------------------------------------------------ validation

    def _check_input(self, x: Any) -> Tensor:
        self._check_attached()
        if not isinstance(x, Tensor):
            raise InputError(f"x must be a torch.Tensor [N, C, H, W], got {type(x).__name__}")
        if x.dim() != 4:
            fix = "; add a batch dimension with x.unsqueeze(0)" if x.dim() == 3 else ""
            raise InputError(f"x must have shape [N, C, H, W], got {tuple(x.shape)}{fix}")
        if x.shape[0] == 0:
            raise InputError("x is an empty batch (N = 0); pass at least one image")
        if not x.is_floating_point():
            raise InputError(f"x must be a floating-point tensor, got {x.dtype}; use x.float()")
        param = next(self.model.parameters(), None)
        if param is not None:
            if param.dtype != x.dtype:
                raise InputError(
                    f"x is {x.dtype} but the model's parameters are {param.dtype}; convert one of "
                    f"them (x.to({param.dtype}) or model.to({x.dtype}))"
                )
            if param.device != x.device:
                raise InputError(
                    f"x is on {x.device} but the model is on {param.device}; move x with "
                    f"x.to({str(param.device)!r})"
                )
        return x

    def _layer(self, probe: _Probe, layer: str) -> _LayerInfo:
        if not isinstance(layer, str):
            raise LayerError(f"layer must be a name as named_modules() spells it, got {layer!r}")
        name, call = _split_layer(layer)
        if name not in self._modules:
            raise LayerError(unknown_name("layer", layer, self.layers))
        info = probe.layers.get(name)
        if info is None:
            raise LayerError(
                f"layer {name!r} is not called by the model's forward pass, so it has no "
                "activations; pick one of the layers that run: " + ", ".join(probe.order[:12])
            )
        if call is None and info.calls > 1:
            raise LayerError(
                f"layer {layer!r} is called {info.calls} times per forward pass (a shared module), "
                f"so its activations are ambiguous; name one call: '{name}:0' ... "
                f"'{name}:{info.calls - 1}', in the order they run"
            )
        if call is not None:
            if call >= info.calls:
                raise LayerError(
                    f"layer {name!r} is called {info.calls} time(s) per forward pass; its calls "
                    f"are '{name}:0' ... '{name}:{info.calls - 1}'"
                )
            info = probe.layers[f"{name}:{call}"]
        if info.out_shape is None:
            raise LayerError(
                f"layer {layer!r} does not return a tensor; pick one of its submodules"
            )
        if len(info.out_shape) not in (1, 3):
            raise LayerError(
                f"layer {layer!r} outputs shape [N, {', '.join(map(str, info.out_shape))}]; only "
                "[N, C, H, W] feature maps and [N, C] vectors can be projected"
            )
        unsupported = [e for e in probe.events[: info.events_before] if not e.supported]
        if unsupported:
            where = ", ".join(
                sorted({f"{e.func} in {e.module or 'forward'!r}" for e in unsupported})
            )
            if self.strict:
                raise UnsupportedLayerError(
                    f"strict mode: the path to {layer!r} calls activations with no deconvnet rule "
                    f"({where}); use ReLU, or attach with strict=False to use their plain gradient"
                )
            key = (layer, where)
            if self._warn and key not in self._warned:
                self._warned.add(key)
                warnings.warn(
                    f"no deconvnet rule for {where} on the path to {layer!r}: their plain "
                    "gradient is used; attach(..., strict=True) refuses this",
                    DeconvvizWarning,
                    stacklevel=4,
                )
        return info

    @staticmethod
    def _channels(channel: Any, n_channels: int) -> tuple[list[int], bool]:
        single = isinstance(channel, int) or (isinstance(channel, Tensor) and channel.dim() == 0)
        try:
            chans = [int(channel)] if single else [int(c) for c in channel]
        except (TypeError, ValueError):
            raise InputError(f"channel must be an int or a list of ints, got {channel!r}") from None
        if not chans:
            raise InputError("channel is an empty list; give at least one channel")
        bad = [c for c in chans if not 0 <= c < n_channels]
        if bad:
            raise InputError(
                f"channel {bad[0]} is out of range: the layer has {n_channels} channels "
                f"(0..{n_channels - 1})"
            )
        return chans, single

    # ------------------------------------------------------------------ public API

    def layer_output(self, x: Tensor, layer: str) -> Tensor:
        """The output of ``layer`` for input ``x`` (forward stopped there, no autograd graph)."""
        x = self._check_input(x)
        probe = self._probe(x)
        self._layer(probe, layer)
        return self._values(x, layer)

    def _values(self, x: Tensor, layer: str) -> Tensor:
        res = self._run(x.detach(), layer, grad=False, stop=True, clone_target=True)
        assert res.target is not None
        return res.target

    def receptive_field(self, layer: str, input_shape: Sequence[int]) -> ReceptiveField | None:
        """Receptive field of ``layer`` for inputs of shape ``input_shape`` (``None`` when the
        layer's output is not a spatial map that can be followed back, e.g. after flatten)."""
        self._check_attached()
        device, dtype = model_device_dtype(self.model)
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == 3:
            shape = (1, *shape)
        x = torch.zeros(shape, dtype=dtype, device=device)
        x = self._check_input(x)
        return self._layer(self._probe(x), layer).rf

    def project(
        self,
        x: Tensor,
        layer: str,
        channel: int | Sequence[int],
        position: tuple[int, int] | None = None,
    ) -> Tensor:
        """Project one activation per image and channel of ``layer`` back to pixel space.

        The seed keeps the activation's own value and sets every other activation of the layer to
        zero; the reverse path then unpools with the forward pass's switches, rectifies and applies
        transposed filters (for ``rule="deconvnet"``).

        Args:
            x: input images ``[N, C, H, W]`` on the model's device and dtype.
            layer: layer name as ``named_modules()`` spells it (see :attr:`layers`); a module
                the forward pass calls several times (ResNet's ``layer1.0.relu``) is named per
                call: ``"layer1.0.relu:0"``, ``"layer1.0.relu:1"``.
            channel: a channel (feature map) index, or a list of them.
            position: ``(row, col)`` of the activation in the feature map; by default the
                strongest activation of each channel in each image. Not used for ``[N, C]``
                layer outputs (linear layers), where the channel is the unit.

        Returns:
            ``[N, C, H, W]`` (``x``'s shape), or ``[N, K, C, H, W]`` when ``channel`` is a list.

        Example:
            >>> rec = dn.project(x, layer="conv2", channel=[0, 5])   # doctest: +SKIP
            >>> rec.shape                                            # doctest: +SKIP
            torch.Size([8, 2, 1, 28, 28])
        """
        x = self._check_input(x)
        probe = self._probe(x)
        info = self._layer(probe, layer)
        assert info.out_shape is not None
        chans, single = self._channels(channel, info.out_shape[0])
        n, k = x.shape[0], len(chans)
        img = torch.arange(n).repeat_interleave(k)
        chan = torch.tensor(chans).repeat(n)
        spatial = len(info.out_shape) == 3
        expected: Tensor | None = None
        if not spatial:
            if position is not None:
                raise InputError(
                    f"layer {layer!r} outputs [N, {info.out_shape[0]}] vectors, which have no "
                    "positions; drop position="
                )
            rows = cols = torch.zeros(n * k, dtype=torch.long)
            expected = self._values(x, layer)[img.to(x.device), chan.to(x.device)]
        elif position is not None:
            try:
                r, c = (int(p) for p in position)
            except (TypeError, ValueError):
                raise InputError(f"position must be a (row, col) pair, got {position!r}") from None
            h, w = info.out_shape[1:]
            if not (0 <= r < h and 0 <= c < w):
                raise InputError(
                    f"position {(r, c)} is outside the {h}x{w} feature map of {layer!r} "
                    f"(rows 0..{h - 1}, cols 0..{w - 1})"
                )
            rows = torch.full((n * k,), r, dtype=torch.long)
            cols = torch.full((n * k,), c, dtype=torch.long)
            expected = self._values(x, layer)[img.to(x.device), chan.to(x.device), r, c]
        else:
            acts = self._values(x, layer)[:, chans]  # [N, K, h, w]
            flat = acts.flatten(2)
            best = flat.argmax(dim=2)  # first maximum on ties
            w = acts.shape[-1]
            rows, cols = (best // w).flatten().cpu(), (best % w).flatten().cpu()
            expected = flat.gather(2, best.unsqueeze(2)).flatten()
        out = x.new_zeros((n * k, *x.shape[1:]))
        for idx, grads, boxes in self._project_seeds(
            x, info, layer, img, chan, rows, cols, expected
        ):
            scatter_windows(out, idx, grads, boxes)
        out = out.view(n, k, *x.shape[1:])
        return out[:, 0] if single else out

    def project_seeds(
        self,
        x: Tensor,
        layer: str,
        image: Sequence[int] | Tensor,
        channel: Sequence[int] | Tensor,
        position: Sequence[tuple[int, int]] | Tensor | None = None,
    ) -> Tensor:
        """Project many single-activation seeds of ``layer`` at once.

        Seed ``s`` is channel ``channel[s]`` of image ``x[image[s]]``, at ``position[s]`` (by
        default its strongest activation in that image). Seeds run on receptive-field crops where
        those are smaller than the image; otherwise each image runs forward once and all of its
        seeds share that pass (:mod:`deconvviz.batched`), and the strongest activations are found
        in that same pass.

        Returns:
            ``[S, C, H, W]`` projections, one per seed.

        Example:
            >>> rec = dn.project_seeds(x, "layer3.5", [0, 0, 1], [4, 9, 4])  # doctest: +SKIP
        """
        from deconvviz.batched import project_shared

        x = self._check_input(x)
        info = self._layer(self._probe(x), layer)
        assert info.out_shape is not None
        img = torch.as_tensor(image, dtype=torch.long).flatten().cpu()
        chan = torch.as_tensor(channel, dtype=torch.long).flatten().cpu()
        if len(img) != len(chan) or len(img) == 0:
            raise InputError(
                f"image and channel must be equally long, non-empty lists (got {len(img)} and "
                f"{len(chan)})"
            )
        if int(img.min()) < 0 or int(img.max()) >= x.shape[0]:
            raise InputError(f"image indices must lie in 0..{x.shape[0] - 1} (x has {x.shape[0]})")
        self._channels(chan.tolist(), info.out_shape[0])
        n_seeds, (h, w) = len(img), (int(x.shape[-2]), int(x.shape[-1]))
        spatial = len(info.out_shape) == 3
        rows: Tensor | None = None
        cols: Tensor | None = None
        if position is not None:
            if not spatial:
                raise InputError(f"layer {layer!r} outputs vectors, which have no positions")
            pos = torch.as_tensor(position, dtype=torch.long).reshape(n_seeds, 2).cpu()
            rows, cols = pos[:, 0], pos[:, 1]
            fh, fw = info.out_shape[1:]
            if not (((rows >= 0) & (rows < fh) & (cols >= 0) & (cols < fw)).all()):
                raise InputError(f"positions must lie in the {fh}x{fw} feature map of {layer!r}")
        zero = torch.zeros(1, dtype=torch.long)
        full = not spatial or self._crop_boxes(info, zero, zero, (h, w))[0] == (0, 0, h, w)
        out = x.new_zeros((n_seeds, *x.shape[1:]))
        if full:
            for idx, grads, boxes, *_ in project_shared(
                self, x, info, layer, img, chan, rows, cols, list(range(n_seeds)), exact_cuda
            ):
                scatter_windows(out, idx, grads, boxes)
            return out
        expected = None
        if rows is None or cols is None:
            acts = self._values(x, layer)[img.to(x.device), chan.to(x.device)]  # [S, h, w]
            flat = acts.flatten(1)
            best = flat.argmax(dim=1)
            rows, cols = (best // acts.shape[-1]).cpu(), (best % acts.shape[-1]).cpu()
            expected = flat.gather(1, best.unsqueeze(1)).flatten()
        for idx, grads, boxes in self._project_seeds(
            x, info, layer, img, chan, rows, cols, expected
        ):
            scatter_windows(out, idx, grads, boxes)
        return out

    # ------------------------------------------------------------------ the batched reverse pass

    def _project_seeds(
        self,
        x: Tensor,
        info: _LayerInfo,
        layer: str,
        img: Tensor,
        chan: Tensor,
        rows: Tensor,
        cols: Tensor,
        expected: Tensor | None = None,
    ) -> Iterator[tuple[Tensor, Tensor, list[tuple[int, int, int, int]]]]:
        """Project seeds ``(img[s], chan[s], rows[s], cols[s])`` of ``layer``, in chunks.

        Yields ``(seed indices, gradients, boxes)``: the gradient of seed ``s`` is nonzero only
        inside ``boxes[j] = (y0, x0, y1, x1)`` of image ``img[s]`` and is given for that box.
        """
        h, w = x.shape[-2:]
        boxes = self._crop_boxes(info, rows, cols, (h, w))
        per_sample = max(info.bytes_per_sample, 1) * 4  # forward, graph, gradients
        groups: dict[tuple[int, int], list[int]] = {}
        for s, (y0, x0, y1, x1) in enumerate(boxes):
            groups.setdefault((y1 - y0, x1 - x0), []).append(s)
        for (bh, bw), members in groups.items():
            if (bh, bw) == (h, w):  # crops cannot help: share each image's forward
                from deconvviz.batched import project_shared

                for idx, grads, sub, *_ in project_shared(
                    self, x, info, layer, img, chan, rows, cols, members, exact_cuda
                ):
                    yield idx, grads, sub
                continue
            cost = per_sample * bh * bw / (h * w)
            chunk = max(1, min(len(members), int(self.max_memory // max(cost, 1))))
            for start in range(0, len(members), chunk):
                idx = torch.tensor(members[start : start + chunk])
                sub = [boxes[i] for i in idx.tolist()]
                crops = gather_windows(x, img[idx], sub)
                jr = info.rf.jump[0] if info.rf is not None else 1
                jc = info.rf.jump[1] if info.rf is not None else 1
                prow = rows[idx] - torch.tensor([b[0] for b in sub]) // jr
                pcol = cols[idx] - torch.tensor([b[1] for b in sub]) // jc
                cropped = (bh, bw) != (h, w)
                given = None if expected is None else expected[idx.to(expected.device)]
                try:
                    grads, values = self._backward(crops, layer, chan[idx], prow, pcol, given)
                except (KeyboardInterrupt, LayerError):
                    raise
                except Exception:
                    if not cropped:
                        raise
                    # The model refuses inputs of another size (a shape check in its forward,
                    # say): project on full images instead, for this layer from now on.
                    info.crop_ok = False
                    grads, _ = self._backward(
                        x[img[idx]], layer, chan[idx], rows[idx], cols[idx], given
                    )
                    self.crop_log.append((layer, (h, w), len(idx), "fallback"))
                    yield idx, grads, [(0, 0, h, w)] * len(idx)
                    continue
                if expected is not None and cropped:
                    want = expected[idx.to(expected.device)].to(values.device, values.dtype)
                    if not _same_values(values, want):
                        warnings.warn(
                            f"receptive-field crops of {layer!r} disagreed with the full image; "
                            "falling back to full-image projections (please report this model)",
                            DeconvvizWarning,
                            stacklevel=2,
                        )
                        info.crop_ok = False
                        full = [(0, 0, h, w)] * len(idx)
                        grads, _ = self._backward(
                            x[img[idx]], layer, chan[idx], rows[idx], cols[idx], given
                        )
                        self.crop_log.append((layer, (h, w), len(idx), "fallback"))
                        yield idx, grads, full
                        continue
                self.crop_log.append((layer, (bh, bw), len(idx), "crop" if cropped else "full"))
                yield idx, grads, sub

    def _crop_boxes(
        self, info: _LayerInfo, rows: Tensor, cols: Tensor, size: tuple[int, int]
    ) -> list[tuple[int, int, int, int]]:
        """Per seed, the aligned input crop that holds its whole receptive field."""
        h, w = size
        rf = info.rf
        full = (0, 0, h, w)
        if not self.crop or rf is None or not info.crop_ok:
            return [full] * len(rows)
        sides = []
        for dim, total in ((0, h), (1, w)):
            jump, start, end = rf.jump[dim], rf.start[dim], rf.end[dim]
            # the receptive field, plus the offset of its start from the stride grid (crops must
            # start on the grid so that pooling windows and padded borders stay those of the
            # full image; every receptive field starts at the same offset from it)
            span = end - start + 1 + start % jump
            if span >= 0.75 * total:
                return [full] * len(rows)
            pos = (rows if dim == 0 else cols).tolist()
            last = max(0, (total - span) // jump * jump)  # aligned origin of the end crops
            side = []
            for p in pos:
                lo = p * jump + start
                o = max(0, lo // jump * jump)
                o = min(o, last)
                side.append((o, min(total, max(o + span, total if o == last else 0))))
            sides.append(side)
        return [(a[0], b[0], a[1], b[1]) for a, b in zip(sides[0], sides[1], strict=True)]

    def _backward(
        self,
        inp: Tensor,
        layer: str,
        chan: Tensor,
        prow: Tensor,
        pcol: Tensor,
        values: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Forward ``inp`` to ``layer``, seed one activation per item with its value, walk back.

        Returns the gradients and the seeded activations' values *as computed on* ``inp`` (which
        the caller compares with the full image's to catch a wrong crop).

        When ``layer`` is a plain convolution (no hooks) and the seeds' values are known, the
        forward pass stops at the convolution's *input*: the reverse step of a one-activation
        seed through a convolution is just that filter, scaled by the value, placed at the
        activation's position (the transposed filters applied to a one-hot), so the convolution
        itself need not run; its value at the seed is one dot product of that filter with the
        input window.
        """
        with torch.inference_mode(False):
            # tensors made inside torch.inference_mode cannot take part in autograd: copy them
            chan, prow, pcol = (_normal(t) for t in (chan, prow, pcol))
            values = None if values is None else _normal(values)
            xin = inp.detach().clone().requires_grad_(True)
            module = self._modules[_split_layer(layer)[0]]
            if values is not None and _plain_conv(module):
                return self._backward_conv(xin, module, layer, chan, prow, pcol, values)  # type: ignore[arg-type]
            res = self._run(xin, layer, grad=True, stop=True)
            out = res.target
            assert out is not None
            b = torch.arange(out.shape[0], device=out.device)
            chan = chan.to(out.device)
            if out.dim() == 4:
                index: tuple[Tensor, ...] = (b, chan, prow.to(out.device), pcol.to(out.device))
            else:
                index = (b, chan)
            own = out[index].detach()
            seed = torch.zeros_like(out)
            seed[index] = own
            if not out.requires_grad:
                return torch.zeros_like(xin).detach(), own
            with torch.enable_grad(), exact_cuda(xin, self._names):
                (g,) = torch.autograd.grad(out, xin, seed, allow_unused=True)
            return (torch.zeros_like(xin).detach() if g is None else g.detach()), own

    def _backward_conv(
        self,
        xin: Tensor,
        module: nn.Conv2d,
        layer: str,
        chan: Tensor,
        prow: Tensor,
        pcol: Tensor,
        values: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """``_backward`` for a plain convolution: its filters placed at the seeds, no conv run."""
        res = self._run(xin, layer, grad=True, stop=True, target_input=True)
        tin = res.target
        assert tin is not None
        unit = place_filters(module, tin.shape, chan, prow, pcol, torch.ones_like(values))
        own = (unit * tin.detach()).sum(dim=(1, 2, 3))
        if module.bias is not None:
            own = own + module.bias.detach()[chan.to(own.device)]
        seed_in = unit * values.to(unit.device, unit.dtype).view(-1, 1, 1, 1)
        if tin is xin:
            return seed_in.detach(), own
        if not tin.requires_grad:
            return torch.zeros_like(xin).detach(), own
        with torch.enable_grad(), exact_cuda(xin, self._names):
            (g,) = torch.autograd.grad(tin, xin, seed_in, allow_unused=True)
        return (torch.zeros_like(xin).detach() if g is None else g.detach()), own


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's first floating parameter (CPU, float32 without any)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


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


def _normal(t: Tensor) -> Tensor:
    """``t``, or a normal copy of it when it was made inside ``torch.inference_mode``."""
    return t.clone() if t.is_inference() else t


def _same_values(got: Tensor, want: Tensor) -> bool:
    """Whether activations computed on crops equal the full image's, up to rounding.

    The tolerance is ``sqrt(eps)`` of the dtype (1.5e-8 in float64, 3.5e-4 in float32), relative
    to each value and to the largest value of the batch: rounding differs between a crop and the
    full image (another summation order), a wrong crop changes values at the scale of the layer.
    """
    if got.shape != want.shape:
        return False
    if not got.is_floating_point():
        return bool(torch.equal(got, want))
    r = float(torch.finfo(got.dtype).eps) ** 0.5
    scale = float(torch.maximum(want.abs().max(), got.abs().max()))
    return bool(torch.allclose(got, want, rtol=r, atol=r * scale))


def _split_layer(layer: str) -> tuple[str, int | None]:
    """``"layer1.0.relu:1"`` -> ``("layer1.0.relu", 1)``; a plain name -> ``(name, None)``."""
    name, sep, call = layer.rpartition(":")
    if sep and call.isdigit():
        return name, int(call)
    return layer, None


def _hooked(module: nn.Module) -> bool:
    """Whether forward or backward hooks (the module's own or global ones) may change what the
    module computes."""
    own = (
        module._forward_hooks,
        module._forward_pre_hooks,
        module._backward_hooks,
        module._backward_pre_hooks,
    )
    glob = torch.nn.modules.module
    global_ = (
        getattr(glob, name, None)
        for name in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    )
    return any(bool(d) for d in own) or any(bool(d) for d in global_)


def _plain_conv(module: nn.Module) -> bool:
    """A Conv2d whose forward is PyTorch's own, with zero padding given as numbers, and no hooks
    that could change its input or output."""
    return (
        isinstance(module, nn.Conv2d)
        and not _hooked(module)
        and type(module).forward is nn.Conv2d.forward
        and type(module)._conv_forward is nn.Conv2d._conv_forward
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def place_filters(
    conv: nn.Conv2d,
    input_shape: Sequence[int],
    channel: Tensor,
    row: Tensor,
    col: Tensor,
    value: Tensor,
) -> Tensor:
    """The transposed filters of ``conv`` applied to one-activation seeds, without a convolution.

    Seed ``s`` is ``value[s]`` at ``(channel[s], row[s], col[s])`` of the convolution's output;
    the result ``[S, in_channels, H, W]`` is filter ``channel[s]`` scaled by the value and placed
    where that output looked (stride, padding, dilation and groups honoured). Equal to
    ``transposed_conv2d`` of the one-hot seeds (tested).
    """
    weight = conv.weight.detach()
    s_count = len(channel)
    cin, h, w = int(input_shape[1]), int(input_shape[-2]), int(input_shape[-1])
    groups = conv.groups
    cin_g = cin // groups
    kh, kw = weight.shape[-2:]
    sh, sw = (int(v) for v in conv.stride)
    ph, pw = (int(v) for v in conv.padding)  # a number pair: _plain_conv refused "same"
    dh, dw = (int(v) for v in conv.dilation)
    dev = weight.device
    channel, row, col = channel.to(dev), row.to(dev), col.to(dev)
    filt = weight[channel] * value.to(dev, weight.dtype).view(-1, 1, 1, 1)  # [S, cin_g, kh, kw]
    rows = (row * sh)[:, None] + torch.arange(kh, device=dev) * dh  # padded coordinates
    cols = (col * sw)[:, None] + torch.arange(kw, device=dev) * dw
    # every output position's window lies inside the padded input, so this canvas holds it
    canvas = weight.new_zeros((s_count, h + 2 * ph, w + 2 * pw, cin_g))
    canvas[torch.arange(s_count, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]] = (
        filt.permute(0, 2, 3, 1)
    )
    inner = canvas[:, ph : ph + h, pw : pw + w].permute(0, 3, 1, 2)  # [S, cin_g, h, w]
    if groups == 1:
        return inner.contiguous()
    out = weight.new_zeros((s_count, groups, cin_g, h, w))
    group = channel // (conv.out_channels // groups)
    out[torch.arange(s_count, device=dev), group] = inner
    return out.view(s_count, cin, h, w)


def _window_index(
    boxes: Sequence[tuple[int, int, int, int]], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Row and column indices ``[S, h, 1]`` and ``[S, 1, w]`` of equally sized boxes."""
    y0, x0, y1, x1 = (torch.tensor(v, device=device) for v in zip(*boxes, strict=True))
    h, w = int(y1[0] - y0[0]), int(x1[0] - x0[0])
    rows = y0[:, None] + torch.arange(h, device=device)
    cols = x0[:, None] + torch.arange(w, device=device)
    return rows[:, :, None], cols[:, None, :]


def gather_windows(x: Tensor, img: Tensor, boxes: Sequence[tuple[int, int, int, int]]) -> Tensor:
    """``[S, C, h, w]`` crops ``x[img[s], :, y0:y1, x0:x1]`` of equally sized boxes, in one op."""
    rows, cols = _window_index(boxes, x.device)
    picked = x.permute(0, 2, 3, 1)[img.to(x.device)[:, None, None], rows, cols]  # [S, h, w, C]
    return picked.permute(0, 3, 1, 2).contiguous()


def scatter_windows(
    out: Tensor, idx: Tensor, values: Tensor, boxes: Sequence[tuple[int, int, int, int]]
) -> None:
    """``out[idx[s], :, y0:y1, x0:x1] = values[s]`` for equally sized boxes, in one op."""
    rows, cols = _window_index(boxes, out.device)
    view = out.permute(0, 2, 3, 1)  # a view: writing into it writes into out
    view[idx.to(out.device)[:, None, None], rows, cols] = values.permute(0, 2, 3, 1)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode; every module's ``training`` flag is restored afterwards.

    Example:
        >>> with eval_mode(model), torch.no_grad():   # doctest: +SKIP
        ...     logits = model(x)
    """
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in saved:
            m.training = flag


@contextlib.contextmanager
def exact_cuda(x: Tensor, modules: Any) -> Iterator[None]:
    """Context for passes whose numbers must not depend on the device.

    On CUDA: full-precision float32 (no TF32, which changes projections by several percent),
    and cuDNN off where RNNs must run backward in eval mode (captum#328). Restored after."""
    if not x.is_cuda:
        yield
        return
    cudnn = torch.backends.cudnn
    rnn = any(isinstance(m, nn.RNNBase) for m in modules)
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with cudnn.flags(
            enabled=cudnn.enabled and not rnn,
            benchmark=cudnn.benchmark,
            deterministic=cudnn.deterministic,
            allow_tf32=False,
        ):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


def attach(
    model: nn.Module,
    rule: str = "deconvnet",
    strict: bool = False,
    *,
    crop: bool = True,
    max_memory: int = DEFAULT_MAX_MEMORY,
    warn: bool = True,
) -> Deconvnet:
    """Attach deconvnet reverse paths to ``model``.

    Args:
        model: any ``nn.Module`` that maps ``[N, C, H, W]`` images to outputs. It is never
            modified: no attribute is flipped and no hook stays behind.
        rule: ReLU step of the reverse path: ``"deconvnet"`` (Zeiler & Fergus, ``relu(g)``),
            ``"gradient"`` (saliency) or ``"guided"`` (guided backprop); see
            :mod:`deconvviz.rules`.
        strict: refuse models with activations that have no deconvnet rule (tanh, GELU,
            LeakyReLU, ...) instead of warning and using their plain gradient.
        crop: run each seed on the crop of the input that holds its receptive field (same
            result, much faster); ``False`` forces full-image passes.
        max_memory: bytes a batch of seeds may take; larger jobs are chunked.
        warn: warn about layers without a deconvnet rule.

    Returns:
        A :class:`Deconvnet`; use it as a context manager or call ``detach()``.

    Example:
        >>> with deconvviz.attach(model) as dn:                           # doctest: +SKIP
        ...     rec = dn.project(x, layer="features.3", channel=[0, 5, 9])  # [N, 3, C, H, W]
    """
    return Deconvnet(model, rule, strict, crop=crop, max_memory=max_memory, warn=warn)


def layer_output(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    """The output of ``model``'s ``layer`` for input ``x`` (forward stopped there, no grad).

    The model runs in eval mode for this call; its ``training`` flags are restored after.

    Example:
        >>> acts = deconvviz.layer_output(model, x, "conv2")   # doctest: +SKIP
    """
    with Deconvnet(model, warn=False) as dn:
        return dn.layer_output(x, layer)
