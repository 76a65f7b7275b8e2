"""The deconvnet engine: :func:`attach` and the :class:`Deconvnet` handle.

The handle is thin: it checks what it is asked at the door and composes three pieces,
:mod:`~deconvviz.engine.probe` (the forward passes and every layer's geometry),
:mod:`~deconvviz.engine.seeds` (what may be projected: layers, channels, positions, values) and
:mod:`~deconvviz.engine.schedule` (crops, whole images, fallback and the reverse pass).

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

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz._util import DEFAULT_MAX_MEMORY, check_precision
from deconvviz.checks import call_key, check_batch, check_channels, model_device_dtype
from deconvviz.engine.crops import Box, crop_boxes, scatter_windows
from deconvviz.engine.probe import DeconvvizWarning, Passes, _LayerInfo, _Probe, forward_failed
from deconvviz.engine.receptive import ReceptiveField
from deconvviz.engine.rules import Rule, describe_rule, get_rule
from deconvviz.engine.schedule import Scheduler, Windows
from deconvviz.engine.seeds import (
    Validator,
    one_position,
    seed_index,
    seed_positions,
    seed_values,
)
from deconvviz.engine.support import _CONTAINERS, step_for
from deconvviz.engine.swap import Event
from deconvviz.errors import DeconvvizError, InputError, LayerError

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
        merges: how branches of the signal meet inside the layer, as the pass saw it:
            ``"add"`` (residual adds), ``"cat"`` (concatenations); empty for a plain layer.
    """

    layer: str
    out_shape: tuple[int, ...]
    receptive_field: ReceptiveField | None
    calls: int
    merges: frozenset[str] = frozenset()


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
        rule: str | Rule = "deconvnet",
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
        # a Rule object was resolved at the caller's door: it is not looked up again
        resolved = rule if isinstance(rule, Rule) else get_rule(rule)
        self.rule = resolved.name
        self.strict = strict
        self.crop = crop
        self.max_memory = int(max_memory)
        #: ``"fp32"`` (the model's dtype) or ``"bf16"`` (every forward pass, and so its
        #: backward, under bfloat16 autocast)
        self.precision = check_precision(precision)
        self._attached = True
        self._index_modules()
        self._probes: dict[tuple, _Probe] = {}
        self._passes = Passes(model, self._names, resolved, self.precision)
        self._checks = Validator(self._modules, strict, warn)
        self._schedule = Scheduler(
            self._passes,
            self._modules,
            lambda info, rows, cols, size: self._crop_boxes(info, rows, cols, size),
            self.max_memory,
        )
        #: one entry per batch of seeds projected: ``(layer, (crop height, crop width), seeds,
        #: how)`` with how ``"crop"`` (verified against the full image's values), ``"full"``
        #: (full-image pass) or ``"fallback"`` (a crop disagreed or failed; redone on full
        #: images). For tests and debugging; the last 10 000 batches are kept.
        self.crop_log = self._schedule.crop_log
        self._checks.check_rules()

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

    # ------------------------------------------------------------------ the probe

    def _probe(self, x: Tensor) -> _Probe:
        """A full forward pass on one input, learning every layer's geometry (cached per shape)."""
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        probe = self._probes.get(key)
        if probe is not None:
            return probe
        try:
            probe, counts = self._passes.probe(x[:1].detach().clone())
        except (DeconvvizError, KeyboardInterrupt):
            raise
        except Exception as exc:  # torch's own message, wrapped with the fix
            raise InputError(forward_failed(self.model, x, exc)) from exc
        self._probes[key] = probe
        self._order_layers(probe, counts)
        return probe

    def _order_layers(self, probe: _Probe, counts: Counter[str]) -> None:
        """:attr:`layers` in forward order, one entry per call of a reused module."""
        known = set(self._layer_names)
        called: list[str] = []
        for n in probe.order:
            if n in known:
                calls = counts[n]
                called += [n] if calls == 1 else [call_key(n, k) for k in range(calls)]
        self.layers = called + [n for n in self._layer_names if n not in probe.layers]

    def _crop_boxes(
        self, info: _LayerInfo, rows: Tensor, cols: Tensor, size: tuple[int, int]
    ) -> list[Box]:
        """Per seed, the aligned input crop that holds its whole receptive field (the whole
        image where crops are off, unknown, or failed before for this layer)."""
        usable = self.crop and info.crop_ok
        return crop_boxes(info.rf if usable else None, rows, cols, size)

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
        info = self._checks.layer(self._probe(x), layer, self.layers)
        assert info.out_shape is not None
        return LayerGeometry(layer, info.out_shape, info.rf, info.calls, info.merges)

    def activation_calls(self, x: Tensor) -> list[Event]:
        """The activation-function calls of the forward pass on inputs shaped like ``x``, in
        order: where each happened (innermost module), the function, and whether it has a rule."""
        return list(self._probe(self.check_input(x)).events)

    def layer_output(self, x: Tensor, layer: Layer) -> Tensor:
        """The output of ``layer`` for input ``x`` (forward stopped there, no autograd graph)."""
        layer = self.layer_name(layer)
        x = self.check_input(x)
        self._checks.layer(self._probe(x), layer, self.layers)
        return self._values(x, layer)

    def _values(self, x: Tensor, layer: str) -> Tensor:
        return self._schedule.values(x, layer)

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
        return self._checks.layer(self._probe(x), layer, self.layers).rf

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
        info = self._checks.layer(self._probe(x), layer, self.layers)
        assert info.out_shape is not None
        chans, single = check_channels(channel, info.out_shape[0])
        pos = one_position(info, layer, position)
        self._checks.check_train_mode()
        n, k = x.shape[0], len(chans)
        img = torch.arange(n).repeat_interleave(k)
        chan = torch.tensor(chans).repeat(n)
        rows, cols, expected = self._positions(x, info, layer, img, chan, chans, pos)
        out = x.new_zeros((n * k, *x.shape[1:]))
        if info.batch_stats:
            windows = self._schedule.project_batch(x, info, layer, img, chan, rows, cols)
        else:
            windows = self._schedule.project_seeds(x, info, layer, img, chan, rows, cols, expected)
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
        """``project``'s seeds: rows, columns and values (the given, checked position, or the
        strongest activation of each channel in each image)."""
        assert info.out_shape is not None
        count, dev = len(img), x.device
        values = self._schedule.values(x, layer)
        if len(info.out_shape) != 3:
            zeros = torch.zeros(count, dtype=torch.long)
            return zeros, zeros, values[img.to(dev), chan.to(dev)]
        if position is not None:
            r, c = position
            rows = torch.full((count,), r, dtype=torch.long)
            cols = torch.full((count,), c, dtype=torch.long)
            return rows, cols, values[img.to(dev), chan.to(dev), r, c]
        acts = values[:, chans]  # [N, K, h, w]
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
        info = self._checks.layer(self._probe(x), layer, self.layers)
        img, chan = seed_index(x, info, image, channel)
        rows, cols = seed_positions(info, layer, position, len(img))
        self._checks.check_train_mode()
        given = seed_values(values, rows, x.dtype, len(img))
        return self._schedule.windows(x, info, layer, img, chan, rows, cols, given)


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


def attach(
    model: nn.Module,
    rule: str | Rule = "deconvnet",
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
