"""The deconvnet engine: :func:`attach` and the :class:`Deconvnet` handle.

The handle is thin: each public call checks what it is asked once, at its door, and composes
:mod:`~deconvviz.engine.geometry` (the layers' names, order and geometry, one probe per input
shape, over the forward passes of :mod:`~deconvviz.engine.probe`),
:mod:`~deconvviz.engine.seeds` (what may be projected: layers, channels, positions, values, made
into one :class:`~deconvviz.engine.seeds.Seeds` record) and :mod:`~deconvviz.engine.schedule`
(the strongest activations, crops, whole images, fallback and the reverse pass).

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
* A projection's seed is one activation, so its reverse path is nonzero only in that
  activation's receptive field: seeds run on receptive-field crops where those can be followed
  and are smaller than the image, each crop checked against the full image
  (:mod:`~deconvviz.engine.schedule`).
* Nothing is attached to the model between calls: the hooks of a pass belong to a
  :class:`~deconvviz.engine.tracer.Tracer`, which removes them when the pass ends, however it
  ends; ``training`` flags are restored; parameters never get ``.grad``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz.base._util import DEFAULT_MAX_MEMORY, check_precision
from deconvviz.base.checks import check_batch, check_device, model_device_dtype
from deconvviz.base.errors import DeconvvizError, InputError
from deconvviz.engine.crops import Box, crop_boxes, scatter_windows
from deconvviz.engine.geometry import Geometry, Layer, LayerGeometry
from deconvviz.engine.probe import DeconvvizWarning, _LayerInfo
from deconvviz.engine.receptive import ReceptiveField
from deconvviz.engine.rules import Rule, get_rule
from deconvviz.engine.schedule import Scheduler, Windows
from deconvviz.engine.seeds import Validator
from deconvviz.engine.swap import Event

__all__ = [
    "Deconvnet",
    "DeconvvizWarning",
    "LayerGeometry",
    "attach",
    "layer_output",
    "model_device_dtype",
    "receptive_field",
]


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
        self._geometry = Geometry(model, resolved, self.precision)
        self._checks = Validator(self._geometry.modules, strict, warn)
        self._schedule = Scheduler(
            self._geometry.passes,
            self._geometry.modules,
            lambda info, rows, cols, size: self._crop_boxes(info, rows, cols, size),
            self.max_memory,
        )
        #: one entry per batch of seeds projected: ``(layer, (crop height, crop width), seeds,
        #: how)`` with how ``"crop"`` (verified against the full image's values), ``"full"``
        #: (full-image pass) or ``"fallback"`` (a crop disagreed or failed; redone on full
        #: images). For tests and debugging; the last 10 000 batches are kept.
        self.crop_log = self._schedule.crop_log
        self._checks.check_rules()

    @property
    def layers(self) -> list[str]:
        return self._geometry.layers

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Deconvnet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()  # never swallows the user's exception

    def detach(self) -> None:
        """Release the model. Idempotent. Nothing stays attached to the model in any case: hooks
        only live during a projection; this just makes further use of the handle an error."""
        self._attached = False
        self._geometry.probes.clear()

    def _check_attached(self) -> None:
        if not self._attached:
            raise DeconvvizError("this Deconvnet was detached; call deconvviz.attach(model) again")

    def summary(self) -> str:
        """A table of every layer and the reverse step it gets, plus the activation functions
        the last forward pass called (functional ReLUs included)."""
        return self._geometry.describe(self.rule, self.strict)

    def __repr__(self) -> str:
        return self.summary()

    def _crop_boxes(
        self, info: _LayerInfo, rows: Tensor, cols: Tensor, size: tuple[int, int]
    ) -> list[Box]:
        """Per seed, the aligned input crop that holds its whole receptive field (the whole
        image where crops are off, unknown, or failed before for this layer)."""
        usable = self.crop and info.crop_ok
        return crop_boxes(info.rf if usable else None, rows, cols, size)

    # ------------------------------------------------------------------ the door

    def check_input(self, x: Any) -> Tensor:
        """``x`` if it is a batch the model can take (``[N, C, H, W]``, floating point, on the
        model's device and dtype); an :class:`~deconvviz.base.errors.InputError` naming the fix
        otherwise."""
        self._check_attached()
        return check_device(check_batch(x, "x", finite=False), self.model)

    def _door(self, x: Any, layer: Layer) -> tuple[Tensor, str, _LayerInfo]:
        """What every public call checks once: the batch (shape, dtype, device), the layer
        (its name, and that it is projectable), with the probe's record of it."""
        name = self.layer_name(layer)
        x = self.check_input(x)
        return x, name, self._checks.layer(self._geometry.probe(x), name, self.layers)

    # ------------------------------------------------------------------ public API

    def layer_name(self, layer: Layer) -> str:
        """``layer`` as the engine names it: a name is returned as it is; one of the model's own
        submodules becomes its ``named_modules()`` name (a module run several times per forward
        pass then still needs its call: ``f"{dn.layer_name(m)}:1"``).

        Example:
            >>> dn.layer_name(model.features[3])   # doctest: +SKIP
            'features.3'
        """
        return self._geometry.layer_name(layer)

    def layer_geometry(self, x: Tensor, layer: Layer) -> LayerGeometry:
        """Output shape, receptive field and call count of ``layer`` for inputs shaped like
        ``x`` (one forward pass per input shape, cached).

        Example:
            >>> dn.layer_geometry(x, "conv2").out_shape   # doctest: +SKIP
            (64, 14, 14)
        """
        return self.layer_geometries(x, [layer])[0]

    def layer_geometries(self, x: Tensor, layers: Sequence[Layer]) -> list[LayerGeometry]:
        """:meth:`layer_geometry` of several layers for inputs shaped like ``x``: the batch is
        checked once and probed once for all of them."""
        names = [self.layer_name(layer) for layer in layers]
        probed = self._geometry.probe(self.check_input(x))
        out = []
        for name in names:
            info = self._checks.layer(probed, name, self.layers)
            assert info.out_shape is not None
            out.append(LayerGeometry(name, info.out_shape, info.rf, info.calls, info.merges))
        return out

    def activation_calls(self, x: Tensor) -> list[Event]:
        """The activation-function calls of the forward pass on inputs shaped like ``x``, in
        order: where each happened (innermost module), the function, and whether it has a rule."""
        return list(self._geometry.probe(self.check_input(x)).events)

    def layer_output(self, x: Tensor, layer: Layer) -> Tensor:
        """The output of ``layer`` for input ``x`` (forward stopped there, no autograd graph)."""
        x, name, _ = self._door(x, layer)
        return self._schedule.values(x, name)

    def receptive_field(self, layer: Layer, input_shape: Sequence[int]) -> ReceptiveField | None:
        """Receptive field of ``layer`` for inputs of shape ``input_shape`` (``None`` when the
        layer's output is not a spatial map that can be followed back, e.g. after flatten)."""
        self._check_attached()
        device, dtype = model_device_dtype(self.model)
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == 3:
            shape = (1, *shape)
        return self._door(torch.zeros(shape, dtype=dtype, device=device), layer)[2].rf

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
        x, name, info = self._door(x, layer)
        seeds, single = self._checks.grid(info, name, x.shape[0], channel, position)
        seeds = self._schedule.located(x, name, seeds)
        out = _assemble(x, self._schedule.windows(x, info, name, seeds), len(seeds))
        out = out.view(x.shape[0], -1, *x.shape[1:])
        return out[:, 0] if single else out

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
        scan, say); each crop's values are then checked against them, as :meth:`project` does,
        and the batch is not run forward to read them.

        Returns:
            ``[S, C, H, W]`` projections, one per seed.

        Example:
            >>> rec = dn.project_seeds(x, "layer3.5", [0, 0, 1], [4, 9, 4])  # doctest: +SKIP
        """
        x, name, info = self._door(x, layer)
        seeds = self._checks.seeds(x, info, name, image, channel, position, values)
        return _assemble(x, self._schedule.windows(x, info, name, seeds), len(seeds))

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
        x, name, info = self._door(x, layer)
        seeds = self._checks.seeds(x, info, name, image, channel, position, values)
        return self._schedule.windows(x, info, name, seeds)


def _assemble(x: Tensor, windows: Iterator[Windows], count: int) -> Tensor:
    """``[count, C, H, W]``: every seed's projection, its windows scattered into its image."""
    out = x.new_zeros((count, *x.shape[1:]))
    for idx, grads, boxes in windows:
        scatter_windows(out, idx, grads, boxes)
    return out


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
            :mod:`deconvviz.engine.rules`.
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
