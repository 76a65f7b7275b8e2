"""Dataset-scale projections: the top-k activations of every feature map (the paper's Fig. 2).

:func:`top_activations` streams a DataLoader once, stopping each forward pass at the layer, and
keeps per channel the ``k`` strongest activations from **distinct** images (each image
contributes its strongest activation of that map), in ``O(channels x k)`` memory on the model's
device. It is the one-layer case of :func:`deconvviz.scan.scan`, and lives there (ties go to the
lowest image index, then the lowest position). This module holds the results and
:func:`project_top`, which projects all of them in batches and crops the image patches (receptive
fields) that caused them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz.engine import Deconvnet, ReceptiveField, batch_images, model_device_dtype
from deconvviz.errors import InputError

__all__ = [
    "FewImagesWarning",
    "TopActivations",
    "TopProjections",
    "few_images_message",
    "project_top",
]


class FewImagesWarning(UserWarning):
    """The dataset holds fewer images than the ``k`` top activations asked for: the missing
    entries are padding (image index ``-1``, value ``-inf``), never drawn as real ones."""


def few_images_message(k: int, n: int) -> str:
    """The one-line warning for top-``k`` asked over ``n < k`` images."""
    return (
        f"top-{k} activations asked for, but the data holds only {n} image"
        f"{'' if n == 1 else 's'}: each feature map gets {n} real entries and {k - n} padding "
        f"entries (image index -1), which are not drawn; ask for at most {n} (--top {n}, "
        f"k={n} in Python) or give more images"
    )


@dataclass(frozen=True)
class TopActivations:
    """The ``k`` strongest activations of each channel of ``layer`` over a dataset.

    Attributes:
        layer: the layer's name.
        values: ``[C, k]`` activation values, strongest first (``-inf`` where the dataset had
            fewer than ``k`` images).
        indices: ``[C, k]`` dataset indices of the images (``-1`` where missing: padding, see
            :attr:`valid`).
        positions: ``[C, k, 2]`` ``(row, col)`` in the feature map (``0, 0`` for ``[N, C]``
            layers).
        boxes: ``[C, k, 4]`` receptive field ``(y0, x0, y1, x1)`` in input pixels, half-open,
            clipped to the image (the whole image for non-spatial layers).
        input_size: ``(H, W)`` of the images.
        receptive_field: the layer's :class:`~deconvviz.ReceptiveField`, or ``None``.
    """

    layer: str
    values: Tensor
    indices: Tensor
    positions: Tensor
    boxes: Tensor
    input_size: tuple[int, int]
    receptive_field: ReceptiveField | None

    @property
    def k(self) -> int:
        return int(self.values.shape[1])

    @property
    def channels(self) -> int:
        return int(self.values.shape[0])

    @property
    def valid(self) -> Tensor:
        """``[C, k]`` True for real entries, False for padding (fewer images than ``k``)."""
        return self.indices >= 0


@dataclass(frozen=True)
class TopProjections:
    """Projections of a :class:`TopActivations` and the image patches that caused them.

    Attributes:
        top: the activations that were projected.
        reconstructions: ``[C, k, Cin, h, w]`` projections, cut to the receptive field box
            (``h, w`` = the receptive field's size, at most the image's); where the box runs
            off the image, the outside is zero. A field larger than the image is cut at the
            image's edge instead (:func:`canvas_origin`), so the canvas always holds the whole
            projection.
        patches: ``[C, k, Cin, h, w]`` the input pixels of the same boxes (zero outside the image).
        rule: the ReLU rule used.
    """

    top: TopActivations
    reconstructions: Tensor
    patches: Tensor
    rule: str


def input_boxes(
    rf: ReceptiveField | None, positions: Tensor, size: tuple[int, int], clip: bool = True
) -> Tensor:
    """``[C, k, 4]`` input-pixel boxes of activations at ``positions`` (``[C, k, 2]``): their
    receptive fields (:meth:`ReceptiveField.boxes`), or the whole image where ``rf`` is unknown."""
    if rf is None:
        c, k, _ = positions.shape
        return torch.tensor([0, 0, size[0], size[1]]).repeat(c, k, 1)
    return rf.boxes(positions, clip=clip)


def project_top(
    model: nn.Module,
    dataset: Sequence[Any],
    top: TopActivations,
    rule: str = "deconvnet",
    *,
    channels: Sequence[int] | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> TopProjections:
    """Project every activation of ``top`` and cut out the image patches that caused them.

    Args:
        model: the network ``top`` was computed on.
        dataset: the dataset the loader read (``dataset[i]`` is an image or ``(image, label)``).
        top: from :func:`top_activations`.
        rule: ``"deconvnet"``, ``"gradient"`` or ``"guided"``.
        channels: only these channels (default: all).
        batch_size: seeds per batch (each batch is further chunked to the memory budget).
        progress: show a progress bar.

    Returns:
        A :class:`TopProjections`; reconstructions and patches are ``[C', k, Cin, h, w]``.
    """
    from tqdm.auto import tqdm

    device, dtype = model_device_dtype(model)
    chans = _checked_channels(top, channels)
    canvas = _new_canvas(top, len(chans))
    fields = input_boxes(top.receptive_field, top.positions, top.input_size, clip=False)
    # The seeds, channel-major; missing entries (index -1) stay zero.
    seeds = [(ci, j) for ci, c in enumerate(chans) for j in range(top.k) if top.indices[c, j] >= 0]
    bar = tqdm(
        total=len(seeds),
        desc=f"projecting {top.layer}",
        disable=not progress,
        unit="seed",
        leave=False,
    )
    with Deconvnet(model, rule, warn=False) as dn, bar:
        for start in range(0, len(seeds), batch_size):
            block = seeds[start : start + batch_size]
            wanted, img, chan, pos, vals = _block_seeds(top, chans, block)
            images = torch.stack([batch_images(dataset[i]) for i in wanted]).to(device, dtype)
            images = dn.check_input(images)
            vals = vals.to(device, dtype)
            for idx, grads, boxes in dn.project_windows(
                images, top.layer, img, chan, pos, values=vals
            ):
                for g, s, box in zip(grads, idx.tolist(), boxes, strict=True):
                    ci, j = block[s]
                    field = tuple(int(v) for v in fields[chans[ci], j])
                    canvas.paste(ci, j, g, images[img[s]], box, field)  # type: ignore[arg-type]
            bar.update(len(block))
    if canvas.recs is None or canvas.patches is None:
        raise InputError("top has no activations to project (the dataset was empty)")
    return TopProjections(top, canvas.recs.cpu(), canvas.patches.cpu(), rule)


def _checked_channels(top: TopActivations, channels: Sequence[int] | None) -> list[int]:
    """The channels of ``top`` to project (default all), each checked to be in range."""
    chans = list(range(top.channels)) if channels is None else [int(c) for c in channels]
    bad = [c for c in chans if not 0 <= c < top.channels]
    if bad:
        raise InputError(
            f"channel {bad[0]} is out of range (the layer has {top.channels} channels)"
        )
    return chans


def _new_canvas(top: TopActivations, n_channels: int) -> _Canvas:
    """An empty canvas for ``n_channels`` of ``top``: one receptive field (at most the image)
    per entry, or the whole image where the receptive field is unknown."""
    h_img, w_img = top.input_size
    rf = top.receptive_field
    bh, bw = (min(rf.size[0], h_img), min(rf.size[1], w_img)) if rf is not None else (h_img, w_img)
    return _Canvas((n_channels, top.k, bh, bw))


def _block_seeds(
    top: TopActivations, chans: list[int], block: list[tuple[int, int]]
) -> tuple[list[int], Tensor, Tensor, Tensor, Tensor]:
    """A block of seeds ``(channel index, rank)``: the dataset images it needs (sorted), and
    per seed its image (index into those), channel, position and value."""
    wanted = sorted({int(top.indices[chans[ci], j]) for ci, j in block})
    where = {i: n for n, i in enumerate(wanted)}
    img = torch.tensor([where[int(top.indices[chans[ci], j])] for ci, j in block])
    chan = torch.tensor([chans[ci] for ci, _ in block])
    pos = torch.stack([top.positions[chans[ci], j] for ci, j in block])
    vals = torch.stack([top.values[chans[ci], j] for ci, j in block])
    return wanted, img, chan, pos, vals


def canvas_origin(start: int, end: int, size: int) -> int:
    """Where, along one side, a :class:`TopProjections` entry's canvas starts in its image, for
    a receptive field ``[start, end)`` on an image side of ``size`` pixels.

    A field that fits the image keeps its own origin (so every entry of a unit lines up, and
    the part of the field off the image is zero); a field larger than the image is anchored at
    its clipped start, so the whole of the field that lies on the image (all the projection can
    touch) is on the canvas, which is then the image's size.

    Example:
        >>> canvas_origin(-3, 5, 32), canvas_origin(-19, 20, 32), canvas_origin(5, 44, 32)
        (-3, 0, 5)
    """
    return start if end - start <= size else max(start, 0)


@dataclass
class _Canvas:
    """The ``[C', k, Cin, h, w]`` reconstructions and patches of :func:`project_top`, made on
    the first paste (in the images' channels, dtype and device)."""

    shape: tuple[int, int, int, int]  # C', k, h, w
    recs: Tensor | None = None
    patches: Tensor | None = None

    def paste(
        self,
        ci: int,
        j: int,
        grad: Tensor,
        image: Tensor,
        box: tuple[int, int, int, int],
        field: tuple[int, int, int, int],
    ) -> None:
        """Copy a seed's projection (given for ``box`` of its image) and the image's pixels
        into entry ``(ci, j)``, which holds the receptive field box ``field`` (clipped to the
        canvas' size; the outside of the image stays zero)."""
        c, k, bh, bw = self.shape
        if self.recs is None or self.patches is None:
            self.recs = image.new_zeros((c, k, image.shape[0], bh, bw))
            self.patches = image.new_zeros((c, k, image.shape[0], bh, bw))
        y0, x0, y1, x1 = box
        fy0, fx0, fy1, fx1 = field
        h_img, w_img = int(image.shape[-2]), int(image.shape[-1])
        oy, ox = canvas_origin(fy0, fy1, h_img), canvas_origin(fx0, fx1, w_img)
        # intersection of the receptive field box with the image, the crop and the canvas
        cy0, cx0 = max(fy0, 0, y0, oy), max(fx0, 0, x0, ox)
        cy1, cx1 = min(fy1, h_img, y1, oy + bh), min(fx1, w_img, x1, ox + bw)
        if cy1 <= cy0 or cx1 <= cx0:
            return
        into = (slice(None), slice(cy0 - oy, cy1 - oy), slice(cx0 - ox, cx1 - ox))
        self.recs[ci, j][into] = grad[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        self.patches[ci, j][into] = image[:, cy0:cy1, cx0:cx1]
