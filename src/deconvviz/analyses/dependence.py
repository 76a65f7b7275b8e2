"""How much a unit's deconvnet projection depends on the image: measured, and said in words.

A deconvnet's reverse path depends on the image only through the max-pooling switches (and the
seed's value and position): its ReLU step rectifies the backward signal and ignores the forward
pass (Mahendran & Vedaldi, "Salient deconvolutional networks", ECCV 2016). Below a layer with no
max pooling (a ResNet with strided convolutions), every image gives the same projection for a
unit at a given position, up to scale, and strided transposed convolutions leave checkerboards
(Odena, Dumoulin & Olah, "Deconvolution and checkerboard artifacts", Distill 2016).

Two numbers per layer:

* ``switches``: max-pooling calls on the forward pass before the layer's output (the switches a
  projection can read; 0 means the projection cannot depend on the image);
* ``correlation``: over the layer's live units, the mean Pearson correlation between every two of
  a unit's top-``k`` projections, each taken in its own receptive-field window (so aligned to the
  same position; pixels outside the image in either window are left out). 1 means every image
  gives the same picture up to scale.

Example::

    from deconvviz.analyses.dependence import image_dependence, pool_switches
    from deconvviz.analyses.reconstruct import reconstruct_dataset

    rec = reconstruct_dataset(model, test_set, ["layer2.0.conv2"], k=9)["layer2.0.conv2"]
    dep = image_dependence(rec, pool_switches(model, "layer2.0.conv2", x[:1]))
    print(dep.sentence())
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from deconvviz.analyses.topk import canvas_inside
from deconvviz.base.errors import InputError
from deconvviz.engine.tracer import Tracer

if TYPE_CHECKING:
    from deconvviz.analyses.reconstruct import LayerReconstructions

__all__ = [
    "HARDLY",
    "ImageDependence",
    "image_dependence",
    "no_switch_note",
    "pool_switches",
    "switches_per_layer",
]

HARDLY = 0.9
"""Mean correlation of a unit's top-k projections at or above which they "hardly" depend on the
image."""

CITATION = (
    "Mahendran & Vedaldi, Salient deconvolutional networks, ECCV 2016; checkerboard patterns come "
    "from strided transposed convolutions, Odena et al., Distill 2016"
)


@dataclass(frozen=True)
class ImageDependence:
    """How much the deconvnet projections of one layer depend on the image.

    Attributes:
        layer: the layer's name.
        rule: the rule the projections were made with.
        correlation: mean over live units of the mean pairwise correlation of their top-``k``
            projections (``nan`` when no unit had two real projections).
        units: how many units were measured.
        switches: max-pooling calls before the layer (``None``: not counted).
    """

    layer: str
    rule: str
    correlation: float
    units: int
    switches: int | None = None

    @property
    def dependence(self) -> float:
        """``1 - correlation``: 0 when every image gives the same picture up to scale."""
        return 1.0 - self.correlation

    @property
    def hardly(self) -> bool:
        """Whether the pictures hardly depend on the image: a deconvnet with no max-pooling
        switch below the layer, or top-k projections correlated :data:`HARDLY` or more."""
        if self.rule == "deconvnet" and self.switches == 0:
            return True
        return math.isfinite(self.correlation) and self.correlation >= HARDLY

    def sentence(self) -> str | None:
        """A plain sentence when the pictures hardly depend on the image, else ``None``."""
        if not self.hardly:
            return None
        why = (
            "there is no max-pooling switch below it, and a deconvnet's reverse path depends "
            "on the image only through those switches"
            if self.switches == 0
            else f"its reverse path reads only {self.switches} max-pooling switch"
            f"{'' if self.switches == 1 else 'es'}"
            if self.switches is not None
            else "its reverse path barely depends on the forward pass"
        )
        corr = (
            f" (mean correlation between a unit's top projections {self.correlation:.2f})"
            if math.isfinite(self.correlation)
            else ""
        )
        return (
            f"{self.layer}: the {self.rule} pictures hardly depend on the image{corr}: {why}, "
            "so a unit shows about the same pattern for every image; they show the network's "
            "filters, not what it saw. Patterns such as checkerboards are the method's. Guided "
            f"backprop (rule 'guided') keeps the forward pass and depends on the image "
            f"({CITATION})."
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (for JSON)."""
        return {
            "layer": self.layer,
            "rule": self.rule,
            "correlation": self.correlation,
            "dependence": self.dependence,
            "units": self.units,
            "switches": self.switches,
            "hardly": self.hardly,
        }


def _inside(rec: LayerReconstructions, row: int) -> Tensor:
    """``[k, h, w]`` True where the window of entry ``j`` of ``row`` lies inside the image."""
    _, _, h, w = rec.reconstructions[row].shape
    return canvas_inside(rec.receptive_field, rec.positions[row], rec.input_size, (h, w))


def _unit_correlation(recs: Tensor, inside: Tensor) -> float:
    """Mean pairwise correlation of ``recs`` (``[m, C, h, w]``), over pixels inside both."""
    m = recs.shape[0]
    total, pairs = 0.0, 0
    flat = recs.double().flatten(2)  # [m, C, h*w]
    mask = inside.flatten(1)  # [m, h*w]
    for a in range(m):
        for b in range(a + 1, m):
            both = mask[a] & mask[b]
            if int(both.sum()) < 2:
                continue
            u = flat[a][:, both].flatten()
            v = flat[b][:, both].flatten()
            u, v = u - u.mean(), v - v.mean()
            den = float(u.norm() * v.norm())
            if den > 0:
                total += float(u @ v) / den
                pairs += 1
    return total / pairs if pairs else math.nan


def image_dependence(rec: LayerReconstructions, switches: int | None = None) -> ImageDependence:
    """Measure how much ``rec``'s projections depend on the image (see the module's text).

    Args:
        rec: one layer of :func:`deconvviz.analyses.reconstruct.reconstruct_dataset`'s result.
        switches: :func:`pool_switches` for the layer, when counted.
    """
    if not hasattr(rec, "reconstructions") or not hasattr(rec, "fired"):
        raise InputError("image_dependence expects one layer of reconstruct_dataset's result")
    fired = rec.fired
    scores = []
    for r in range(rec.reconstructions.shape[0]):
        real = fired[r].cpu()
        if int(real.sum()) < 2:
            continue
        c = _unit_correlation(rec.reconstructions[r].cpu()[real], _inside(rec, r)[real])
        if math.isfinite(c):
            scores.append(c)
    corr = sum(scores) / len(scores) if scores else math.nan
    return ImageDependence(rec.layer, rec.rule, corr, len(scores), switches)


class _CountPools(TorchFunctionMode):
    """Counts max-pooling calls (module or functional: both go through ``F.max_pool*``)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if "max_pool" in getattr(func, "__name__", ""):
            self.count += 1
        return func(*args, **(kwargs or {}))


def pool_switches(model: nn.Module, layer: str | None, x: Tensor) -> int:
    """How many max-pooling calls run before ``layer`` returns (``None``: in the whole forward
    pass), on input ``x`` (one image is enough): the switches a deconvnet projection from that
    layer can read."""
    counter = _CountPools()
    with Tracer(model, mode=counter) as tracer:
        tracer.run(x, stop_after=layer)
    return counter.count


def switches_per_layer(model: nn.Module, x: Tensor) -> dict[str, int]:
    """For every module call of one forward pass on ``x`` (one image is enough), in forward order,
    the max-pooling calls that ran before it returned (names as ``named_modules()`` gives them,
    ``"name:N"`` for the N-th call of a module called several times)."""
    counter = _CountPools()
    out: dict[str, int] = {}
    tracer = Tracer(model, mode=counter)

    def done(name: str, call: int, module: nn.Module, args: Any, result: Any) -> None:
        out[name if call == 0 else f"{name}:{call}"] = counter.count

    tracer.on_return(done)
    with tracer:
        tracer.run(x)
    return out


def no_switch_note(model: nn.Module, x: Tensor, layers: list[str]) -> str | None:
    """A plain sentence naming the ``layers`` whose deconvnet projections cannot depend on the
    image (no max-pooling switch below them), or ``None``."""
    counts = switches_per_layer(model, x)
    none = [name for name in layers if counts.get(name) == 0]
    if not none:
        return None
    names = ", ".join(none) if len(none) <= 6 else f"{', '.join(none[:3])} ... {none[-1]}"
    return (
        f"The deconvnet pictures of {len(none)} layer{'s' if len(none) != 1 else ''} ({names}) "
        "hardly depend on the image: there is no max-pooling switch below them, and a "
        "deconvnet's reverse path depends on the image only through those switches, so a unit "
        "shows about the same pattern (up to scale) for every image. Use --rule guided for "
        f"pictures that depend on the image ({CITATION})."
    )
