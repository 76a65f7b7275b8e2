"""Receptive-field crops and the shared whole-image path: how the seeds of a layer are batched.

A projection's reverse path is nonzero only inside its seed's receptive field, so a seed can run
on a crop of the input that holds that field, aligned to the layer's stride (:func:`crop_boxes`;
same result as the full image, tested). Crops of equal size are gathered from and scattered into
image batches in one op (:func:`gather_windows`, :func:`scatter_windows`). A plain convolution's
one-activation seed needs no convolution at all (:func:`place_filters`).

Where a layer's receptive field covers the whole image crops cannot help, and its seeds share
work another way (:func:`project_shared`): each image runs forward **once** (with the rule's
ReLUs, stopped at the layer) and every seed of that image walks back through that one recorded
pass (``autograd.grad`` with ``retain_graph``, one backward per "slot": the ``j``-th seed of every
image of a chunk together). A per-seed loop (captum's) runs one forward *and* one backward per
seed. The seeds' values come from the same forward, so no extra pass is needed to find them.

(``torch.autograd.grad(..., is_grads_batched=True)`` gives the same numbers but was slower on
CPU here: some backward ops have no batching rule and vmap falls back to a loop.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from deconvviz.base._util import items_within
from deconvviz.engine.receptive import ReceptiveField
from deconvviz.engine.tracer import exact_cuda

__all__ = [
    "Box",
    "crop_boxes",
    "gather_windows",
    "place_filters",
    "plain_conv",
    "project_shared",
    "same_values",
    "scatter_windows",
]

#: An input box ``(y0, x0, y1, x1)``, half-open.
Box = tuple[int, int, int, int]


# ---------------------------------------------------------------------- crop planning


def crop_boxes(
    rf: ReceptiveField | None, rows: Tensor, cols: Tensor, size: tuple[int, int]
) -> list[Box]:
    """Per seed at ``(rows[s], cols[s])``, the aligned input crop that holds its receptive field.

    The whole image for every seed where the field is unknown (``rf`` ``None``) or the crop
    would cover most of the image anyway."""
    h, w = size
    full = (0, 0, h, w)
    if rf is None:
        return [full] * len(rows)
    sides = []
    for dim, total in ((0, h), (1, w)):
        side = _crop_side(rf, (rows if dim == 0 else cols).tolist(), dim, total)
        if side is None:
            return [full] * len(rows)
        sides.append(side)
    return [(a[0], b[0], a[1], b[1]) for a, b in zip(sides[0], sides[1], strict=True)]


def _crop_side(
    rf: ReceptiveField, pos: list[int], dim: int, total: int
) -> list[tuple[int, int]] | None:
    """The crops' ``(start, end)`` along one dimension, or ``None`` when crops cannot help."""
    jump, start, end = rf.jump[dim], rf.start[dim], rf.end[dim]
    # the receptive field, plus the offset of its start from the stride grid (crops must
    # start on the grid so that pooling windows and padded borders stay those of the
    # full image; every receptive field starts at the same offset from it)
    span = end - start + 1 + start % jump
    if span >= 0.75 * total:
        return None
    last = max(0, (total - span) // jump * jump)  # aligned origin of the end crops
    side = []
    for p in pos:
        lo = p * jump + start
        o = max(0, lo // jump * jump)
        o = min(o, last)
        side.append((o, min(total, max(o + span, total if o == last else 0))))
    return side


def same_values(got: Tensor, want: Tensor, rounding: torch.dtype | None = None) -> bool:
    """Whether activations computed on crops equal the full image's, up to rounding.

    The tolerance is ``sqrt(eps)`` of the dtype (1.5e-8 in float64, 3.5e-4 in float32; of
    ``rounding`` when given: the dtype the values were computed in, bfloat16 under autocast),
    relative to each value and to the largest value of the batch: rounding differs between a
    crop and the full image (another summation order), a wrong crop changes values at the scale
    of the layer.
    """
    if got.shape != want.shape:
        return False
    if not got.is_floating_point():
        return bool(torch.equal(got, want))
    r = float(torch.finfo(rounding or got.dtype).eps) ** 0.5
    scale = float(torch.maximum(want.abs().max(), got.abs().max()))
    return bool(torch.allclose(got, want, rtol=r, atol=r * scale))


def _hooked(module: nn.Module) -> bool:
    """Whether forward or backward hooks (the module's own or global ones) may change what the
    module computes."""
    own = (
        module._forward_hooks,
        module._forward_pre_hooks,
        module._backward_hooks,
        module._backward_pre_hooks,
    )
    glob = torch.nn.modules.module
    global_ = (
        getattr(glob, name, None)
        for name in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    )
    return any(bool(d) for d in own) or any(bool(d) for d in global_)


def plain_conv(module: nn.Module) -> bool:
    """A Conv2d whose forward is PyTorch's own, with zero padding given as numbers, and no hooks
    that could change its input or output."""
    return (
        isinstance(module, nn.Conv2d)
        and not _hooked(module)
        and type(module).forward is nn.Conv2d.forward
        and type(module)._conv_forward is nn.Conv2d._conv_forward
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def place_filters(
    conv: nn.Conv2d,
    input_shape: Sequence[int],
    channel: Tensor,
    row: Tensor,
    col: Tensor,
    value: Tensor,
) -> Tensor:
    """The transposed filters of ``conv`` applied to one-activation seeds, without a convolution.

    Seed ``s`` is ``value[s]`` at ``(channel[s], row[s], col[s])`` of the convolution's output;
    the result ``[S, in_channels, H, W]`` is filter ``channel[s]`` scaled by the value and placed
    where that output looked (stride, padding, dilation and groups honoured). Equal to
    ``transposed_conv2d`` of the one-hot seeds (tested).
    """
    weight = conv.weight.detach()
    s_count = len(channel)
    cin, h, w = int(input_shape[1]), int(input_shape[-2]), int(input_shape[-1])
    groups = conv.groups
    cin_g = cin // groups
    kh, kw = weight.shape[-2:]
    sh, sw = (int(v) for v in conv.stride)
    ph, pw = (int(v) for v in conv.padding)  # a number pair: plain_conv refused "same"
    dh, dw = (int(v) for v in conv.dilation)
    dev = weight.device
    channel, row, col = channel.to(dev), row.to(dev), col.to(dev)
    filt = weight[channel] * value.to(dev, weight.dtype).view(-1, 1, 1, 1)  # [S, cin_g, kh, kw]
    rows = (row * sh)[:, None] + torch.arange(kh, device=dev) * dh  # padded coordinates
    cols = (col * sw)[:, None] + torch.arange(kw, device=dev) * dw
    # every output position's window lies inside the padded input, so this canvas holds it
    canvas = weight.new_zeros((s_count, h + 2 * ph, w + 2 * pw, cin_g))
    canvas[torch.arange(s_count, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]] = (
        filt.permute(0, 2, 3, 1)
    )
    inner = canvas[:, ph : ph + h, pw : pw + w].permute(0, 3, 1, 2)  # [S, cin_g, h, w]
    if groups == 1:
        return inner.contiguous()
    out = weight.new_zeros((s_count, groups, cin_g, h, w))
    group = channel // (conv.out_channels // groups)
    out[torch.arange(s_count, device=dev), group] = inner
    return out.view(s_count, cin, h, w)


def _window_index(
    boxes: Sequence[tuple[int, int, int, int]], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Row and column indices ``[S, h, 1]`` and ``[S, 1, w]`` of equally sized boxes."""
    y0, x0, y1, x1 = (torch.tensor(v, device=device) for v in zip(*boxes, strict=True))
    h, w = int(y1[0] - y0[0]), int(x1[0] - x0[0])
    rows = y0[:, None] + torch.arange(h, device=device)
    cols = x0[:, None] + torch.arange(w, device=device)
    return rows[:, :, None], cols[:, None, :]


def gather_windows(x: Tensor, img: Tensor, boxes: Sequence[tuple[int, int, int, int]]) -> Tensor:
    """``[S, C, h, w]`` crops ``x[img[s], :, y0:y1, x0:x1]`` of equally sized boxes, in one op."""
    rows, cols = _window_index(boxes, x.device)
    picked = x.permute(0, 2, 3, 1)[img.to(x.device)[:, None, None], rows, cols]  # [S, h, w, C]
    if x.device.type == "cpu":
        # channels-last, as gathered: oneDNN's convolutions and their backward run faster on it
        return picked.permute(0, 3, 1, 2)
    return picked.permute(0, 3, 1, 2).contiguous()


def scatter_windows(
    out: Tensor, idx: Tensor, values: Tensor, boxes: Sequence[tuple[int, int, int, int]]
) -> None:
    """``out[idx[s], :, y0:y1, x0:x1] = values[s]`` for equally sized boxes, in one op."""
    rows, cols = _window_index(boxes, out.device)
    view = out.permute(0, 2, 3, 1)  # a view: writing into it writes into out
    view[idx.to(out.device)[:, None, None], rows, cols] = values.permute(0, 2, 3, 1)


# ---------------------------------------------------------------------- the shared whole-image path


def project_shared(
    forward_to: Callable[[Tensor], Tensor],
    x: Tensor,
    img: Tensor,
    chan: Tensor,
    rows: Tensor | None,
    cols: Tensor | None,
    members: Sequence[int],
    *,
    bytes_per_sample: int,
    max_memory: int,
    modules: Iterable[nn.Module] = (),
) -> Iterator[tuple[Tensor, Tensor, list[Box]]]:
    """Project seeds ``members`` (of ``img``/``chan``/``rows``/``cols``) on whole images.

    ``forward_to(xin)`` runs ``xin`` forward to the layer, recording autograd with the rule's
    ReLUs, and returns the layer's output. ``rows``/``cols`` ``None``: each seed is its channel's
    strongest activation in its image (first maximum), found in that same forward pass.
    ``bytes_per_sample`` and ``max_memory`` size the chunks; ``modules`` are the model's (for
    :func:`~deconvviz.engine.tracer.exact_cuda`).

    Yields ``(seed indices, gradients [S, C, H, W], boxes)`` (every box the whole image).
    """
    by_img: dict[int, list[int]] = {}
    for s in members:
        by_img.setdefault(int(img[s]), []).append(s)
    per_image = max(bytes_per_sample, 1) * 3  # forward, graph, one slot's gradients
    mods = list(modules)
    for part in _chunks(by_img, items_within(max_memory, per_image)):
        xin = x[torch.tensor(part, device=x.device)].detach().clone()
        if xin.dim() == 4 and xin.device.type == "cpu":
            # oneDNN's convolutions (and their backward, run once per slot) are faster on
            # channels-last tensors; the values are the same up to float rounding order
            xin = xin.contiguous(memory_format=torch.channels_last)
        xin.requires_grad_(True)
        out = forward_to(xin)
        seeds = [by_img[i] for i in part]
        for sids, grads in _walk_back(out, xin, seeds, chan, rows, cols, mods):
            yield sids, grads, [(0, 0, int(x.shape[-2]), int(x.shape[-1]))] * len(sids)


def _chunks(by_img: dict[int, list[int]], limit: int) -> list[list[int]]:
    """Images in chunks of at most ``limit``; a chunk holds images with the same number of
    seeds (every slot's backward runs over the whole chunk, so no backward is spent on images
    that have no seed in that slot)."""
    by_count: dict[int, list[int]] = {}
    for i in sorted(by_img):
        by_count.setdefault(len(by_img[i]), []).append(i)
    return [
        group[start : start + limit]
        for _, group in sorted(by_count.items())
        for start in range(0, len(group), limit)
    ]


def _walk_back(
    out: Tensor,
    xin: Tensor,
    seeds: list[list[int]],
    chan: Tensor,
    rows: Tensor | None,
    cols: Tensor | None,
    modules: list[nn.Module],
) -> Iterator[tuple[Tensor, Tensor]]:
    """Per slot, ``(seed indices, gradients)``: ``seeds[n]`` are the seeds of image ``xin[n]``,
    the ``j``-th seeds of all images walk back together through the one recorded pass."""
    slots = max(len(s) for s in seeds)
    best = None
    if out.dim() == 4 and (rows is None or cols is None):
        best = out.detach().flatten(2).argmax(dim=2)  # [n, C], first maximum on ties
    for slot in range(slots):
        ns = [n for n, s in enumerate(seeds) if len(s) > slot]
        sids = torch.tensor([seeds[n][slot] for n in ns], dtype=torch.long)
        nt = torch.tensor(ns, device=out.device)
        index = _slot_index(out, nt, chan[sids].to(out.device), sids, rows, cols, best)
        seed = torch.zeros_like(out)
        seed[index] = out[index].detach()
        if not out.requires_grad:
            yield sids, xin.new_zeros((len(ns), *xin.shape[1:])).detach()
            continue
        with torch.enable_grad(), exact_cuda(xin, modules):
            (g,) = torch.autograd.grad(
                out, xin, seed, retain_graph=slot < slots - 1, allow_unused=True
            )
        zeros = xin.new_zeros((len(ns), *xin.shape[1:]))
        grads = zeros if g is None else g.detach()[nt]
        yield sids, grads


def _slot_index(
    out: Tensor,
    nt: Tensor,
    ch: Tensor,
    sids: Tensor,
    rows: Tensor | None,
    cols: Tensor | None,
    best: Tensor | None,
) -> tuple[Tensor, ...]:
    """Where one slot's seeds sit in ``out``: the given positions, or the strongest ones."""
    if out.dim() != 4:
        return (nt, ch)
    if best is not None:
        where = best[nt, ch]
        return (nt, ch, where // out.shape[-1], where % out.shape[-1])
    assert rows is not None and cols is not None
    return (nt, ch, rows[sids].to(out.device), cols[sids].to(out.device))
