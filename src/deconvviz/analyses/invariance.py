"""Invariance of the representation to translation, scale and rotation (Zeiler & Fergus, Fig. 5)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deconvviz.analyses._common import batches, capture, default_layers
from deconvviz.analyses.registry import Analysis, ReportSection, register_analysis
from deconvviz.base.checks import check_images, check_labels, check_layers
from deconvviz.base.errors import InputError, unknown_name

__all__ = ["TRANSFORMS", "InvarianceResult", "invariance", "transform_images", "default_values"]

#: transform name -> unit of its values
TRANSFORMS: dict[str, str] = {
    "translate": "vertical shift (pixels, + = down)",
    "htranslate": "horizontal shift (pixels, + = right)",
    "scale": "scale factor",
    "rotate": "rotation (degrees, counter-clockwise)",
}


@dataclass(frozen=True)
class InvarianceResult:
    """Distances between the features of original and transformed images.

    ``L`` layers, ``N`` images, ``V`` transformation values.

    Attributes:
        transform: ``"translate"``, ``"htranslate"``, ``"scale"`` or ``"rotate"``.
        values: ``[V]`` float64 transformation values (pixels, scale factors or degrees).
        layers: the layers compared.
        distance: ``[L, N, V]`` Euclidean distance between the layer's output (flattened) for
            the original image and for the transformed one.
        relative: ``[L, N, V]`` the same divided by the norm of the original's output (0 where
            that norm is 0), to compare layers of different sizes.
        prob: ``[N, V]`` probability of the true class of the transformed image.
        predicted: ``[N, V]`` the most probable class of the transformed image.
        labels: ``[N]`` true classes.
        fill: the value transformed images were padded with.
    """

    transform: str
    values: Tensor
    layers: tuple[str, ...]
    distance: Tensor
    relative: Tensor
    prob: Tensor
    predicted: Tensor
    labels: Tensor
    fill: float

    @property
    def unit(self) -> str:
        """What the values measure."""
        return TRANSFORMS[self.transform]

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON: per-value means over images plus every curve."""
        return {
            "analysis": "invariance",
            "transform": self.transform,
            "unit": self.unit,
            "fill": self.fill,
            "values": self.values.tolist(),
            "layers": list(self.layers),
            "labels": self.labels.tolist(),
            "mean_distance": {
                name: self.distance[i].mean(0).tolist() for i, name in enumerate(self.layers)
            },
            "mean_relative_distance": {
                name: self.relative[i].mean(0).tolist() for i, name in enumerate(self.layers)
            },
            "mean_true_class_prob": self.prob.mean(0).tolist(),
            "accuracy": (self.predicted == self.labels[:, None]).double().mean(0).tolist(),
            "distance": {name: self.distance[i].tolist() for i, name in enumerate(self.layers)},
            "true_class_prob": self.prob.tolist(),
            "predicted": self.predicted.tolist(),
        }


def default_values(transform: str, size: tuple[int, int]) -> Tensor:
    """The values swept when none are given: shifts up to 1/4 of the image side either way (at
    most 13 values, 0 included), scale factors 0.6 to 1.4, rotations -180 to 180 degrees in
    15-degree steps."""
    h, w = size
    if transform in ("translate", "htranslate"):
        side = h if transform == "translate" else w
        reach = max(1, side // 4)
        step = max(1, math.ceil(reach / 6))
        reach = reach // step * step  # multiples of step, so 0 is one of the values
        return torch.arange(-reach, reach + 1, step, dtype=torch.float64)
    if transform == "scale":
        return torch.linspace(0.6, 1.4, 9, dtype=torch.float64)
    if transform == "rotate":
        return torch.arange(-180.0, 181.0, 15.0, dtype=torch.float64)
    raise InputError(unknown_name("transform", str(transform), TRANSFORMS))


def _is_identity(transform: str, value: float) -> bool:
    if transform == "scale":
        return value == 1.0
    if transform == "rotate":
        return value % 360.0 == 0.0
    return value == 0.0


def _shift(x: Tensor, dy: int, dx: int, fill: float) -> Tensor:
    h, w = x.shape[-2:]
    out = torch.full_like(x, fill)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_y = slice(max(0, -dy), h - max(0, dy))
    dst_y = slice(max(0, dy), h - max(0, -dy))
    src_x = slice(max(0, -dx), w - max(0, dx))
    dst_x = slice(max(0, dx), w - max(0, -dx))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


def transform_images(x: Tensor, transform: str, value: float, fill: float = 0.0) -> Tensor:
    """Apply one transformation to a batch of images ``[N, C, H, W]``.

    * ``"translate"``: move the content ``value`` whole pixels down (negative: up);
      ``"htranslate"``: right (negative: left). Uncovered pixels get ``fill``. Exact.
    * ``"scale"``: zoom by ``value`` about the image centre (``> 1`` enlarges), bilinear.
    * ``"rotate"``: rotate ``value`` degrees counter-clockwise about the centre, bilinear
      (90 degrees on a square image equals ``torch.rot90(x, 1, (-2, -1))``).

    The identity value (shift 0, scale 1, rotation a multiple of 360) returns ``x`` unchanged.
    Pixels that come from outside the image get ``fill``.

    Example:
        >>> x = torch.arange(9.0).view(1, 1, 3, 3)
        >>> transform_images(x, "translate", 1)[0, 0]
        tensor([[0., 0., 0.],
                [0., 1., 2.],
                [3., 4., 5.]])
    """
    if transform not in TRANSFORMS:
        raise InputError(unknown_name("transform", str(transform), TRANSFORMS))
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise InputError("transform_images expects images [N, C, H, W]")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"transformation value must be finite, got {value}")
    if _is_identity(transform, value):
        return x.clone()
    if transform in ("translate", "htranslate"):
        if value != round(value):
            raise InputError(f"translations are whole pixels, got {value}; pass integer shifts")
        d = int(round(value))
        return _shift(x, d, 0, fill) if transform == "translate" else _shift(x, 0, d, fill)
    h, w = x.shape[-2:]
    if transform == "scale":
        if value <= 0:
            raise InputError(f"scale factors must be positive, got {value}")
        theta = torch.tensor(
            [[1.0 / value, 0.0, 0.0], [0.0, 1.0 / value, 0.0]], dtype=torch.float64
        )
    else:
        # output pixel p samples the input at p rotated back by the angle, in pixel units about
        # the centre; in normalised coordinates (x in units of W/2, y in units of H/2) the
        # aspect ratio enters
        a = math.radians(value)
        c, s = math.cos(a), math.sin(a)
        theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=torch.float64)
    grid = F.affine_grid(
        theta.to(x.dtype).unsqueeze(0).expand(x.shape[0], 2, 3).to(x.device),
        list(x.shape),
        align_corners=False,
    )
    moved = F.grid_sample(
        x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return moved + fill


def _as_values(values: Any, transform: str, size: tuple[int, int]) -> Tensor:
    if values is None:
        return default_values(transform, size)
    try:
        v = torch.as_tensor(values, dtype=torch.float64).flatten()
    except (TypeError, ValueError):
        raise InputError(f"values must be a list of numbers, got {values!r}") from None
    if v.numel() == 0:
        raise InputError("values is empty; give at least one transformation value")
    if not bool(torch.isfinite(v).all()):
        raise InputError("values must be finite numbers")
    return v


def _reference_features(
    model: nn.Module, x: Tensor, y: Tensor, names: tuple[str, ...], batch_size: int
) -> dict[str, Tensor]:
    """Each layer's flattened output ``[N, D]`` on the untransformed images; checks the labels
    against the model's number of classes."""
    n = x.shape[0]
    base: dict[str, list[Tensor]] = {name: [] for name in names}
    n_classes = None
    for sl in batches(n, batch_size):
        feats, logits = capture(model, x[sl], names)
        assert logits is not None
        n_classes = logits.shape[1]
        for name in names:
            base[name].append(feats[name].flatten(1).double().cpu())
    ref = {name: torch.cat(base[name]) for name in names}
    assert n_classes is not None
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise InputError(
            f"labels range {int(y.min())}..{int(y.max())} but the model has {n_classes} classes"
        )
    return ref


def _sweep_values(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    ref: dict[str, Tensor],
    transform: str,
    vals: Tensor,
    fill: float,
    batch_size: int,
    progress: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per transformation value: each layer's distance from ``ref`` ``[L, N, V]``, the true
    class's probability ``[N, V]`` and the predicted class ``[N, V]``."""
    from tqdm.auto import tqdm

    names = tuple(ref)
    n, n_v = x.shape[0], len(vals)
    dist = torch.zeros(len(names), n, n_v, dtype=torch.float64)
    prob = torch.zeros(n, n_v, dtype=torch.float64)
    pred = torch.zeros(n, n_v, dtype=torch.long)
    bar = tqdm(
        total=n * n_v,
        desc=f"invariance ({transform})",
        disable=not progress,
        unit="image",
        leave=False,
    )
    try:
        for vi, value in enumerate(vals.tolist()):
            for sl in batches(n, batch_size):
                moved = transform_images(x[sl], transform, value, fill)
                feats, logits = capture(model, moved, names)
                assert logits is not None
                for li, name in enumerate(names):
                    diff = feats[name].flatten(1).double().cpu() - ref[name][sl]
                    dist[li, sl, vi] = diff.norm(dim=1)
                p = torch.softmax(logits.double(), dim=1).cpu()
                prob[sl, vi] = p.gather(1, y[sl].unsqueeze(1)).squeeze(1)
                pred[sl, vi] = p.argmax(dim=1)
                bar.update(sl.stop - sl.start)
    finally:
        bar.close()
    return dist, prob, pred


def _relative(dist: Tensor, ref: dict[str, Tensor]) -> Tensor:
    """``dist`` over the norm of each image's reference output (0 where that norm is 0)."""
    norms = torch.stack([r.norm(dim=1) for r in ref.values()])  # [L, N]
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    return torch.where(norms[..., None] > 0, dist / safe[..., None], torch.zeros_like(dist))


def invariance(
    model: nn.Module,
    images: Tensor,
    labels: Sequence[int] | Tensor,
    transform: str = "translate",
    values: Sequence[float] | Tensor | None = None,
    layers: Sequence[str] | None = None,
    *,
    fill: float = 0.0,
    batch_size: int = 128,
    progress: bool = True,
) -> InvarianceResult:
    """Sweep a transformation over images and measure how much each layer's output moves.

    For every image and value, the transformed image goes through the model; the Euclidean
    distance between a layer's (flattened) output on the original and on the transformed image
    is recorded, with the probability of the true class. A layer invariant to the
    transformation gives flat curves near 0; the paper (Fig. 5) finds small transformations
    change the first layer a lot and the top layer much less.

    Args:
        model: a classifier returning logits ``[N, classes]``.
        images: ``[N, C, H, W]`` in the model's input space.
        labels: ``[N]`` true classes.
        transform: ``"translate"`` (vertical, as in the paper), ``"htranslate"``, ``"scale"``
            or ``"rotate"``; see :func:`transform_images`.
        values: the values to sweep (pixels, factors or degrees); see :func:`default_values`.
        layers: layer names (``named_modules()`` spelling); default: the first parametric
            layer and the last hidden one (``conv1`` and ``fc1`` for LeNet5).
        fill: input value for pixels moved in from outside the image (0.0 = black for [0, 1]
            pixels, or the dataset mean for normalised inputs).
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        An :class:`InvarianceResult`.

    Example:
        >>> res = invariance(model, x, y, "rotate", values=range(0, 361, 30))  # doctest: +SKIP
        >>> res.distance.shape                                                 # doctest: +SKIP
        torch.Size([2, 8, 13])
    """
    if transform not in TRANSFORMS:
        raise InputError(unknown_name("transform", str(transform), TRANSFORMS))
    x = check_images(model, images)
    y = check_labels(labels, x.shape[0])
    vals = _as_values(values, transform, (x.shape[-2], x.shape[-1]))
    names = default_layers(model, x) if layers is None else check_layers(model, layers)
    names = tuple(dict.fromkeys(names))
    fill = float(fill)
    ref = _reference_features(model, x, y, names, batch_size)
    dist, prob, pred = _sweep_values(model, x, y, ref, transform, vals, fill, batch_size, progress)
    relative = _relative(dist, ref)
    return InvarianceResult(
        transform=transform,
        values=vals,
        layers=names,
        distance=dist,
        relative=relative,
        prob=prob,
        predicted=pred,
        labels=y,
        fill=fill,
    )


def _summary(res: InvarianceResult) -> str:
    spread = ", ".join(
        f"{name} {float(curve.min()):.2f}-{float(curve.max()):.2f}"
        for name, curve in zip(res.layers, res.relative.mean(1), strict=True)
    )
    return (
        f"mean relative feature distance {spread}; true-class probability "
        f"{float(res.prob.mean(0).min()):.2f}-{float(res.prob.mean(0).max()):.2f}"
    )


def _register() -> None:
    register_analysis(
        Analysis(
            name="invariance",
            result=InvarianceResult,
            figure="deconvviz.render.analyses:invariance_figure",
            compute=invariance,
            summary=_summary,
            command="invariance",
            report=(
                ReportSection(
                    "Invariance to vertical translation",
                    "invariance_translate",
                    lambda i: invariance(
                        i.model, i.x, i.y, "translate", layers=i.layers, progress=False
                    ),
                    order=10,
                ),
                ReportSection(
                    "Invariance to scaling",
                    "invariance_scale",
                    lambda i: invariance(
                        i.model, i.x, i.y, "scale", layers=i.layers, progress=False
                    ),
                    order=11,
                ),
                ReportSection(
                    "Invariance to rotation",
                    "invariance_rotate",
                    lambda i: invariance(
                        i.model,
                        i.x,
                        i.y,
                        "rotate",
                        values=range(-180, 181, 30),
                        layers=i.layers,
                        progress=False,
                    ),
                    order=12,
                ),
            ),
        )
    )


_register()
