"""The deconvnet engine: :func:`attach` and the :class:`Deconvnet` handle.

How it works (see ``docs/method.md``):

* Every linear step of a deconvnet's reverse path (transposed filters, unpooling with switches,
  ``W^T``, BatchNorm scaling, average-pool spreading, residual adds, concatenations) is exactly the
  autograd backward of the forward op. Only the ReLU step differs. So the engine runs the
  model's own forward under a :class:`torch.overrides.TorchFunctionMode`
  (:class:`~deconvviz.engine.swap.ReluSwap`) that replaces every ReLU *call* -- ``nn.ReLU``
  (in-place or not), ``F.relu``, ``torch.relu``, ``x.relu()``, ``relu_``, and ReLUs spelt
  ``clamp(x, min=0)``, ``torch.maximum(x, zeros)`` or ``F.threshold(x, 0, 0)`` -- with an
  autograd function whose backward is the chosen rule (:mod:`deconvviz.engine.rules`), then asks
  autograd for the gradient of the seeded layer output with respect to the input. Functional
  ReLUs, reused ReLU modules and skip connections are all covered because the rule acts on each
  call.
* A projection's seed is one activation (its own value), so its reverse path is nonzero only in
  that activation's receptive field. When the receptive field can be followed (see
  :mod:`deconvviz.engine.receptive`), each seed runs on a crop of the input that holds its
  receptive field, aligned to the layer's stride (:mod:`deconvviz.engine.crops`); this gives
  exactly the same result as the full image (tested) and is what makes projecting every channel
  of a layer fast. Downstream of any op whose effect depends on the absolute position the
  receptive field is not followed and full images are used; every crop is also checked: the
  seed's value computed on the crop must equal the full image's, or the engine warns and uses
  full images for that layer.
* Nothing is attached to the model between calls: the hooks of a pass belong to a
  :class:`~deconvviz.engine.tracer.Tracer`, which removes them when the pass ends, however it
  ends; ``training`` flags are restored; parameters never get ``.grad``.
"""

from __future__ import annotations

import warnings
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz._util import DEFAULT_MAX_MEMORY, autocast, check_precision, items_within
from deconvviz.checks import check_batch, check_channels, model_device_dtype
from deconvviz.engine.crops import (
    Box,
    crop_boxes,
    gather_windows,
    place_filters,
    plain_conv,
    project_shared,
    same_values,
    scatter_windows,
)
from deconvviz.engine.receptive import ReceptiveField, RFTracker
from deconvviz.engine.rules import Rule, describe_rule, get_rule
from deconvviz.engine.support import _CONTAINERS, has_no_rule, step_for
from deconvviz.engine.swap import Event, ReluSwap
from deconvviz.engine.tracer import Tracer, call_key, exact_cuda, split_call
from deconvviz.errors import (
    DeconvvizError,
    InputError,
    LayerError,
    NonFiniteError,
    UnsupportedLayerError,
    unknown_name,
)

__all__ = [
    "Deconvnet",
    "DeconvvizWarning",
    "LayerGeometry",
    "attach",
    "batch_images",
    "layer_output",
    "model_device_dtype",
    "receptive_field",
]


#: ``(seed indices, gradients, boxes)``: the gradient of seed ``s`` is nonzero only inside its
#: box ``(y0, x0, y1, x1)`` of its image, and is given for that box.
Windows = tuple[Tensor, Tensor, list[Box]]


#: Layers whose forward depends on ``training`` (projections run in eval mode).
_MODE_DEPENDENT: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.dropout._DropoutNd,
    nn.modules.instancenorm._InstanceNorm,
)


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


@dataclass
class _Probe:
    layers: dict[str, _LayerInfo]
    order: list[str]
    events: list[Event]
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class _Seeds:
    """A chunk of seeds: their indices in the call's seed list, images, channels, positions."""

    idx: Tensor
    img: Tensor
    chan: Tensor
    rows: Tensor
    cols: Tensor


#: A layer: its ``named_modules()`` name (``"name:call"`` for one call of a module run several
#: times per pass), or the submodule itself.
Layer = str | nn.Module


@dataclass(frozen=True)
class LayerGeometry:
    """What the forward pass says about one layer call, for inputs of one shape.

    Attributes:
        layer: the layer call, as :meth:`Deconvnet.project` takes it.
        out_shape: output shape without the batch dimension (``(C, h, w)`` or ``(C,)``).
        receptive_field: the activations' receptive field, or ``None`` where it cannot be
            followed (after a flatten or a global pooling, say).
        calls: how many times the forward pass calls the layer's module.
    """

    layer: str
    out_shape: tuple[int, ...]
    receptive_field: ReceptiveField | None
    calls: int


# ---------------------------------------------------------------------- the handle


class Deconvnet:
    """Deconvnet reverse paths attached to a model. Create it with :func:`attach`.

    Attributes:
        model: the model (never modified).
        rule: ``"deconvnet"``, ``"gradient"`` or ``"guided"`` (or a registered rule's name).
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
        precision: str = "fp32",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(
                f"attach() needs a torch.nn.Module, got {type(model).__name__}; "
                "pass the model itself"
            )
        self.model = model
        self.rule = rule
        self._rule: Rule = get_rule(rule)
        self.strict = strict
        self.crop = crop
        self.max_memory = int(max_memory)
        #: ``"fp32"`` (the model's dtype) or ``"bf16"`` (every forward pass, and so its
        #: backward, under bfloat16 autocast)
        self.precision = check_precision(precision)
        self._warn = warn
        self._attached = True
        self._index_modules()
        self._probes: dict[tuple, _Probe] = {}
        #: one entry per batch of seeds projected: ``(layer, (crop height, crop width), seeds,
        #: how)`` with how ``"crop"`` (verified against the full image's values), ``"full"``
        #: (full-image pass) or ``"fallback"`` (a crop disagreed or failed; redone on full
        #: images). For tests and debugging; the last 10 000 batches are kept.
        self.crop_log: deque[tuple[str, tuple[int, int], int, str]] = deque(maxlen=10_000)
        self._warned: set[tuple[str, str]] = set()
        self._check_rules()

    def _index_modules(self) -> None:
        """Name every submodule (first name wins for a module registered twice)."""
        self._names: dict[nn.Module, str] = {}
        self._modules: dict[str, nn.Module] = {}
        for name, module in self.model.named_modules():
            if module is self.model:
                continue
            self._modules[name] = module
            self._names.setdefault(module, name)
        self.layers: list[str] = [
            n for n, m in self._modules.items() if not isinstance(m, (nn.ModuleList, nn.ModuleDict))
        ]
        self._layer_names = list(self.layers)
        if not self.layers:
            raise InputError(
                f"the model ({type(self.model).__name__}) has no submodules, so there is no layer "
                "to project; build it from nn.Module layers (nn.Conv2d, nn.ReLU, ...) as attributes"
            )

    def _check_rules(self) -> None:
        """Refuse (strict) or warn about layers with no deconvnet rule."""
        no_rule = [n for n, m in self._modules.items() if has_no_rule(m)]
        if not no_rule:
            return
        listed = ", ".join(f"{n!r} ({type(self._modules[n]).__name__})" for n in no_rule)
        if self.strict:
            raise UnsupportedLayerError(
                f"strict mode: these layers have no deconvnet rule: {listed}; replace them by "
                "ReLU, or attach with strict=False to use their plain gradient"
            )
        if self._warn:
            warnings.warn(
                f"no deconvnet rule for {listed}: their plain gradient is used; "
                "attach(..., strict=True) refuses such models",
                DeconvvizWarning,
                stacklevel=4,
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
                f"  {name:<{width}}  {type(module).__name__:<18} -> {step_for(module, relu_step)}"
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
    #
    # Three kinds of forward pass, each one Tracer (which owns the hooks) entering one ReluSwap:
    #   _trace_geometry: the whole forward, no autograd, following receptive fields;
    #   _forward_to:     stopped after a layer (autograd with the rule's ReLUs, or values only);
    #   _input_of:       stopped just before a layer, with autograd (the convolution shortcut).

    def _tracer(
        self, rule: Rule | None, tracker: RFTracker | None = None
    ) -> tuple[Tracer, ReluSwap]:
        tracer = Tracer(self.model, self._names)
        swap = ReluSwap(rule, tracer.stack, tracker)
        tracer.mode = swap
        return tracer, swap

    def _trace_geometry(self, x: Tensor) -> tuple[_Probe, Counter[str]]:
        """One whole forward pass of ``x`` that records every layer call's geometry."""
        tracker = RFTracker()
        tracer, swap = self._tracer(None, tracker)
        infos: dict[str, _LayerInfo] = {}
        size = (int(x.shape[-2]), int(x.shape[-1]))
        bad: list[tuple[str, nn.Module, Tensor]] = []  # the first layer with NaN/inf output

        starts: dict[tuple[str, int], tuple[int, int]] = {}

        @tracer.on_call
        def start(name: str, call: int, module: nn.Module, args: Any) -> None:
            starts[(name, call)] = (len(swap.events), len(swap.calls))

        @tracer.on_return
        def record(name: str, call: int, module: nn.Module, args: Any, out: Any) -> None:
            swap.note(out)  # a custom autograd.Function's output returned by the layer itself
            first_event, first_call = starts.get((name, call), (len(swap.events), len(swap.calls)))
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
                not bad
                and isinstance(out, Tensor)
                and out.is_floating_point()
                and not bool(torch.isfinite(out).all())
            ):
                bad.append((call_key(name, call) if call else name, module, out))
            info = _LayerInfo(
                events_before=len(swap.events), batch_stats=tuple(dict.fromkeys(swap.batch_stats))
            )
            if isinstance(out, Tensor):
                info.out_shape = tuple(out.shape[1:])
                info.rf = tracker.field(out, size)
                info.bytes_per_sample = tracker.bytes_per_sample
            infos[call_key(name, call)] = info
            if call == 0:
                infos[name] = info

        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise NonFiniteError(
                f"the input holds {_non_finite(x)}; give images with finite values"
            )
        # The pass records autograd (one input), so that the graph shows custom
        # autograd.Functions, whose backward the rule cannot reach.
        swap.recording = True
        with torch.inference_mode(False), tracer:
            leaf = _normal(x).detach().requires_grad_(True)
            with torch.enable_grad():
                x = leaf.clone()  # not a leaf: the model may change its input in place
            tracker.watch(x)
            tracer.run(x, grad=True)
        if bad:
            name, module, out = bad[0]
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
        for name, n in tracer.counts.items():
            for key in (name, *(call_key(name, k) for k in range(n))):
                if key in infos:
                    infos[key].calls = n
        probe = _Probe(infos, list(tracer.order), swap.events, tuple(x.shape[1:]))
        return probe, Counter(tracer.counts)

    def _forward_to(self, x: Tensor, layer: str, *, grad: bool) -> Tensor:
        """The output of ``layer`` (``"name"`` or ``"name:call"``), the pass stopped there.

        ``grad``: recorded by autograd with the rule's ReLUs (for a backward pass); otherwise a
        copy of the values, no graph."""
        tracer, _ = self._tracer(self._rule if grad else None)
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
            tracer.run(_normal(x), grad=grad, stop_after=layer)
        assert got, f"layer {layer!r} did not run"
        return got[0]

    def _input_of(self, x: Tensor, layer: str) -> Tensor:
        """The input of ``layer`` (recorded by autograd with the rule's ReLUs); it never runs."""
        tracer, _ = self._tracer(self._rule)
        name, call = split_call(layer)
        got: list[Tensor] = []

        @tracer.on_call
        def keep(n: str, c: int, module: nn.Module, args: Any) -> None:
            if n == name and c == (call or 0):
                got.append(args[0])

        with torch.inference_mode(False), tracer, autocast(x.device, self.precision):
            tracer.run(_normal(x), grad=True, stop_before=layer)
        assert got, f"layer {layer!r} did not run"
        return got[0]

    def _probe(self, x: Tensor) -> _Probe:
        """A full forward pass on one input, learning every layer's geometry (cached per shape)."""
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        probe = self._probes.get(key)
        if probe is not None:
            return probe
        try:
            probe, counts = self._trace_geometry(x[:1].detach().clone())
        except (DeconvvizError, KeyboardInterrupt):
            raise
        except Exception as exc:  # torch's own message, wrapped with the fix
            raise InputError(self._forward_failed(x, exc)) from exc
        self._probes[key] = probe
        known = set(self._layer_names)
        called: list[str] = []
        for n in probe.order:
            if n in known:
                calls = counts[n]
                called += [n] if calls == 1 else [call_key(n, k) for k in range(calls)]
        self.layers = called + [n for n in self._layer_names if n not in probe.layers]
        return probe

    def _forward_failed(self, x: Tensor, exc: Exception) -> str:
        first_conv = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
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

    def check_input(self, x: Any) -> Tensor:
        """``x`` if it is a batch the model can take (``[N, C, H, W]``, floating point, on the
        model's device and dtype); an :class:`~deconvviz.errors.InputError` naming the fix
        otherwise."""
        self._check_attached()
        x = check_batch(x, "x", finite=False)
        # Unlike checks.check_images, a dtype or device other than the model's is refused, not
        # converted: the engine never copies the caller's batch behind their back.
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
        """The probe's record of ``layer``, once it is known to be projectable."""
        if not isinstance(layer, str):
            raise LayerError(f"layer must be a name as named_modules() spells it, got {layer!r}")
        info = self._layer_call(probe, layer)
        if info.out_shape is None:
            raise LayerError(
                f"layer {layer!r} does not return a tensor; pick one of its submodules"
            )
        if len(info.out_shape) not in (1, 3):
            raise LayerError(
                f"layer {layer!r} outputs shape [N, {', '.join(map(str, info.out_shape))}]; only "
                "[N, C, H, W] feature maps and [N, C] vectors can be projected"
            )
        self._check_path(probe, info, layer)
        self._check_batch(info, layer)
        return info

    def _check_batch(self, info: _LayerInfo, layer: str) -> None:
        """Refuse (strict) or say once that a layer's activations depend on the whole batch."""
        if not info.batch_stats:
            return
        where = ", ".join(repr(n or "forward") for n in info.batch_stats)
        if self.strict:
            raise UnsupportedLayerError(
                f"strict mode: the path to {layer!r} normalises with the batch's own statistics "
                f"({where}: BatchNorm without running statistics), so every activation and its "
                "projection depend on which images share the batch; give the layer running "
                "statistics (track_running_stats=True), or attach with strict=False"
            )
        self._warn_once(
            ("batch", layer),
            f"the path to {layer!r} normalises with the batch's own statistics ({where}): its "
            "activations and projections depend on which images share the batch; each call "
            "projects with the whole batch it is given (no crops), so another batch gives "
            "another answer; attach(..., strict=True) refuses this",
        )

    def _check_train_mode(self) -> None:
        """Say once that a model in train() mode is projected in eval mode."""
        layers = [
            n
            for n, m in self._modules.items()
            if m.training
            and isinstance(m, _MODE_DEPENDENT)
            and getattr(m, "track_running_stats", True)  # batch statistics either way
        ]
        if not layers:
            return
        shown = ", ".join(repr(n) for n in layers[:6]) + (
            f" (+{len(layers) - 6} more)" if len(layers) > 6 else ""
        )
        self._warn_once(
            ("train", ""),
            f"the model is in train() mode; deconvviz projects in eval mode (BatchNorm uses its "
            f"running statistics, Dropout is off), which changes {shown}; call model.eval() "
            "first to silence this",
        )

    def _warn_once(self, key: tuple[str, str], message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(message, DeconvvizWarning, stacklevel=5)

    def _layer_call(self, probe: _Probe, layer: str) -> _LayerInfo:
        """Resolve ``"name"`` or ``"name:call"`` to one call the forward pass makes."""
        name, call = split_call(layer)
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
        if call is None:
            return info
        if call >= info.calls:
            raise LayerError(
                f"layer {name!r} is called {info.calls} time(s) per forward pass; its calls "
                f"are '{name}:0' ... '{name}:{info.calls - 1}'"
            )
        return probe.layers[call_key(name, call)]

    def _check_path(self, probe: _Probe, info: _LayerInfo, layer: str) -> None:
        """Refuse (strict) or warn once about activations with no rule on the path to a layer."""
        unsupported = [e for e in probe.events[: info.events_before] if not e.supported]
        if not unsupported:
            return
        where = ", ".join(sorted({f"{e.func} in {e.module or 'forward'!r}" for e in unsupported}))
        if self.strict:
            raise UnsupportedLayerError(
                f"strict mode: the path to {layer!r} calls activations with no deconvnet rule "
                f"({where}); use ReLU, or attach with strict=False to use their plain gradient"
            )
        key = (layer, where)
        # what the engine cannot see through is said even where warn=False (which only hides
        # the plain activations without a rule, tanh and the like, that the caller knows of)
        hidden = any("(" in e.func for e in unsupported)
        checked = ""
        if any("unknown type" in e.func for e in unsupported):
            checked = (
                " (a layer of unknown type is checked by tracing its forward: it gets the "
                "exact reverse step when every torch call it makes is linear in its input, a "
                "flip, a crop, a scaling; a ReLU inside it gets the rule)"
            )
        if (self._warn or hidden) and key not in self._warned:
            self._warned.add(key)
            warnings.warn(
                f"no deconvnet rule for {where} on the path to {layer!r}: their plain "
                f"gradient is used{checked}; attach(..., strict=True) refuses this",
                DeconvvizWarning,
                stacklevel=5,
            )

    # ------------------------------------------------------------------ public API

    def layer_name(self, layer: Layer) -> str:
        """``layer`` as the engine names it: a name is returned as it is; one of the model's own
        submodules becomes its ``named_modules()`` name (a module run several times per forward
        pass then still needs its call: ``f"{dn.layer_name(m)}:1"``).

        Example:
            >>> dn.layer_name(model.features[3])   # doctest: +SKIP
            'features.3'
        """
        if isinstance(layer, nn.Module):
            name = self._names.get(layer)
            if name is None:
                raise LayerError(
                    f"the {type(layer).__name__} passed as the layer is not a submodule of the "
                    "model; pass one of the model's own modules (e.g. model.features[3]) or its "
                    "name"
                )
            return name
        return layer

    def layer_geometry(self, x: Tensor, layer: Layer) -> LayerGeometry:
        """Output shape, receptive field and call count of ``layer`` for inputs shaped like
        ``x`` (one forward pass per input shape, cached).

        Example:
            >>> dn.layer_geometry(x, "conv2").out_shape   # doctest: +SKIP
            (64, 14, 14)
        """
        layer = self.layer_name(layer)
        x = self.check_input(x)
        info = self._layer(self._probe(x), layer)
        assert info.out_shape is not None
        return LayerGeometry(layer, info.out_shape, info.rf, info.calls)

    def activation_calls(self, x: Tensor) -> list[Event]:
        """The activation-function calls of the forward pass on inputs shaped like ``x``, in
        order: where each happened (innermost module), the function, and whether it has a rule."""
        return list(self._probe(self.check_input(x)).events)

    def layer_output(self, x: Tensor, layer: Layer) -> Tensor:
        """The output of ``layer`` for input ``x`` (forward stopped there, no autograd graph)."""
        layer = self.layer_name(layer)
        x = self.check_input(x)
        self._layer(self._probe(x), layer)
        return self._values(x, layer)

    def _values(self, x: Tensor, layer: str) -> Tensor:
        return self._forward_to(x.detach(), layer, grad=False)

    def receptive_field(self, layer: Layer, input_shape: Sequence[int]) -> ReceptiveField | None:
        """Receptive field of ``layer`` for inputs of shape ``input_shape`` (``None`` when the
        layer's output is not a spatial map that can be followed back, e.g. after flatten)."""
        layer = self.layer_name(layer)
        self._check_attached()
        device, dtype = model_device_dtype(self.model)
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == 3:
            shape = (1, *shape)
        x = self.check_input(torch.zeros(shape, dtype=dtype, device=device))
        return self._layer(self._probe(x), layer).rf

    def project(
        self,
        x: Tensor,
        layer: Layer,
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
        layer = self.layer_name(layer)
        x = self.check_input(x)
        info = self._layer(self._probe(x), layer)
        assert info.out_shape is not None
        chans, single = check_channels(channel, info.out_shape[0])
        self._check_train_mode()
        n, k = x.shape[0], len(chans)
        img = torch.arange(n).repeat_interleave(k)
        chan = torch.tensor(chans).repeat(n)
        rows, cols, expected = self._positions(x, info, layer, img, chan, chans, position)
        out = x.new_zeros((n * k, *x.shape[1:]))
        if info.batch_stats:
            windows = self._project_batch(x, info, layer, img, chan, rows, cols)
        else:
            windows = self._project_seeds(x, info, layer, img, chan, rows, cols, expected)
        for idx, grads, boxes in windows:
            scatter_windows(out, idx, grads, boxes)
        out = out.view(n, k, *x.shape[1:])
        return out[:, 0] if single else out

    def _positions(
        self,
        x: Tensor,
        info: _LayerInfo,
        layer: str,
        img: Tensor,
        chan: Tensor,
        chans: list[int],
        position: tuple[int, int] | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``project``'s seeds: rows, columns and values (the given position, or the strongest
        activation of each channel in each image)."""
        assert info.out_shape is not None
        count, dev = len(img), x.device
        if len(info.out_shape) != 3:
            if position is not None:
                raise InputError(
                    f"layer {layer!r} outputs [N, {info.out_shape[0]}] vectors, which have no "
                    "positions; drop position="
                )
            zeros = torch.zeros(count, dtype=torch.long)
            return zeros, zeros, self._values(x, layer)[img.to(dev), chan.to(dev)]
        if position is not None:
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
            rows = torch.full((count,), r, dtype=torch.long)
            cols = torch.full((count,), c, dtype=torch.long)
            return rows, cols, self._values(x, layer)[img.to(dev), chan.to(dev), r, c]
        acts = self._values(x, layer)[:, chans]  # [N, K, h, w]
        flat = acts.flatten(2)
        best = flat.argmax(dim=2)  # first maximum on ties
        w = acts.shape[-1]
        rows, cols = (best // w).flatten().cpu(), (best % w).flatten().cpu()
        return rows, cols, flat.gather(2, best.unsqueeze(2)).flatten()

    def project_seeds(
        self,
        x: Tensor,
        layer: Layer,
        image: Sequence[int] | Tensor,
        channel: Sequence[int] | Tensor,
        position: Sequence[tuple[int, int]] | Tensor | None = None,
        *,
        values: Sequence[float] | Tensor | None = None,
    ) -> Tensor:
        """Project many single-activation seeds of ``layer`` at once.

        Seed ``s`` is channel ``channel[s]`` of image ``x[image[s]]``, at ``position[s]`` (by
        default its strongest activation in that image). Seeds run on receptive-field crops where
        those are smaller than the image; otherwise each image runs forward once and all of its
        seeds share that pass (:func:`deconvviz.engine.crops.project_shared`), and the strongest
        activations are found in that same pass.

        ``values`` (with ``position``): the seeds' activation values, when known (from a dataset
        scan, say); each crop's values are then checked against them, as :meth:`project` does.

        Returns:
            ``[S, C, H, W]`` projections, one per seed.

        Example:
            >>> rec = dn.project_seeds(x, "layer3.5", [0, 0, 1], [4, 9, 4])  # doctest: +SKIP
        """
        layer = self.layer_name(layer)
        windows = self.project_windows(x, layer, image, channel, position, values=values)
        out = x.new_zeros((int(torch.as_tensor(image).numel()), *x.shape[1:]))
        for idx, grads, boxes in windows:
            scatter_windows(out, idx, grads, boxes)
        return out

    def project_windows(
        self,
        x: Tensor,
        layer: Layer,
        image: Sequence[int] | Tensor,
        channel: Sequence[int] | Tensor,
        position: Sequence[tuple[int, int]] | Tensor | None = None,
        *,
        values: Sequence[float] | Tensor | None = None,
    ) -> Iterator[Windows]:
        """:meth:`project_seeds` without assembling full images: yields, batch by batch,
        ``(seed indices, gradients [S', C, h, w], boxes)``, where the gradient of seed ``s`` is
        nonzero only inside its box ``(y0, x0, y1, x1)`` of image ``image[s]`` (a receptive-field
        crop, or the whole image) and is given for that box. The arguments are checked before
        this returns.

        Example:
            >>> for idx, grads, boxes in dn.project_windows(x, "conv2", img, chan, pos):
            ...     ...                                                   # doctest: +SKIP
        """
        layer = self.layer_name(layer)
        x = self.check_input(x)
        info = self._layer(self._probe(x), layer)
        img, chan = self._seed_index(x, info, image, channel)
        rows, cols = self._seed_positions(info, layer, position, len(img))
        self._check_train_mode()
        given = None
        if values is not None:
            if rows is None:
                raise InputError("values= needs position= (the values of the seeds there)")
            given = torch.as_tensor(values, dtype=x.dtype).flatten()
            if len(given) != len(img):
                raise InputError(f"values must hold one value per seed ({len(img)})")
        return self._windows(x, info, layer, img, chan, rows, cols, given)

    def _seed_index(
        self, x: Tensor, info: _LayerInfo, image: Any, channel: Any
    ) -> tuple[Tensor, Tensor]:
        """The seeds' image and channel indices, checked, as CPU tensors."""
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
        check_channels(chan.tolist(), info.out_shape[0])
        return img, chan

    @staticmethod
    def _seed_positions(
        info: _LayerInfo, layer: str, position: Any, n_seeds: int
    ) -> tuple[Tensor | None, Tensor | None]:
        """The seeds' rows and columns, checked; ``None`` when not given (the strongest)."""
        assert info.out_shape is not None
        if position is None:
            return None, None
        if len(info.out_shape) != 3:
            raise InputError(f"layer {layer!r} outputs vectors, which have no positions")
        pos = torch.as_tensor(position, dtype=torch.long).reshape(n_seeds, 2).cpu()
        rows, cols = pos[:, 0], pos[:, 1]
        fh, fw = info.out_shape[1:]
        if not (((rows >= 0) & (rows < fh) & (cols >= 0) & (cols < fw)).all()):
            raise InputError(f"positions must lie in the {fh}x{fw} feature map of {layer!r}")
        return rows, cols

    def _windows(
        self,
        x: Tensor,
        info: _LayerInfo,
        layer: str,
        img: Tensor,
        chan: Tensor,
        rows: Tensor | None,
        cols: Tensor | None,
        values: Tensor | None,
    ) -> Iterator[Windows]:
        """Seeds on whole images (one shared forward per image), or on crops."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if info.batch_stats:
            yield from self._project_batch(x, info, layer, img, chan, rows, cols)
            return
        if self._whole_image(info, (h, w)):
            yield from self._project_full(x, info, layer, img, chan, rows, cols, range(len(img)))
            return
        if rows is not None and cols is not None and values is None:
            # positions given without values: the crops are checked against the full images'
            # values, as project() checks them (one forward pass of the batch)
            acts = self._values(x, layer)
            dev = acts.device
            values = acts[img.to(dev), chan.to(dev), rows.to(dev), cols.to(dev)]
        if rows is None or cols is None:
            acts = self._values(x, layer)[img.to(x.device), chan.to(x.device)]  # [S, h, w]
            flat = acts.flatten(1)
            best = flat.argmax(dim=1)
            rows, cols = (best // acts.shape[-1]).cpu(), (best % acts.shape[-1]).cpu()
            values = flat.gather(1, best.unsqueeze(1)).flatten()
        yield from self._project_seeds(x, info, layer, img, chan, rows, cols, values)

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
    ) -> Iterator[Windows]:
        """Project seeds ``(img[s], chan[s], rows[s], cols[s])`` of ``layer``, in chunks.

        Seeds whose crop is the whole image share each image's forward pass; the others run on
        crops of equal size together, as many as the memory budget allows. ``expected``: the
        seeds' values on the full images, which each crop's values are checked against.
        """
        h, w = int(x.shape[-2]), int(x.shape[-1])
        boxes = self._crop_boxes(info, rows, cols, (h, w))
        groups: dict[tuple[int, int], list[int]] = {}
        for s, (y0, x0, y1, x1) in enumerate(boxes):
            groups.setdefault((y1 - y0, x1 - x0), []).append(s)
        per_sample = max(info.bytes_per_sample, 1) * 4  # forward, graph, gradients
        for (bh, bw), members in groups.items():
            if (bh, bw) == (h, w):  # crops cannot help: share each image's forward
                yield from self._project_full(x, info, layer, img, chan, rows, cols, members)
                continue
            cost = per_sample * bh * bw / (h * w)
            chunk = items_within(self.max_memory, cost, cap=len(members))
            for start in range(0, len(members), chunk):
                idx = torch.tensor(members[start : start + chunk])
                seeds = _Seeds(idx, img[idx], chan[idx], rows[idx], cols[idx])
                given = None if expected is None else expected[idx.to(expected.device)]
                sub = [boxes[i] for i in idx.tolist()]
                yield self._project_crops(x, info, layer, seeds, sub, given)

    def _project_crops(
        self,
        x: Tensor,
        info: _LayerInfo,
        layer: str,
        seeds: _Seeds,
        boxes: list[Box],
        given: Tensor | None,
    ) -> Windows:
        """One chunk of seeds on equally sized crops, each checked against ``given`` values;
        redone on full images when the model refuses the crops or they disagree."""
        crops = gather_windows(x, seeds.img, boxes)
        jr, jc = info.rf.jump if info.rf is not None else (1, 1)
        prow = seeds.rows - torch.tensor([b[0] for b in boxes]) // jr
        pcol = seeds.cols - torch.tensor([b[1] for b in boxes]) // jc
        try:
            grads, values = self._backward(crops, layer, seeds.chan, prow, pcol, given)
        except (KeyboardInterrupt, LayerError):
            raise
        except Exception:
            # The model refuses inputs of another size (a shape check in its forward, say)
            return self._project_fallback(x, info, layer, seeds, given)
        rounding = torch.bfloat16 if self.precision == "bf16" else None
        if given is not None and not same_values(
            values, given.to(values.device, values.dtype), rounding
        ):
            warnings.warn(
                f"receptive-field crops of {layer!r} disagreed with the full image; "
                "falling back to full-image projections (please report this model)",
                DeconvvizWarning,
                stacklevel=4,
            )
            return self._project_fallback(x, info, layer, seeds, given)
        bh, bw = boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1]
        self.crop_log.append((layer, (bh, bw), len(seeds.idx), "crop"))
        return seeds.idx, grads, boxes

    def _project_fallback(
        self, x: Tensor, info: _LayerInfo, layer: str, seeds: _Seeds, given: Tensor | None
    ) -> Windows:
        """Seeds whose crops failed, on full images; this layer uses full images from now on.

        The whole batch ``x`` runs forward, as the caller gave it (a model that disagrees on
        crops may also read across the batch, ``h * h.mean().item()`` say), and each seed walks
        back on its own."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        info.crop_ok = False
        parts = list(
            self._project_batch(x, info, layer, seeds.img, seeds.chan, seeds.rows, seeds.cols)
        )
        self.crop_log.pop()  # _project_batch's entry: this is a fallback
        self.crop_log.append((layer, (h, w), len(seeds.idx), "fallback"))
        idx = seeds.idx[torch.cat([p[0] for p in parts])]
        return idx, torch.cat([p[1] for p in parts]), [(0, 0, h, w)] * len(idx)

    def _project_full(
        self,
        x: Tensor,
        info: _LayerInfo,
        layer: str,
        img: Tensor,
        chan: Tensor,
        rows: Tensor | None,
        cols: Tensor | None,
        members: Sequence[int],
    ) -> Iterator[Windows]:
        """The one whole-image path: each image forward once, its seeds share that pass."""
        yield from project_shared(
            lambda xin: self._forward_to(xin, layer, grad=True),
            x,
            img,
            chan,
            rows,
            cols,
            list(members),
            bytes_per_sample=info.bytes_per_sample,
            max_memory=self.max_memory,
            modules=self._names,
        )
        self.crop_log.append((layer, (int(x.shape[-2]), int(x.shape[-1])), len(members), "full"))

    def _project_batch(
        self,
        x: Tensor,
        info: _LayerInfo,
        layer: str,
        img: Tensor,
        chan: Tensor,
        rows: Tensor | None,
        cols: Tensor | None,
    ) -> Iterator[Windows]:
        """Seeds of a layer whose activations depend on the whole batch (batch statistics):
        the whole of ``x`` forward once, each seed walked back on its own (seeds of different
        images cannot share a backward: the batch statistics couple the images)."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        with torch.inference_mode(False):
            xin = _normal(x).detach().clone().requires_grad_(True)
            out = self._forward_to(xin, layer, grad=True)
            dev = out.device
            if out.dim() == 4 and (rows is None or cols is None):
                best = out.detach()[img.to(dev), chan.to(dev)].flatten(1).argmax(dim=1)
                rows, cols = (best // out.shape[-1]).cpu(), (best % out.shape[-1]).cpu()
            total = len(img)
            for s in range(total):
                n, c = int(img[s]), int(chan[s])
                index: tuple[Any, ...] = (n, c)
                if out.dim() == 4:
                    assert rows is not None and cols is not None
                    index = (n, c, int(rows[s]), int(cols[s]))
                seed = torch.zeros_like(out)
                seed[index] = out[index].detach()
                if not out.requires_grad:
                    g = torch.zeros_like(xin[n])
                else:
                    with torch.enable_grad(), exact_cuda(xin, self._names):
                        (gr,) = torch.autograd.grad(
                            out, xin, seed, retain_graph=s < total - 1, allow_unused=True
                        )
                    g = torch.zeros_like(xin[n]) if gr is None else gr[n].detach()
                yield torch.tensor([s]), g.unsqueeze(0), [(0, 0, h, w)]
        self.crop_log.append((layer, (h, w), len(img), "batch"))

    def _whole_image(self, info: _LayerInfo, size: tuple[int, int]) -> bool:
        """Whether every seed of the layer runs on the whole image (no crop can help)."""
        assert info.out_shape is not None
        zero = torch.zeros(1, dtype=torch.long)
        whole = (0, 0, *size)
        return len(info.out_shape) != 3 or self._crop_boxes(info, zero, zero, size)[0] == whole

    def _crop_boxes(
        self, info: _LayerInfo, rows: Tensor, cols: Tensor, size: tuple[int, int]
    ) -> list[Box]:
        """Per seed, the aligned input crop that holds its whole receptive field (the whole
        image where crops are off, unknown, or failed before for this layer)."""
        usable = self.crop and info.crop_ok
        return crop_boxes(info.rf if usable else None, rows, cols, size)

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
            module = self._modules[split_call(layer)[0]]
            if values is not None and plain_conv(module):
                return self._backward_conv(xin, module, layer, chan, prow, pcol, values)  # type: ignore[arg-type]
            out = self._forward_to(xin, layer, grad=True)
            b = torch.arange(out.shape[0], device=out.device)
            chan = chan.to(out.device)
            if out.dim() == 4:
                index: tuple[Tensor, ...] = (b, chan, prow.to(out.device), pcol.to(out.device))
            else:
                index = (b, chan)
            own = out[index].detach()
            seed = torch.zeros_like(out)
            seed[index] = own
            return self._grad(out, xin, seed), own

    def _grad(self, out: Tensor, xin: Tensor, seed: Tensor) -> Tensor:
        """The reverse path of ``seed`` from ``out`` back to ``xin`` (zeros where none leads)."""
        if out is xin:
            return seed.detach()
        if not out.requires_grad:
            return torch.zeros_like(xin).detach()
        with torch.enable_grad(), exact_cuda(xin, self._names):
            (g,) = torch.autograd.grad(out, xin, seed, allow_unused=True)
        return torch.zeros_like(xin).detach() if g is None else g.detach()

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
        tin = self._input_of(xin, layer)
        unit = place_filters(module, tin.shape, chan, prow, pcol, torch.ones_like(values))
        own = (unit * tin.detach()).sum(dim=(1, 2, 3))
        if module.bias is not None:
            own = own + module.bias.detach()[chan.to(own.device)]
        seed_in = unit * values.to(unit.device, unit.dtype).view(-1, 1, 1, 1)
        return self._grad(tin, xin, seed_in.to(tin.dtype)), own


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


def attach(
    model: nn.Module,
    rule: str = "deconvnet",
    strict: bool = False,
    *,
    crop: bool = True,
    max_memory: int = DEFAULT_MAX_MEMORY,
    warn: bool = True,
    precision: str = "fp32",
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
        precision: ``"fp32"`` (the model's own dtype, exact) or ``"bf16"`` (forward and
            reverse passes under bfloat16 autocast: faster where the hardware has bf16, about
            1% off).

    Returns:
        A :class:`Deconvnet`; use it as a context manager or call ``detach()``.

    Example:
        >>> with deconvviz.attach(model) as dn:                           # doctest: +SKIP
        ...     rec = dn.project(x, layer="features.3", channel=[0, 5, 9])  # [N, 3, C, H, W]
    """
    return Deconvnet(
        model, rule, strict, crop=crop, max_memory=max_memory, warn=warn, precision=precision
    )


def layer_output(model: nn.Module, x: Tensor, layer: Layer) -> Tensor:
    """The output of ``model``'s ``layer`` for input ``x`` (forward stopped there, no grad).

    The model runs in eval mode for this call; its ``training`` flags are restored after.

    Example:
        >>> acts = deconvviz.layer_output(model, x, "conv2")   # doctest: +SKIP
    """
    with Deconvnet(model, warn=False) as dn:
        return dn.layer_output(x, layer)


def receptive_field(
    model: nn.Module, layer: Layer, input_shape: tuple[int, ...]
) -> ReceptiveField | None:
    """The receptive field of ``layer``'s activations for inputs of ``input_shape``.

    Returns ``None`` when the layer's output is not a spatial map whose receptive field can be
    followed (after a flatten or a global pooling, say).

    Example:
        >>> rf = receptive_field(model, "conv2", (1, 1, 28, 28))  # doctest: +SKIP
        >>> rf.size, rf.jump                                      # doctest: +SKIP
        ((14, 14), (2, 2))
    """
    with attach(model, warn=False) as dn:
        return dn.receptive_field(layer, input_shape)
