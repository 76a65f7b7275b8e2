"""Correspondence analysis (Zeiler & Fergus, Sec. 5.2 and Table 1).

Occlude the *same object part* in several images (say the left eye of five dogs) and look at
how each layer's output changes: ``eps_i = phi(x_i) - phi(occluded x_i)``. If the layer
represents that part in a consistent way, the changes point the same way in every image, so the
sign vectors ``sign(eps_i)`` agree. The paper's score is the Hamming distance between those
sign vectors summed over image pairs; we report it normalised, as the mean over image pairs of
the fraction of feature elements whose sign differs (0 = perfectly consistent). The same score
for occluders of the same size at random places is the baseline: a part score well below the
random one means the layer establishes a correspondence for that part.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz.analyses._common import batches, capture, default_layers
from deconvviz.analyses.metrics import sign_disagreement
from deconvviz.analyses.registry import Analysis, ReportSection, register_analysis
from deconvviz.base.checks import check_images, check_layers, check_positive_int
from deconvviz.base.errors import InputError

__all__ = [
    "CorrespondenceResult",
    "correspondence",
    "occlude",
    "pairwise_sign_change",
    "read_boxes",
]


@dataclass(frozen=True)
class CorrespondenceResult:
    """Consistency of feature changes under occlusion of the same part vs random occlusions.

    ``P`` parts, ``N`` images, ``L`` layers, ``R`` random trials.

    Attributes:
        layers: the layers measured.
        parts: a name per part.
        score: ``[P, L]`` mean over image pairs of the fraction of feature elements whose
            change has a different sign in the two images (lower = more consistent).
        score_std: ``[P, L]`` standard deviation of that fraction over the image pairs.
        random_score: ``[P, R, L]`` the same mean for each random trial (occluders of each
            image's part size, at random places).
        boxes: ``[P, N, 4]`` the part boxes ``(y0, x0, y1, x1)``, half-open, in input pixels.
        random_boxes: ``[P, R, N, 4]`` the random boxes.
        fill: the value occluded pixels were set to.
        seed: seed of the random boxes.
    """

    layers: tuple[str, ...]
    parts: tuple[str, ...]
    score: Tensor
    score_std: Tensor
    random_score: Tensor
    boxes: Tensor
    random_boxes: Tensor
    fill: float
    seed: int

    @property
    def random_mean(self) -> Tensor:
        """``[P, L]`` mean of the random-occlusion score over trials."""
        return self.random_score.mean(dim=1)

    @property
    def random_std(self) -> Tensor:
        """``[P, L]`` standard deviation of the random score over trials (0 for one trial)."""
        if self.random_score.shape[1] < 2:
            return torch.zeros_like(self.random_mean)
        return self.random_score.std(dim=1)

    def _by_part(self, table: Tensor) -> dict[str, dict[str, float]]:
        """A ``[P, L]`` table as ``{part: {layer: value}}``."""
        return {
            p: dict(zip(self.layers, table[i].tolist(), strict=True))
            for i, p in enumerate(self.parts)
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON."""
        return {
            "analysis": "correspondence",
            "layers": list(self.layers),
            "parts": list(self.parts),
            "score": self._by_part(self.score),
            "score_std": self._by_part(self.score_std),
            "random_mean": self._by_part(self.random_mean),
            "random_std": self._by_part(self.random_std),
            "random_score": self.random_score.tolist(),
            "boxes": self.boxes.tolist(),
            "random_boxes": self.random_boxes.tolist(),
            "fill": self.fill,
            "seed": self.seed,
            "n_images": int(self.boxes.shape[1]),
            "n_random": int(self.random_score.shape[1]),
        }


def pairwise_sign_change(eps: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation over image pairs ``i < j`` of the fraction of elements where
    ``sign(eps[i])`` and ``sign(eps[j])`` differ.

    Args:
        eps: ``[N, D]`` feature changes of ``N >= 2`` images.

    Returns:
        ``(mean, std)`` as float64 scalars; the paper's ``Delta = sum_{i != j} H`` equals
        ``N (N - 1) D mean``.
    """
    n = eps.shape[0]
    if n < 2:
        raise InputError("correspondence needs at least two images to compare")
    i, j = torch.triu_indices(n, n, offset=1)
    signs = torch.sign(eps)
    d = sign_disagreement(signs[i], signs[j])
    std = d.std() if d.numel() > 1 else torch.zeros((), dtype=torch.float64)
    return d.mean(), std


def occlude(x: Tensor, boxes: Tensor, fill: float = 0.0) -> Tensor:
    """Copy of images ``x`` ``[N, C, H, W]`` with box ``boxes[n] = (y0, x0, y1, x1)`` (half-open)
    of image ``n`` set to ``fill``."""
    out = x.clone()
    for n, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        out[n, :, y0:y1, x0:x1] = fill
    return out


def _check_boxes(boxes: Any, n: int, size: tuple[int, int]) -> Tensor:
    try:
        b = torch.as_tensor(boxes)
    except (TypeError, ValueError):
        raise InputError(
            f"boxes must be [N, 4] or [P, N, 4] integer boxes (y0, x0, y1, x1), got {boxes!r}"
        ) from None
    if b.dim() == 1 and b.shape[0] == 4:
        b = b.expand(n, 4)
    if b.dim() == 2:
        b = b.unsqueeze(0)
    if b.dim() != 3 or b.shape[-1] != 4:
        raise InputError(
            f"boxes must be [N, 4] (one part) or [P, N, 4] (P parts), got shape {tuple(b.shape)}"
        )
    if b.shape[1] == 1 and n > 1:
        b = b.expand(-1, n, 4)
    if b.shape[1] != n:
        raise InputError(f"boxes give {b.shape[1]} boxes per part for {n} images; give one each")
    if b.is_floating_point() and not bool((b == b.round()).all()):
        raise InputError("box corners must be whole pixels")
    b = b.to(torch.long).contiguous()
    h, w = size
    y0, x0, y1, x1 = b.unbind(-1)
    bad = (y0 < 0) | (x0 < 0) | (y1 > h) | (x1 > w) | (y1 <= y0) | (x1 <= x0)
    if bool(bad.any()):
        p, i = (int(v) for v in bad.nonzero()[0])
        raise InputError(
            f"box {b[p, i].tolist()} (part {p}, image {i}) is not a non-empty (y0, x0, y1, x1) "
            f"box inside the {h}x{w} image; corners are half-open pixel indices"
        )
    return b


def _random_boxes(boxes: Tensor, n_random: int, size: tuple[int, int], seed: int) -> Tensor:
    """``[P, R, N, 4]`` boxes of each part box's size at uniformly random places."""
    g = torch.Generator().manual_seed(int(seed))
    h, w = size
    p, n, _ = boxes.shape
    bh = (boxes[..., 2] - boxes[..., 0]).unsqueeze(1).expand(p, n_random, n)
    bw = (boxes[..., 3] - boxes[..., 1]).unsqueeze(1).expand(p, n_random, n)
    uy = torch.rand(p, n_random, n, generator=g, dtype=torch.float64)
    ux = torch.rand(p, n_random, n, generator=g, dtype=torch.float64)
    y0 = (uy * (h - bh + 1)).floor().long().clamp(max=h - bh)
    x0 = (ux * (w - bw + 1)).floor().long().clamp(max=w - bw)
    return torch.stack([y0, x0, y0 + bh, x0 + bw], dim=-1)


def _part_names(parts: Sequence[str] | None, n_parts: int) -> tuple[str, ...]:
    """``parts`` as strings (one per part), or ``"part 0"``, ``"part 1"``, ..."""
    if parts is None:
        return tuple(f"part {i}" for i in range(n_parts))
    part_names = tuple(str(p) for p in parts)
    if len(part_names) != n_parts:
        raise InputError(f"got {len(part_names)} part names for {n_parts} parts; give one each")
    return part_names


def _base_features(
    model: nn.Module, x: Tensor, names: tuple[str, ...], batch_size: int
) -> dict[str, Tensor]:
    """Each layer's flattened output ``[N, D]`` on the unoccluded images."""
    ref: dict[str, list[Tensor]] = {name: [] for name in names}
    for sl in batches(x.shape[0], batch_size):
        feats, _ = capture(model, x[sl], names, need_output=False)
        for name in names:
            ref[name].append(feats[name].flatten(1))
    return {name: torch.cat(v) for name, v in ref.items()}


def _occlusion_signs(
    model: nn.Module,
    x: Tensor,
    all_boxes: Tensor,
    base: dict[str, Tensor],
    fill: float,
    batch_size: int,
    progress: bool,
) -> dict[str, Tensor]:
    """Per layer, ``[P * (1 + R) * N, D]`` int8 signs of the feature change of each occlusion.

    Every occlusion set (the part, then each random trial) occludes all N images; their
    images go through the model in batches that mix sets, and only the int8 signs of the
    feature changes are kept.
    """
    from tqdm.auto import tqdm

    n = x.shape[0]
    flat_boxes = all_boxes.reshape(-1, 4)
    total = flat_boxes.shape[0]
    image_of = torch.arange(n).repeat(total // n)
    signs = {name: torch.zeros(total, b.shape[1], dtype=torch.int8) for name, b in base.items()}
    bar = tqdm(total=total, desc="correspondence", disable=not progress, unit="image", leave=False)
    try:
        for sl in batches(total, batch_size):
            idx = image_of[sl]
            moved = occlude(x[idx.to(x.device)], flat_boxes[sl], fill)
            feats, _ = capture(model, moved, tuple(base), need_output=False)
            for name in base:
                eps = base[name][idx.to(x.device)] - feats[name].flatten(1)
                signs[name][sl] = torch.sign(eps).to(torch.int8).cpu()
            bar.update(sl.stop - sl.start)
    finally:
        bar.close()
    return signs


def _sign_scores(
    signs: dict[str, Tensor], n_parts: int, n_random: int, n: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per part and layer: the part's score and its spread ``[P, L]``, the random trials'
    scores ``[P, R, L]``."""
    score = torch.zeros(n_parts, len(signs), dtype=torch.float64)
    score_std = torch.zeros_like(score)
    random_score = torch.zeros(n_parts, n_random, len(signs), dtype=torch.float64)
    for li, name in enumerate(signs):
        per_set = signs[name].view(n_parts, n_random + 1, n, -1)
        for p in range(n_parts):
            score[p, li], score_std[p, li] = pairwise_sign_change(per_set[p, 0])
            for r in range(n_random):
                random_score[p, r, li] = pairwise_sign_change(per_set[p, r + 1])[0]
    return score, score_std, random_score


def correspondence(
    model: nn.Module,
    images: Tensor,
    boxes: Sequence[Any] | Tensor,
    layers: Sequence[str] | None = None,
    n_random: int = 20,
    seed: int = 0,
    *,
    parts: Sequence[str] | None = None,
    fill: float = 0.0,
    batch_size: int = 128,
    progress: bool = True,
) -> CorrespondenceResult:
    """Measure how consistently layers respond to occluding the same part in several images.

    Args:
        model: the network.
        images: ``[N, C, H, W]`` images (``N >= 2``) of the same kind of object.
        boxes: the part in each image, ``(y0, x0, y1, x1)`` half-open pixel boxes: ``[N, 4]``
            for one part, ``[P, N, 4]`` for ``P`` parts (or one ``[4]`` box for all images).
        layers: layer names; default: the first parametric layer and the last hidden one.
        n_random: random occlusions per part (each image gets a box of its part box's size at a
            uniformly random place).
        seed: seed of the random boxes (the global RNG is not touched).
        parts: a name per part (default ``"part 0"``, ...).
        fill: the value occluded pixels get.
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        A :class:`CorrespondenceResult`; compare ``score`` with ``random_mean``.

    Example:
        >>> eyes = [[8, 4, 14, 10]] * 5                                      # doctest: +SKIP
        >>> res = correspondence(model, dogs, eyes, ["conv2", "fc1"])         # doctest: +SKIP
        >>> res.score, res.random_mean                                       # doctest: +SKIP
    """
    x = check_images(model, images)
    n = x.shape[0]
    if n < 2:
        raise InputError("correspondence needs at least two images (it compares image pairs)")
    size = (int(x.shape[-2]), int(x.shape[-1]))
    part_boxes = _check_boxes(boxes, n, size)
    n_parts = part_boxes.shape[0]
    check_positive_int("n_random", n_random)
    part_names = _part_names(parts, n_parts)
    names = default_layers(model, x) if layers is None else check_layers(model, layers)
    names = tuple(dict.fromkeys(names))
    fill = float(fill)
    rand_boxes = _random_boxes(part_boxes, n_random, size, seed)
    base = _base_features(model, x, names, batch_size)
    all_boxes = torch.cat([part_boxes.unsqueeze(1), rand_boxes], dim=1)  # [P, 1 + R, N, 4]
    signs = _occlusion_signs(model, x, all_boxes, base, fill, batch_size, progress)
    score, score_std, random_score = _sign_scores(signs, n_parts, n_random, n)
    return CorrespondenceResult(
        layers=names,
        parts=part_names,
        score=score,
        score_std=score_std,
        random_score=random_score,
        boxes=part_boxes,
        random_boxes=rand_boxes,
        fill=fill,
        seed=int(seed),
    )


def read_boxes(path: str | os.PathLike[str]) -> tuple[list[Any], list[str], list[int] | None]:
    """The parts of a boxes file: ``(boxes, part names, dataset indices)``.

    The file is JSON ``{"indices": [i, ...], "parts": {"left eye": [[y0, x0, y1, x1], ...],
    ...}}``: one box per image for each part (``boxes`` is ``[P][N][4]``, in the order of the
    part names); ``indices`` (optional) names the dataset images the boxes belong to.

    Raises:
        InputError: the file cannot be read as JSON or does not hold that layout.
    """
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as JSON ({exc}); see --help for the format") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("parts"), dict) or not spec["parts"]:
        raise InputError(
            f'{path} must hold {{"indices": [i, ...], "parts": {{"name": '
            "[[y0, x0, y1, x1] per image], ...}}"
        )
    names = list(spec["parts"])
    return [spec["parts"][k] for k in names], names, spec.get("indices")


def _summary(res: CorrespondenceResult) -> str:
    cells = "; ".join(
        f"{p} {name}: {float(res.score[i, j]):.3f} vs random {float(res.random_mean[i, j]):.3f}"
        for i, p in enumerate(res.parts)
        for j, name in enumerate(res.layers)
    )
    return f"sign change {cells}"


def _register() -> None:
    register_analysis(
        Analysis(
            name="correspondence",
            result=CorrespondenceResult,
            figure="deconvviz.render.analyses:correspondence_figure",
            table="deconvviz.render.analyses:correspondence_table",
            compute=lambda model, x, y=None, **kw: correspondence(model, x, **kw),
            summary=_summary,
            command="correspondence",
            report=(
                ReportSection(
                    "Correspondence (centred occluder vs random occluders)",
                    "correspondence",
                    lambda i: correspondence(
                        i.model,
                        i.x,
                        i.centre,
                        i.layers,
                        n_random=10,
                        seed=0,
                        parts=("centre",),
                        progress=False,
                    ),
                    order=20,
                ),
            ),
        )
    )


_register()
