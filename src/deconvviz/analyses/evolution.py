"""Feature evolution during training (Zeiler & Fergus, Fig. 4).

:class:`FeatureEvolution` is a training callback: at chosen iterations it finds, over a fixed
pool of images, the strongest activation of each chosen feature map and projects it back to
pixel space. :meth:`FeatureEvolution.result` stacks what it recorded; the figure
(:func:`deconvviz.render.analyses.evolution_figure`) has one row per feature map and one
column per recorded iteration.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz.analyses._common import pick_images
from deconvviz.analyses.scan import top_activations
from deconvviz.analyses.topk import project_top
from deconvviz.base.checks import (
    check_channels,
    check_images,
    check_layers,
    check_positive_int,
    model_device_dtype,
)
from deconvviz.base.errors import InputError, unknown_name
from deconvviz.engine.rules import RULES

__all__ = ["EvolutionRecord", "EvolutionResult", "FeatureEvolution"]


@dataclass(frozen=True)
class EvolutionRecord:
    """What one call recorded: ``K`` feature maps at one iteration.

    Attributes:
        iteration: the training iteration.
        values: ``[K]`` the strongest activation of each map over the pool.
        indices: ``[K]`` pool index of the image that holds it.
        positions: ``[K, 2]`` its ``(row, col)`` in the feature map.
        boxes: ``[K, 4]`` its receptive field ``(y0, x0, y1, x1)`` in input pixels (clipped).
        projections: ``[K, C, h, w]`` the projections, cut to the receptive field (zero outside
            the image), as :func:`deconvviz.project_top` returns them.
        patches: ``[K, C, h, w]`` the image pixels of the same boxes.
    """

    iteration: int
    values: Tensor
    indices: Tensor
    positions: Tensor
    boxes: Tensor
    projections: Tensor
    patches: Tensor


@dataclass(frozen=True)
class EvolutionResult:
    """Every record of a :class:`FeatureEvolution`, stacked (``T`` iterations, ``K`` maps).

    Attributes:
        layer: the layer.
        channels: the ``K`` feature maps.
        rule: the ReLU rule of the projections.
        iterations: ``[T]`` recorded iterations.
        values: ``[T, K]``; indices ``[T, K]``; positions ``[T, K, 2]``; boxes ``[T, K, 4]``;
        projections: ``[T, K, C, h, w]``; patches ``[T, K, C, h, w]``.
    """

    layer: str
    channels: tuple[int, ...]
    rule: str
    iterations: Tensor
    values: Tensor
    indices: Tensor
    positions: Tensor
    boxes: Tensor
    projections: Tensor
    patches: Tensor

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON (without the pictures)."""
        return {
            "analysis": "evolution",
            "layer": self.layer,
            "channels": list(self.channels),
            "rule": self.rule,
            "iterations": self.iterations.tolist(),
            "values": self.values.tolist(),
            "indices": self.indices.tolist(),
            "positions": self.positions.tolist(),
            "boxes": self.boxes.tolist(),
        }


class FeatureEvolution:
    """Training callback recording the strongest activation of chosen feature maps over a pool.

    Call it as ``callback(iteration, model)`` (what :func:`deconvviz.training.train.train` does at
    each
    evaluation point). It records when ``iteration`` is in ``iterations``, or a multiple of
    ``every``, or always when neither is given. Recording runs in eval mode without touching the
    model: ``training`` flags, parameters, their ``.grad`` and the random-number state are left
    as they were, so training goes on exactly as without the callback.

    Args:
        images: the fixed image pool ``[P, C, H, W]``, or a dataset of ``(image, label)``
            items of which ``pool_size``, spread evenly over it, are taken.
        layer: the layer (``named_modules()`` spelling), e.g. ``"conv2"``.
        channels: the feature maps to follow; default: the first ``max_channels``.
        iterations: record at these iterations only.
        every: record when ``iteration % every == 0``.
        rule: projection rule (``"deconvnet"``, ``"gradient"``, ``"guided"``).
        max_channels: how many maps the default takes.
        pool_size: images taken from a dataset.
        batch_size: images per forward pass while scanning the pool.

    Example::

        evo = FeatureEvolution(test_images[:256], "conv2", every=500)
        train(config, train_set, test_set, callbacks=(evo,))
        save_figure("evolution.png", evolution_figure(evo.result()))
    """

    def __init__(
        self,
        images: Tensor | Sequence[Any],
        layer: str,
        channels: Sequence[int] | None = None,
        *,
        iterations: Iterable[int] | None = None,
        every: int | None = None,
        rule: str = "deconvnet",
        max_channels: int = 8,
        pool_size: int = 256,
        batch_size: int = 256,
    ) -> None:
        if not isinstance(layer, str) or not layer:
            raise InputError(f"layer must be a layer name, got {layer!r}")
        if rule not in RULES:
            raise InputError(unknown_name("rule", str(rule), sorted(RULES)))
        for name, value in (
            ("every", every),
            ("max_channels", max_channels),
            ("pool_size", pool_size),
            ("batch_size", batch_size),
        ):
            if value is not None:  # the message does not offer None
                check_positive_int(name, value)
        self.images = _pool(images, pool_size)
        self.layer = layer
        self.channels: tuple[int, ...] | None = None
        if channels is not None:
            chans = tuple(int(c) for c in channels)
            if not chans or min(chans) < 0:
                raise InputError(f"channels must be non-negative channel indices, got {channels!r}")
            self.channels = tuple(dict.fromkeys(chans))
        self.iterations = None if iterations is None else {int(i) for i in iterations}
        self.every = every
        self.rule = rule
        self.max_channels = max_channels
        self.batch_size = batch_size
        self.records: list[EvolutionRecord] = []

    def wants(self, iteration: int) -> bool:
        """Whether a call at ``iteration`` records."""
        if self.iterations is not None and int(iteration) in self.iterations:
            return True
        if self.every is not None and int(iteration) % self.every == 0:
            return True
        return self.iterations is None and self.every is None

    def __call__(self, iteration: int, model: nn.Module) -> None:
        if self.wants(iteration):
            self.record(iteration, model)

    def validate(self, model: nn.Module) -> None:
        """Check, before training starts, that ``model`` has the layer (raises
        :class:`~deconvviz.base.errors.LayerError` naming close matches otherwise)."""
        check_layers(model, [self.layer])

    def record(self, iteration: int, model: nn.Module) -> EvolutionRecord:
        """Record now, whatever the schedule; returns the record (also appended to
        :attr:`records`)."""
        x = check_images(model, self.images, "the image pool")
        device, _ = model_device_dtype(model)
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
        try:
            top = top_activations(
                model, list(x.split(self.batch_size)), self.layer, k=1, progress=False
            )
            if self.channels is None:
                self.channels = tuple(range(min(self.max_channels, top.channels)))
            chans, _ = check_channels(list(self.channels), top.channels, self.layer)
            images: Sequence[Tensor] = list(x.unbind(0))
            proj = project_top(
                model,
                images,
                top,
                self.rule,
                channels=chans,
                batch_size=self.batch_size,
                progress=False,
            )
        finally:
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        rec = EvolutionRecord(
            iteration=int(iteration),
            values=top.values[chans, 0].clone(),
            indices=top.indices[chans, 0].clone(),
            positions=top.positions[chans, 0].clone(),
            boxes=top.boxes[chans, 0].clone(),
            projections=proj.reconstructions[:, 0].clone(),
            patches=proj.patches[:, 0].clone(),
        )
        self.records.append(rec)
        return rec

    def result(self) -> EvolutionResult:
        """The records stacked into one :class:`EvolutionResult`."""
        if not self.records or self.channels is None:
            raise InputError(
                "FeatureEvolution has recorded nothing yet: call it during training (it records "
                "at the chosen iterations) or call .record(iteration, model)"
            )
        r = self.records
        return EvolutionResult(
            layer=self.layer,
            channels=self.channels,
            rule=self.rule,
            iterations=torch.tensor([x.iteration for x in r], dtype=torch.long),
            values=torch.stack([x.values for x in r]),
            indices=torch.stack([x.indices for x in r]),
            positions=torch.stack([x.positions for x in r]),
            boxes=torch.stack([x.boxes for x in r]),
            projections=torch.stack([x.projections for x in r]),
            patches=torch.stack([x.patches for x in r]),
        )


def _pool(images: Tensor | Sequence[Any], pool_size: int) -> Tensor:
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise InputError(
                f"the image pool must be [P, C, H, W], got shape {tuple(images.shape)}"
            )
        return images.detach()
    return pick_images(images, pool_size)[0]
