"""The model's layers as the engine knows them: every submodule's name, the layer a caller means
(a name or the submodule itself), and what the probe pass says about each layer call for inputs
of one shape (its output shape, receptive field and call count: :class:`LayerGeometry`).

One :class:`Geometry` per :class:`~deconvviz.engine.deconvnet.Deconvnet`: it owns the handle's
:class:`~deconvviz.engine.probe.Passes` and keeps one probe per input shape, dtype and device.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from torch import Tensor, nn

from deconvviz.base.checks import call_key
from deconvviz.base.errors import DeconvvizError, InputError, LayerError
from deconvviz.engine.probe import Passes, _Probe, forward_failed
from deconvviz.engine.receptive import ReceptiveField
from deconvviz.engine.rules import Rule, describe_rule
from deconvviz.engine.support import _CONTAINERS, step_for

__all__ = ["Geometry", "Layer", "LayerGeometry"]

#: A layer: its ``named_modules()`` name (``"name:call"`` for one call of a module run several
#: times per pass), or the submodule itself.
Layer = str | nn.Module


@dataclass(frozen=True)
class LayerGeometry:
    """What the forward pass says about one layer call, for inputs of one shape.

    Attributes:
        layer: the layer call, as :meth:`~deconvviz.engine.deconvnet.Deconvnet.project` takes it.
        out_shape: output shape without the batch dimension (``(C, h, w)`` or ``(C,)``).
        receptive_field: the activations' receptive field, or ``None`` where it cannot be
            followed (after a flatten or a global pooling, say).
        calls: how many times the forward pass calls the layer's module.
        merges: how branches of the signal meet inside the layer, as the pass saw it:
            ``"add"`` (residual adds), ``"cat"`` (concatenations); empty for a plain layer.
    """

    layer: str
    out_shape: tuple[int, ...]
    receptive_field: ReceptiveField | None
    calls: int
    merges: frozenset[str] = frozenset()


class Geometry:
    """The layers of one model: named, ordered as the forward pass calls them, probed per shape.

    Attributes:
        names: each submodule's name (the first, for a module registered twice).
        modules: each name's submodule (the model itself excluded).
        layers: projectable layer names, in forward order once a probe has run (definition order
            before), a module called several times per pass listed once per call.
        passes: the model's forward passes (with ``rule`` and ``precision``).
    """

    def __init__(self, model: nn.Module, rule: Rule, precision: str) -> None:
        self.model = model
        self.names: dict[nn.Module, str] = {}
        self.modules: dict[str, nn.Module] = {}
        for name, module in model.named_modules():
            if module is model:
                continue
            self.modules[name] = module
            self.names.setdefault(module, name)
        self.layers: list[str] = [
            n for n, m in self.modules.items() if not isinstance(m, (nn.ModuleList, nn.ModuleDict))
        ]
        self._defined = list(self.layers)
        if not self.layers:
            raise InputError(
                f"the model ({type(model).__name__}) has no submodules, so there is no layer "
                "to project; build it from nn.Module layers (nn.Conv2d, nn.ReLU, ...) as attributes"
            )
        self.passes = Passes(model, self.names, rule, precision)
        self.probes: dict[tuple, _Probe] = {}

    def layer_name(self, layer: Layer) -> str:
        """A name as it is; one of the model's own submodules as its ``named_modules()`` name."""
        if isinstance(layer, nn.Module):
            name = self.names.get(layer)
            if name is None:
                raise LayerError(
                    f"the {type(layer).__name__} passed as the layer is not a submodule of the "
                    "model; pass one of the model's own modules (e.g. model.features[3]) or its "
                    "name"
                )
            return name
        return layer

    def probe(self, x: Tensor) -> _Probe:
        """A full forward pass on one input, learning every layer's geometry (cached per shape)."""
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        probe = self.probes.get(key)
        if probe is not None:
            return probe
        try:
            probe, counts = self.passes.probe(x[:1].detach().clone())
        except (DeconvvizError, KeyboardInterrupt):
            raise
        except Exception as exc:  # torch's own message, wrapped with the fix
            raise InputError(forward_failed(self.model, x, exc)) from exc
        self.probes[key] = probe
        self._order_layers(probe, counts)
        return probe

    def _order_layers(self, probe: _Probe, counts: Counter[str]) -> None:
        """:attr:`layers` in forward order, one entry per call of a reused module."""
        known = set(self._defined)
        called: list[str] = []
        for n in probe.order:
            if n in known:
                calls = counts[n]
                called += [n] if calls == 1 else [call_key(n, k) for k in range(calls)]
        self.layers = called + [n for n in self._defined if n not in probe.layers]

    def describe(self, rule: str, strict: bool) -> str:
        """A table of every layer and the reverse step it gets, plus the activation functions
        the last probe pass called (functional ReLUs included)."""
        relu_step = describe_rule(rule)
        lines = [f"Deconvnet(rule={rule!r}, strict={strict}) on {type(self.model).__name__}"]
        width = max(len(n) for n in self.modules)
        for name, module in self.modules.items():
            kind = type(module).__name__
            if isinstance(module, _CONTAINERS) and "." not in name:
                lines.append(f"  {name:<{width}}  {kind}")
            else:
                lines.append(f"  {name:<{width}}  {kind:<18} -> {step_for(module, relu_step)}")
        events = next(reversed(self.probes.values())).events if self.probes else []
        calls = Counter((e.module, e.func, e.supported) for e in events)
        if calls:
            lines.append("  activation calls seen in the forward pass:")
        for (where_called, func, ok), n in calls.items():
            where = f"in {where_called!r}" if where_called else "in the model's forward"
            step = relu_step if ok else "NO deconvnet rule: its plain gradient is used"
            lines.append(f"    {func} x{n} {where} -> {step}")
        return "\n".join(lines)
