"""Evidence that the pictures mean something: two numbers a reader can check at a glance.

* :func:`class_selectivity` -- per layer, over its live units, the mean fraction of a unit's
  top-``k`` images that share the unit's most common class. Zeiler & Fergus observed that
  higher layers are more class-specific; for a network that has learned, this rises with depth
  (chance is about ``1/classes`` plus the noise of ``k`` draws).
* :func:`filter_structure` -- the mean correlation between horizontally and vertically
  neighbouring weights of each first-layer filter, beside the same number for freshly
  initialised filters. Learned first-layer filters are smooth (edges, blobs, colour
  gradients); random ones are not (about 0).

Both return small frozen result objects with ``to_dict()``; they draw nothing and write nothing.

Example::

    from deconvviz.analyses.evidence import class_selectivity, filter_structure

    sel = class_selectivity(model, test_set, ["relu1", "relu3", "relu5"], k=9)
    sel.selectivity            # {'relu1': 0.27, 'relu3': 0.41, 'relu5': 0.78}
    filter_structure(model.conv1).trained, filter_structure(model.conv1).init
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from deconvviz.analyses.scan import scan
from deconvviz.analyses.topk import FewImagesWarning
from deconvviz.base._util import json_safe
from deconvviz.base.checks import check_layer, check_positive_int
from deconvviz.base.errors import InputError

__all__ = [
    "FilterStructure",
    "SelectivityResult",
    "class_selectivity",
    "filter_structure",
    "neighbour_correlation",
    "selectivity_from_top",
]


@dataclass(frozen=True)
class SelectivityResult:
    """Class selectivity of every unit of some layers (see :func:`class_selectivity`).

    Attributes:
        layers: the layers, in the order given (shallow to deep).
        selectivity: ``{layer: mean over live units}`` (NaN when a layer has no live unit).
        per_unit: ``{layer: [C]}`` each unit's fraction (NaN for dead units).
        dead: ``{layer: channels}`` units whose activation never exceeded 0 on the images.
        k: top images per unit.
        images: how many images were scanned.
        classes: number of classes in the labels.
    """

    layers: tuple[str, ...]
    selectivity: dict[str, float]
    per_unit: dict[str, Tensor]
    dead: dict[str, tuple[int, ...]]
    k: int
    images: int
    classes: int

    @property
    def rises_with_depth(self) -> bool:
        """True when every layer is at least as selective as the one before it."""
        vals = [self.selectivity[name] for name in self.layers]
        return all(b >= a for a, b in zip(vals, vals[1:], strict=False))

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "selectivity": {k: json_safe(float(v)) for k, v in self.selectivity.items()},
            "live_units": {
                n: int(self.per_unit[n].numel() - len(self.dead[n])) for n in self.layers
            },
            "dead_units": {n: list(d) for n, d in self.dead.items()},
            "k": self.k,
            "images": self.images,
            "classes": self.classes,
            "chance": 1.0 / self.classes if self.classes else None,
        }


STRUCTURE_MARGIN = 0.1
"""How far above initialisation the trained filters' neighbour correlation must be for them to be
called structured (the shipped ZF net: 0.44 against -0.01; an untrained net: within 0.01)."""


@dataclass(frozen=True)
class FilterStructure:
    """Neighbour correlation of a conv layer's filters, trained against initialisation.

    Attributes:
        trained: mean over filters of :func:`neighbour_correlation` of the given weights.
        init: the same for freshly initialised copies of the layer (mean over ``seeds``).
        per_filter: ``[out]`` each trained filter's correlation.
        seeds: initialisations averaged for ``init``.
        init_spread: the standard deviation of the initialisations' values (how far a layer
            that was never trained can land from ``init`` by chance: large for few, small
            filters).
    """

    trained: float
    init: float
    per_filter: Tensor
    seeds: int
    init_spread: float = 0.0

    @property
    def structured(self) -> bool:
        """True when the trained filters are clearly smoother than initialisation: their
        neighbour correlation exceeds the initialised one by :data:`STRUCTURE_MARGIN`, and by
        three times the initialisations' spread."""
        return bool(self.trained - self.init >= max(STRUCTURE_MARGIN, 3 * self.init_spread))

    def to_dict(self) -> dict[str, Any]:
        return {
            "trained": json_safe(float(self.trained)),
            "init": json_safe(float(self.init)),
            "seeds": self.seeds,
            "init_spread": json_safe(float(self.init_spread)),
            "structured": self.structured,
        }


def neighbour_correlation(weight: Tensor) -> Tensor:
    """Per filter, the correlation between horizontally and vertically adjacent weights.

    Args:
        weight: conv weights ``[out, in, kh, kw]`` (``kh, kw >= 2``).

    Returns:
        ``[out]``: for each filter, the Pearson correlation over all pairs of horizontally
        neighbouring weights (every input channel and row) and over all vertically neighbouring
        pairs, averaged. 1 for a constant-gradient filter, about 0 for white noise.

    Example:
        >>> w = torch.arange(9.0).reshape(1, 1, 3, 3)      # a smooth ramp
        >>> round(float(neighbour_correlation(w)[0]), 6)
        1.0
    """
    if not isinstance(weight, Tensor) or weight.dim() != 4 or min(weight.shape[-2:]) < 2:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise InputError(f"expected conv weights [out, in, kh >= 2, kw >= 2], got {got}")
    w = weight.detach().double()

    def corr(a: Tensor, b: Tensor) -> Tensor:
        a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
        b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
        den = (a.square().sum(1) * b.square().sum(1)).sqrt()
        return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den))

    horizontal = corr(w[..., :, :-1], w[..., :, 1:])
    vertical = corr(w[..., :-1, :], w[..., 1:, :])
    return ((horizontal + vertical) / 2).float()


def filter_structure(conv: nn.Module, seeds: int = 5) -> FilterStructure:
    """How structured a conv layer's filters are, against the same layer freshly initialised.

    Args:
        conv: a ``Conv2d`` (typically the first layer).
        seeds: fresh initialisations (``reset_parameters()`` under seeds ``0..seeds-1``) to
            average for the baseline.

    Returns:
        A :class:`FilterStructure`.
    """
    if not isinstance(conv, nn.Conv2d):
        raise InputError(f"filter_structure needs a Conv2d layer, got {type(conv).__name__}")
    check_positive_int("seeds", seeds)
    per = neighbour_correlation(conv.weight)
    base = []
    fresh = copy.deepcopy(conv).cpu().float()
    with torch.random.fork_rng(devices=[]):
        for s in range(seeds):
            torch.manual_seed(s)
            fresh.reset_parameters()
            base.append(float(neighbour_correlation(fresh.weight).mean()))
    mean = sum(base) / len(base)
    spread = (sum((b - mean) ** 2 for b in base) / max(len(base) - 1, 1)) ** 0.5
    return FilterStructure(float(per.mean()), mean, per, seeds, spread)


def class_selectivity(
    model: nn.Module,
    dataset: Sequence[Any],
    layers: Sequence[str],
    k: int = 9,
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> SelectivityResult:
    """Per layer, the mean fraction of a live unit's top-``k`` images sharing its commonest class.

    A unit's top-``k`` images are the ``k`` distinct images with its strongest activation
    (:func:`deconvviz.top_activations`). A unit is *dead* when its strongest activation over the
    dataset is ``<= 0``; only images where the unit's activation is ``> 0`` count towards its
    fraction.

    Args:
        model: the classifier.
        dataset: ``(image, label)`` items, in a fixed order.
        layers: layer names, shallow to deep (e.g. the ReLU after each conv block).
        k: top images per unit (the paper's 9).
        batch_size: images per forward pass.
        progress: show progress bars.

    Returns:
        A :class:`SelectivityResult`.
    """
    check_positive_int("k", k)
    if not layers:
        raise InputError("class_selectivity needs at least one layer name")
    for name in layers:
        check_layer(model, name, calls=True)
    labels = _labels(dataset)
    loader: DataLoader[Any] = DataLoader(dataset, batch_size=batch_size, shuffle=False)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewImagesWarning)  # fewer images than k: fine here
        found = scan(model, loader, list(layers), k, progress=progress, distributed=False)
    tops = {name: (found[name].values, found[name].indices) for name in layers}
    return selectivity_from_top(tops, labels)


def selectivity_from_top(
    tops: dict[str, tuple[Tensor, Tensor]], labels: Tensor, classes: int | None = None
) -> SelectivityResult:
    """:func:`class_selectivity` from top-k results already computed.

    Args:
        tops: ``{layer: (values [C, k], indices [C, k])}`` in layer order, as in
            :class:`deconvviz.TopActivations` or
            :class:`deconvviz.analyses.reconstruct.LayerReconstructions`
            (index ``-1`` marks padding).
        labels: ``[N]`` the label of every dataset image.
        classes: number of classes (default: ``labels.max() + 1``).

    Returns:
        A :class:`SelectivityResult`.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    if classes is None:
        classes = int(labels.max()) + 1 if labels.numel() else 0
    sel: dict[str, float] = {}
    per_unit: dict[str, Tensor] = {}
    dead: dict[str, tuple[int, ...]] = {}
    k = 0
    for name, (values, indices) in tops.items():
        values, indices = values.cpu(), indices.cpu()
        k = max(k, int(values.shape[1]))
        valid = (indices >= 0) & (values > 0)
        fractions = torch.full((values.shape[0],), math.nan)
        for c in range(values.shape[0]):
            idx = indices[c][valid[c]]
            if idx.numel():
                counts = torch.bincount(labels[idx], minlength=max(classes, 1))
                fractions[c] = float(counts.max()) / idx.numel()
        live = ~torch.isnan(fractions)
        per_unit[name] = fractions
        dead[name] = tuple(int(c) for c in torch.nonzero(~live).flatten())
        sel[name] = float(fractions[live].mean()) if live.any() else math.nan
    return SelectivityResult(tuple(tops), sel, per_unit, dead, k, len(labels), classes)


def _labels(dataset: Sequence[Any]) -> Tensor:
    targets = getattr(dataset, "targets", None)
    if isinstance(targets, Tensor):
        return targets.long().cpu()
    try:
        return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)
    except (TypeError, IndexError, ValueError) as exc:
        raise InputError(
            "class_selectivity needs a labelled dataset of (image, label) items"
        ) from exc
