"""Projections whose receptive field covers the whole image: one forward per image, shared.

Receptive-field crops (:mod:`deconvviz.engine`) make shallow layers fast, but a deep layer's
receptive field covers the whole image and crops cannot help. Its seeds then share work another
way: each image runs forward **once** (with the rule's ReLUs, stopped at the layer) and every seed
of that image walks back through that one recorded pass (``autograd.grad`` with
``retain_graph``, one backward per "slot": the ``j``-th seed of every image of a chunk together).
A per-seed loop (captum's) runs one forward *and* one backward per seed. The seeds' values come
from the same forward, so no extra pass is needed to find them.

(``torch.autograd.grad(..., is_grads_batched=True)`` gives the same numbers but was slower on
CPU here: some backward ops have no batching rule and vmap falls back to a loop.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

Boxes = list[tuple[int, int, int, int]]


def project_shared(
    dn: Any,
    x: Tensor,
    info: Any,
    layer: str,
    img: Tensor,
    chan: Tensor,
    rows: Tensor | None,
    cols: Tensor | None,
    members: list[int],
    exact: Callable[..., Any],
) -> Iterator[tuple[Tensor, Tensor, Boxes, Tensor, Tensor, Tensor]]:
    """Project seeds ``members`` (of ``img``/``chan``/``rows``/``cols``) on whole images.

    ``rows``/``cols`` ``None``: each seed is its channel's strongest activation in its image
    (first maximum), found in the same forward pass.

    ``dn`` is the :class:`deconvviz.Deconvnet` (its ``_run`` records the pass), ``info`` the
    layer's geometry, ``exact`` the engine's ``exact_cuda`` context (passed in, so that this
    module imports nothing of the engine).

    Yields ``(seed indices, gradients [S, C, H, W], boxes, values, rows, cols)``.
    """

    h, w = int(x.shape[-2]), int(x.shape[-1])
    by_img: dict[int, list[int]] = {}
    for s in members:
        by_img.setdefault(int(img[s]), []).append(s)
    per_image = max(info.bytes_per_sample, 1) * 3  # forward, graph, one slot's gradients
    limit = max(1, int(dn.max_memory // per_image))
    # Every slot's backward runs over the whole chunk, so a chunk holds images with the same
    # number of seeds: no backward is spent on images that have no seed in that slot.
    by_count: dict[int, list[int]] = {}
    for i in sorted(by_img):
        by_count.setdefault(len(by_img[i]), []).append(i)
    parts = [
        group[start : start + limit]
        for _, group in sorted(by_count.items())
        for start in range(0, len(group), limit)
    ]
    for part in parts:
        xin = x[torch.tensor(part, device=x.device)].detach().clone()
        if xin.dim() == 4 and xin.device.type == "cpu":
            # oneDNN's convolutions (and their backward, run once per slot) are faster on
            # channels-last tensors; the values are the same up to float rounding order
            xin = xin.contiguous(memory_format=torch.channels_last)
        xin.requires_grad_(True)
        res = dn._run(xin, layer, grad=True, stop=True)
        out = res.target
        assert out is not None
        slots = max(len(by_img[i]) for i in part)
        spatial = out.dim() == 4
        if spatial and rows is None:
            flat = out.detach().flatten(2)
            best = flat.argmax(dim=2)  # [n, C], first maximum on ties
        for slot in range(slots):
            ns = [n for n, i in enumerate(part) if len(by_img[i]) > slot]
            sids = torch.tensor([by_img[part[n]][slot] for n in ns], dtype=torch.long)
            nt = torch.tensor(ns, device=out.device)
            ch = chan[sids].to(out.device)
            if spatial:
                if rows is None or cols is None:
                    where = best[nt, ch]
                    r, c = where // out.shape[-1], where % out.shape[-1]
                else:
                    r, c = rows[sids].to(out.device), cols[sids].to(out.device)
                index: tuple[Tensor, ...] = (nt, ch, r, c)
            else:
                r = c = torch.zeros(len(ns), dtype=torch.long, device=out.device)
                index = (nt, ch)
            values = out[index].detach()
            seed = torch.zeros_like(out)
            seed[index] = values
            if not out.requires_grad:
                grads = x.new_zeros((len(ns), *x.shape[1:]))
            else:
                with torch.enable_grad(), exact(xin, dn._names):
                    (g,) = torch.autograd.grad(
                        out, xin, seed, retain_graph=slot < slots - 1, allow_unused=True
                    )
                grads = x.new_zeros((len(ns), *x.shape[1:])) if g is None else g.detach()[nt]
            yield sids, grads, [(0, 0, h, w)] * len(ns), values, r.cpu(), c.cpu()
    dn.crop_log.append((layer, (h, w), len(members), "full"))  # one entry per call
