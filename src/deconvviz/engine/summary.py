"""What can be projected in a model: one row per layer call (``deconvviz inspect``).

Like ``torchinfo``'s summary, but about the deconvnet: for every layer (a module called several
times per forward pass gets one row per call, ``"name:0"``, ``"name:1"``...) its type, output
shape for a given input, receptive field (size and stride in input pixels, from
:mod:`deconvviz.engine.receptive`), the reverse step it gets, and the activation calls that have no
deconvnet rule. Everything comes from the engine's own probe pass, so it is what ``project``
will do.

Example::

    from deconvviz.engine.summary import layer_table

    table = layer_table(torchvision.models.resnet18(), (3, 224, 224))
    print(table)                      # a text table; in Jupyter it shows as HTML
    table.row("layer4.1.conv2").rf_size   # (435, 435)
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deconvviz.base.checks import model_device_dtype, split_call
from deconvviz.base.errors import LayerError, unknown_name
from deconvviz.engine.deconvnet import Deconvnet, attach
from deconvviz.engine.probe import DeconvvizWarning
from deconvviz.engine.rules import describe_rule
from deconvviz.engine.support import step_for

__all__ = ["LayerRow", "LayerTable", "layer_table"]


@dataclass(frozen=True)
class LayerRow:
    """One layer call.

    Attributes:
        name: the layer, as ``project`` takes it (``"layer1.0.relu:1"`` for a second call).
        type: the module's class name.
        out_shape: output shape without the batch dimension (``None``: not a tensor/not run).
        rf_size: receptive-field side lengths in input pixels ``(rows, cols)``, unclipped.
        rf_stride: input pixels between neighbouring positions (the field's jump).
        step: the reverse step the layer gets.
    """

    name: str
    type: str
    out_shape: tuple[int, ...] | None
    rf_size: tuple[int, int] | None
    rf_stride: tuple[int, int] | None
    step: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (for JSON)."""
        return {
            "name": self.name,
            "type": self.type,
            "out_shape": None if self.out_shape is None else list(self.out_shape),
            "rf_size": None if self.rf_size is None else list(self.rf_size),
            "rf_stride": None if self.rf_stride is None else list(self.rf_stride),
            "step": self.step,
        }


@dataclass(frozen=True)
class LayerTable:
    """Every layer call of a model, for one input shape.

    Attributes:
        model: the model's class name.
        input_shape: ``(C, H, W)``.
        rule: the ReLU rule the steps are described for.
        rows: one :class:`LayerRow` per layer call, in forward order.
        no_rule: activation calls with no deconvnet rule, as ``"func in 'where' xN"``.
    """

    model: str
    input_shape: tuple[int, ...]
    rule: str
    rows: tuple[LayerRow, ...]
    no_rule: tuple[str, ...]

    def row(self, name: str) -> LayerRow:
        """The row of a layer call.

        Raises:
            LayerError: no such layer.
        """
        for r in self.rows:
            if r.name == name:
                return r
        raise LayerError(unknown_name("layer", name, [r.name for r in self.rows]))

    def _cells(self) -> list[list[str]]:
        def fmt(v: tuple[int, ...] | None, sep: str = "x") -> str:
            return "-" if v is None else sep.join(str(i) for i in v)

        return [
            [r.name, r.type, fmt(r.out_shape), fmt(r.rf_size), fmt(r.rf_stride), r.step]
            for r in self.rows
        ]

    _HEAD = ("layer", "type", "output", "receptive field", "stride", "reverse step")

    def __str__(self) -> str:
        cells = self._cells()
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(self._HEAD)]
        shape = "x".join(str(s) for s in self.input_shape)
        lines = [f"{self.model} on {shape} input, rule {self.rule!r}"]
        lines.append("  ".join(h.ljust(w) for h, w in zip(self._HEAD, widths, strict=True)))
        lines.append("  ".join("-" * w for w in widths))
        for c in cells:
            lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
        if self.no_rule:
            lines.append("activations with NO deconvnet rule (their plain gradient is used):")
            lines += [f"  {n}" for n in self.no_rule]
        else:
            lines.append(f"every activation called has a reverse rule (here {self.rule!r})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self._HEAD)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in c) + "</tr>"
            for c in self._cells()
        )
        note = (
            "<p>No deconvnet rule: " + html.escape(", ".join(self.no_rule)) + "</p>"
            if self.no_rule
            else ""
        )
        return f"<table><tr>{head}</tr>{body}</table>{note}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (for JSON)."""
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "rule": self.rule,
            "layers": [r.to_dict() for r in self.rows],
            "no_rule": list(self.no_rule),
        }


def layer_table(
    model: nn.Module, input_shape: Sequence[int], rule: str = "deconvnet"
) -> LayerTable:
    """Describe every layer call of ``model`` for inputs of shape ``(C, H, W)``.

    One forward pass of zeros is run (in eval mode; the model is left as it was).

    Raises:
        InputError: the model cannot take such an input (the message says why).
    """
    shape = tuple(int(s) for s in input_shape)
    device, dtype = model_device_dtype(model)
    with warnings.catch_warnings(), attach(model, rule=rule, warn=False) as dn:
        warnings.simplefilter("ignore", DeconvvizWarning)  # the table lists them instead
        x = dn.check_input(torch.zeros((1, *shape), dtype=dtype, device=device))
        events = dn.activation_calls(x)
        rows = tuple(_row(dn, x, name, describe_rule(rule)) for name in dn.layers)
    counts: dict[tuple[str, str], int] = {}
    for e in events:
        if not e.supported:
            counts[(e.func, e.module)] = counts.get((e.func, e.module), 0) + 1
    no_rule = tuple(
        f"{func} in {where or 'the forward'!r} x{n}" for (func, where), n in counts.items()
    )
    no_rule += tuple(f"{r.name} ({r.type})" for r in rows if r.step.startswith("NO deconvnet rule"))
    shown = getattr(model, "inner", model)  # a Normalized wrapper shows the model inside
    return LayerTable(type(shown).__name__, shape, rule, rows, no_rule)


def _row(dn: Deconvnet, x: torch.Tensor, name: str, relu_step: str) -> LayerRow:
    geo = dn.layer_geometry(x, name)
    module = dict(dn.model.named_modules())[split_call(name)[0]]
    rf = geo.receptive_field
    return LayerRow(
        name=name,
        type=type(module).__name__,
        out_shape=geo.out_shape,
        rf_size=None if rf is None else rf.size,
        rf_stride=None if rf is None else rf.jump,
        step=_seen(step_for(module, relu_step), geo.merges),
    )


def _seen(step: str, merges: frozenset[str]) -> str:
    """A container's step, saying only the merges the forward pass made inside it (a ResNet
    block adds, a DenseNet block concatenates)."""
    if not step.startswith("its submodules' steps"):
        return step
    said = []
    if "add" in merges:
        said.append("residual adds send the signal down every branch")
    if "cat" in merges:
        said.append("concatenations split it among their inputs")
    return "; ".join(["its submodules' steps", ", ".join(said)] if said else [step.split(";")[0]])
