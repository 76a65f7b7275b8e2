"""Dataset-scale projections: the top-k activations of every feature map (the paper's Fig. 2).

:func:`top_activations` streams a DataLoader once, stopping each forward pass at the layer, and
keeps per channel the ``k`` strongest activations from **distinct** images (each image
contributes its strongest activation of that map), in ``O(channels x k)`` memory on the model's
device. It is the one-layer case of :func:`deconvviz.analyses.scan.scan`, and lives there (ties go
to the
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

from deconvviz.base._util import DEFAULT_MAX_MEMORY, items_within
from deconvviz.base.checks import Resolved, batch_images, resolve_model
from deconvviz.base.errors import InputError
from deconvviz.engine.deconvnet import Deconvnet
from deconvviz.engine.receptive import ReceptiveField

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
        channels: the channels of ``top`` these hold, in order (``C`` of them), when
            :func:`project_top` was given ``channels=``; ``None``: every channel.
    """

    top: TopActivations
    reconstructions: Tensor
    patches: Tensor
    rule: str
    channels: tuple[int, ...] | None = None


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
    batch_size: int = 4096,
    progress: bool = True,
    precision: str = "fp32",
) -> TopProjections:
    """Project every activation of ``top`` and cut out the image patches that caused them.

    The seeds of every unit are taken image by image, so that one batch holds many units' seeds
    of few images: seeds whose receptive-field crops share a shape walk back together, and where
    the receptive field covers the whole image each image runs forward once for all of its seeds.

    Args:
        model: the network ``top`` was computed on.
        dataset: the dataset the loader read (``dataset[i]`` is an image or ``(image, label)``).
        top: from :func:`top_activations`.
        rule: ``"deconvnet"``, ``"gradient"`` or ``"guided"``.
        channels: only these channels (default: all).
        batch_size: seeds per batch (each batch is further chunked to the memory budget, and
            holds at most as many images as fit in it).
        progress: show a progress bar.
        precision: ``"fp32"`` (the model's dtype; exact) or ``"bf16"`` (bfloat16 autocast).

    Returns:
        A :class:`TopProjections`; reconstructions and patches are ``[C', k, Cin, h, w]``.
    """
    door = resolve_model(model)
    chans = _checked_channels(top, channels)
    held = None if channels is None else tuple(chans)
    with Deconvnet(model, rule, warn=False, precision=precision) as dn:
        return project_top_with(dn, door, dataset, top, chans, held, batch_size, progress)


def project_top_with(
    dn: Deconvnet,
    door: Resolved,
    dataset: Sequence[Any],
    top: TopActivations,
    chans: list[int],
    held: tuple[int, ...] | None,
    batch_size: int,
    progress: bool,
) -> TopProjections:
    """:func:`project_top` on an attached handle, its arguments checked at the caller's door
    (``chans``: in range; ``door``: the model's device and dtype); checks none of them again."""
    from tqdm.auto import tqdm

    device, dtype = door.device, door.dtype
    canvas = _new_canvas(top, len(chans))
    fields = input_boxes(top.receptive_field, top.positions, top.input_size, clip=False)
    blocks = _seed_blocks(top, chans, batch_size, dtype)
    bar = tqdm(
        total=sum(len(b) for b in blocks),
        desc=f"projecting {top.layer}",
        disable=not progress,
        unit="seed",
        leave=False,
    )
    with bar:
        for block in blocks:
            wanted, img, chan, pos, vals = _block_seeds(top, chans, block)
            # checked once, by project_windows
            images = torch.stack([batch_images(dataset[i]) for i in wanted]).to(device, dtype)
            vals = vals.to(device, dtype)
            ci_all = torch.tensor([ci for ci, _ in block])
            j_all = torch.tensor([j for _, j in block])
            for idx, grads, boxes in dn.project_windows(
                images, top.layer, img, chan, pos, values=vals
            ):
                ci, j = ci_all[idx], j_all[idx]
                field = fields[torch.tensor(chans)[ci], j]
                canvas.paste_many(ci, j, grads, images, img[idx], boxes, field)
            bar.update(len(block))
    if canvas.recs is None or canvas.patches is None:
        raise InputError("top has no activations to project (the dataset was empty)")
    return TopProjections(top, canvas.recs.cpu(), canvas.patches.cpu(), dn.rule, held)


def _seed_blocks(
    top: TopActivations, chans: list[int], batch_size: int, dtype: torch.dtype
) -> list[list[tuple[int, int]]]:
    """The seeds ``(channel index, rank)`` in batches, image by image: at most ``batch_size``
    seeds and as many images as the memory budget holds per batch; missing entries (index -1)
    are left out (they stay zero)."""
    h, w = top.input_size
    per_image = 3 * h * w * torch.empty((), dtype=dtype).element_size() * 4  # + its crops
    max_images = items_within(DEFAULT_MAX_MEMORY, per_image)
    by_image: dict[int, list[tuple[int, int]]] = {}
    for ci, c in enumerate(chans):
        for j, i in enumerate(top.indices[c].tolist()):
            if i >= 0:
                by_image.setdefault(int(i), []).append((ci, j))
    blocks: list[list[tuple[int, int]]] = []
    block: list[tuple[int, int]] = []
    images = 0
    for i in sorted(by_image):
        seeds = by_image[i]
        if block and (len(block) + len(seeds) > batch_size or images >= max_images):
            blocks.append(block)
            block, images = [], 0
        block += seeds
        images += 1
    if block:
        blocks.append(block)
    return blocks


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


def canvas_inside(
    rf: ReceptiveField | None,
    positions: Tensor,
    input_size: tuple[int, int],
    canvas: tuple[int, int],
) -> Tensor:
    """``[k, h, w]`` True where a pixel of the ``h x w`` canvas of an entry at ``positions``
    (``[k, 2]``) lies on the image and inside its receptive field: the pixels a
    :class:`TopProjections` patch copies from the image (the rest is zero). The canvas starts
    where :func:`canvas_origin` says, as :func:`project_top` pastes it.

    Example:
        >>> rf = ReceptiveField((2, 2), (-19, -19), (19, 19), (32, 32))   # 39 px on 32 px
        >>> canvas_inside(rf, torch.tensor([[0, 0]]), (32, 32), (32, 32)).sum().item()
        400
    """
    k = int(positions.shape[0])
    h, w = canvas
    if rf is None:
        return torch.ones(k, h, w, dtype=torch.bool)
    f = rf.boxes(positions.cpu().view(1, k, 2), clip=False)[0]  # [k, 4] unclipped fields
    height, width = input_size
    _, rows = _canvas_side(f[:, 0], f[:, 2], height, h)
    _, cols = _canvas_side(f[:, 1], f[:, 3], width, w)
    return rows[:, :, None] & cols[:, None, :]


def _canvas_side(lo: Tensor, hi: Tensor, size: int, n: int) -> tuple[Tensor, Tensor]:
    """Along one side, for fields ``[lo, hi)`` (``[k]`` each, unclipped) on an image side of
    ``size``: ``[k, n]`` the image coordinate of each of the canvas' ``n`` pixels (the canvas
    starts where :func:`canvas_origin` says) and whether that pixel lies on the image and in
    the field."""
    origin = torch.where(hi - lo <= size, lo, lo.clamp(min=0))
    at = origin[:, None] + torch.arange(n, device=lo.device)
    return at, (at >= 0) & (at < size) & (at >= lo[:, None]) & (at < hi[:, None])


@dataclass
class _Canvas:
    """The ``[C', k, Cin, h, w]`` reconstructions and patches of :func:`project_top`, made on
    the first paste (in the images' channels, dtype and device)."""

    shape: tuple[int, int, int, int]  # C', k, h, w
    recs: Tensor | None = None
    patches: Tensor | None = None

    def paste_many(
        self,
        ci: Tensor,
        j: Tensor,
        grads: Tensor,
        images: Tensor,
        img: Tensor,
        boxes: list[tuple[int, int, int, int]],
        fields: Tensor,
    ) -> None:
        """Copy seeds' projections (``grads[s]`` given for ``boxes[s]`` of image ``img[s]``,
        boxes of one size) and the images' pixels into entries ``(ci[s], j[s])``, which hold the
        receptive field boxes ``fields[s]`` (unclipped; each canvas starts where
        :func:`canvas_origin` says): every pixel of the field that lies inside the image, the
        box and the canvas, in one gather; the rest stays zero.
        """
        c, k, bh, bw = self.shape
        if self.recs is None or self.patches is None:
            self.recs = images.new_zeros((c, k, images.shape[1], bh, bw))
            self.patches = images.new_zeros((c, k, images.shape[1], bh, bw))
        dev = images.device
        h_img, w_img = images.shape[-2:]
        box = torch.tensor(boxes, dtype=torch.long, device=dev)  # [S, 4]
        fields = fields.to(dev)
        gh, gw = grads.shape[-2:]
        # image rows/cols of each canvas pixel, and which are on the image and in the field
        # (the canvas_inside rule), kept where the seed's crop box also holds them
        rows, ok_r = _canvas_side(fields[:, 0], fields[:, 2], int(h_img), bh)  # [S, bh]
        cols, ok_c = _canvas_side(fields[:, 1], fields[:, 3], int(w_img), bw)  # [S, bw]
        ok_r &= (rows >= box[:, 0:1]) & (rows < box[:, 2:3])
        ok_c &= (cols >= box[:, 1:2]) & (cols < box[:, 3:4])
        keep = (ok_r[:, :, None] & ok_c[:, None, :]).unsqueeze(1)  # [S, 1, bh, bw]
        s = torch.arange(len(box), device=dev)[:, None, None]
        gr = (rows - box[:, 0:1]).clamp(0, gh - 1)[:, :, None]
        gc = (cols - box[:, 1:2]).clamp(0, gw - 1)[:, None, :]
        rec = grads.to(dev).permute(0, 2, 3, 1)[s, gr, gc].permute(0, 3, 1, 2)
        ir, ic = rows.clamp(0, h_img - 1)[:, :, None], cols.clamp(0, w_img - 1)[:, None, :]
        pix = images.permute(0, 2, 3, 1)[img.to(dev)[:, None, None], ir, ic].permute(0, 3, 1, 2)
        zero = rec.new_zeros(())
        ci, j = ci.to(dev), j.to(dev)
        self.recs[ci, j] = torch.where(keep, rec.to(self.recs.dtype), zero)
        self.patches[ci, j] = torch.where(keep, pix, zero)
