"""The projection scheduler: which seeds run on receptive-field crops and which on whole images,
in chunks that fit the memory budget; the fallback to whole images when crops disagree; the
batch-statistics path; and the reverse pass itself (the convolution shortcut included).

Why crops: a projection's seed is one activation (its own value), so its reverse path is nonzero
only in that activation's receptive field. When the receptive field can be followed (see
:mod:`deconvviz.engine.receptive`), each seed runs on a crop of the input that holds its
receptive field, aligned to the layer's stride (:mod:`deconvviz.engine.crops`); this gives
exactly the same result as the full image (tested) and is what makes projecting every channel
of a layer fast. Downstream of any op whose effect depends on the absolute position the
receptive field is not followed and full images are used; every crop is also checked: the
seed's value computed on the crop must equal the full image's, or the engine warns and uses
full images for that layer.

Every :class:`~deconvviz.engine.seeds.Seeds` handed in here was checked at the door
(:mod:`deconvviz.engine.seeds`); nothing is checked again.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from deconvviz.base._util import items_within
from deconvviz.base.checks import split_call
from deconvviz.base.errors import LayerError
from deconvviz.engine.crops import (
    Box,
    gather_windows,
    place_filters,
    plain_conv,
    project_shared,
    same_values,
)
from deconvviz.engine.probe import DeconvvizWarning, Passes, _LayerInfo, normal
from deconvviz.engine.seeds import Seeds
from deconvviz.engine.tracer import exact_cuda

#: ``(seed indices, gradients, boxes)``: the gradient of seed ``s`` is nonzero only inside its
#: box ``(y0, x0, y1, x1)`` of its image, and is given for that box.
Windows = tuple[Tensor, Tensor, list[Box]]


@dataclass
class Scheduler:
    """Runs checked seeds of one layer through :class:`~deconvviz.engine.probe.Passes`."""

    passes: Passes
    modules: dict[str, nn.Module]
    #: ``boxes(info, rows, cols, size)``: per seed, the aligned input crop that holds its
    #: receptive field (the handle's crop policy)
    boxes: Callable[[_LayerInfo, Tensor, Tensor, tuple[int, int]], list[Box]]
    max_memory: int = 0
    #: one entry per batch of seeds projected: ``(layer, (crop height, crop width), seeds,
    #: how)`` with how ``"crop"`` (verified against the full image's values), ``"full"``
    #: (full-image pass) or ``"fallback"`` (a crop disagreed or failed; redone on full
    #: images). For tests and debugging; the last 10 000 batches are kept.
    crop_log: deque[tuple[str, tuple[int, int], int, str]] = field(
        default_factory=lambda: deque(maxlen=10_000)
    )

    @property
    def precision(self) -> str:
        return self.passes.precision

    def values(self, x: Tensor, layer: str) -> Tensor:
        """The layer's output on ``x`` (values only, no graph)."""
        return self.passes.forward_to(x.detach(), layer, grad=False)

    def located(self, x: Tensor, layer: str, seeds: Seeds) -> Seeds:
        """``seeds`` with positions and values: each seed's strongest activation where no
        position was given, the full images' values where none were (one forward pass of the
        batch; none where both are known). Vector layers get zero positions."""
        if seeds.rows is not None and seeds.cols is not None and seeds.values is not None:
            return seeds
        acts = self.values(x, layer)
        dev = acts.device
        img, chan = seeds.images.to(dev), seeds.channels.to(dev)
        if acts.dim() != 4:
            zeros = torch.zeros(len(seeds), dtype=torch.long)
            return replace(seeds, rows=zeros, cols=zeros, values=acts[img, chan])
        if seeds.rows is not None and seeds.cols is not None:
            at = (img, chan, seeds.rows.to(dev), seeds.cols.to(dev))
            return replace(seeds, values=acts[at])
        maps = acts[img, chan].flatten(1)  # [S, h * w]
        best = maps.argmax(dim=1)  # first maximum on ties
        w = acts.shape[-1]
        rows, cols = (best // w).cpu(), (best % w).cpu()
        return replace(seeds, rows=rows, cols=cols, values=maps.gather(1, best[:, None]).flatten())

    def windows(self, x: Tensor, info: _LayerInfo, layer: str, seeds: Seeds) -> Iterator[Windows]:
        """Seeds on whole images (one shared forward per image), or on crops."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if info.batch_stats:
            yield from self.project_batch(x, info, layer, seeds)
            return
        if self.whole_image(info, (h, w)):
            yield from self.project_full(x, info, layer, seeds, range(len(seeds)))
            return
        # crops are checked against the full images' values, as project() checks them
        yield from self.project_seeds(x, info, layer, self.located(x, layer, seeds))

    def project_seeds(
        self, x: Tensor, info: _LayerInfo, layer: str, seeds: Seeds
    ) -> Iterator[Windows]:
        """Project located seeds of ``layer`` (:meth:`located`), in chunks.

        Seeds whose crop is the whole image share each image's forward pass; the others run on
        crops of equal size together, as many as the memory budget allows, each crop's values
        checked against the seeds' values on the full images.
        """
        assert seeds.rows is not None and seeds.cols is not None
        h, w = int(x.shape[-2]), int(x.shape[-1])
        boxes = self.boxes(info, seeds.rows, seeds.cols, (h, w))
        groups: dict[tuple[int, int], list[int]] = {}
        for s, (y0, x0, y1, x1) in enumerate(boxes):
            groups.setdefault((y1 - y0, x1 - x0), []).append(s)
        per_sample = max(info.bytes_per_sample, 1) * 4  # forward, graph, gradients
        for (bh, bw), members in groups.items():
            if (bh, bw) == (h, w):  # crops cannot help: share each image's forward
                yield from self.project_full(x, info, layer, seeds, members)
                continue
            cost = per_sample * bh * bw / (h * w)
            chunk = items_within(self.max_memory, cost, cap=len(members))
            for start in range(0, len(members), chunk):
                idx = torch.tensor(members[start : start + chunk])
                sub = [boxes[i] for i in idx.tolist()]
                yield self.project_crops(x, info, layer, idx, seeds.take(idx), sub)

    def project_crops(
        self, x: Tensor, info: _LayerInfo, layer: str, idx: Tensor, seeds: Seeds, boxes: list[Box]
    ) -> Windows:
        """One chunk of seeds (``idx`` in the call's list) on equally sized crops, each checked
        against the seeds' values; redone on full images when the model refuses the crops or
        they disagree."""
        assert seeds.rows is not None and seeds.cols is not None
        crops = gather_windows(x, seeds.images, boxes)
        jr, jc = info.rf.jump if info.rf is not None else (1, 1)
        prow = seeds.rows - torch.tensor([b[0] for b in boxes]) // jr
        pcol = seeds.cols - torch.tensor([b[1] for b in boxes]) // jc
        given = seeds.values
        try:
            grads, values = self.backward(crops, layer, seeds.channels, prow, pcol, given)
        except (KeyboardInterrupt, LayerError):
            raise
        except Exception:
            # The model refuses inputs of another size (a shape check in its forward, say)
            return self.project_fallback(x, info, layer, idx, seeds)
        rounding = torch.bfloat16 if self.precision == "bf16" else None
        if given is not None and not same_values(
            values, given.to(values.device, values.dtype), rounding
        ):
            warnings.warn(
                f"receptive-field crops of {layer!r} disagreed with the full image; "
                "falling back to full-image projections (please report this model)",
                DeconvvizWarning,
                stacklevel=4,
            )
            return self.project_fallback(x, info, layer, idx, seeds)
        bh, bw = boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1]
        self.crop_log.append((layer, (bh, bw), len(idx), "crop"))
        return idx, grads, boxes

    def project_fallback(
        self, x: Tensor, info: _LayerInfo, layer: str, idx: Tensor, seeds: Seeds
    ) -> Windows:
        """Seeds whose crops failed, on full images; this layer uses full images from now on.

        The whole batch ``x`` runs forward, as the caller gave it (a model that disagrees on
        crops may also read across the batch, ``h * h.mean().item()`` say), and each seed walks
        back on its own."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        info.crop_ok = False
        parts = list(self.project_batch(x, info, layer, seeds))
        self.crop_log.pop()  # _project_batch's entry: this is a fallback
        self.crop_log.append((layer, (h, w), len(idx), "fallback"))
        idx = idx[torch.cat([p[0] for p in parts])]
        return idx, torch.cat([p[1] for p in parts]), [(0, 0, h, w)] * len(idx)

    def project_full(
        self, x: Tensor, info: _LayerInfo, layer: str, seeds: Seeds, members: Sequence[int]
    ) -> Iterator[Windows]:
        """The one whole-image path: each image forward once, its seeds share that pass."""
        yield from project_shared(
            lambda xin: self.passes.forward_to(xin, layer, grad=True),
            x,
            seeds.images,
            seeds.channels,
            seeds.rows,
            seeds.cols,
            list(members),
            bytes_per_sample=info.bytes_per_sample,
            max_memory=self.max_memory,
            modules=self.passes.names,
        )
        self.crop_log.append((layer, (int(x.shape[-2]), int(x.shape[-1])), len(members), "full"))

    def project_batch(
        self, x: Tensor, info: _LayerInfo, layer: str, seeds: Seeds
    ) -> Iterator[Windows]:
        """Seeds of a layer whose activations depend on the whole batch (batch statistics):
        the whole of ``x`` forward once, each seed walked back on its own (seeds of different
        images cannot share a backward: the batch statistics couple the images)."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        img, chan, rows, cols = seeds.images, seeds.channels, seeds.rows, seeds.cols
        with torch.inference_mode(False):
            xin = normal(x).detach().clone().requires_grad_(True)
            out = self.passes.forward_to(xin, layer, grad=True)
            dev = out.device
            if out.dim() == 4 and (rows is None or cols is None):
                best = out.detach()[img.to(dev), chan.to(dev)].flatten(1).argmax(dim=1)
                rows, cols = (best // out.shape[-1]).cpu(), (best % out.shape[-1]).cpu()
            total = len(img)
            for s in range(total):
                n, c = int(img[s]), int(chan[s])
                index: tuple[Any, ...] = (n, c)
                if out.dim() == 4:
                    assert rows is not None and cols is not None
                    index = (n, c, int(rows[s]), int(cols[s]))
                seed = torch.zeros_like(out)
                seed[index] = out[index].detach()
                if not out.requires_grad:
                    g = torch.zeros_like(xin[n])
                else:
                    with torch.enable_grad(), exact_cuda(xin, self.passes.names):
                        (gr,) = torch.autograd.grad(
                            out, xin, seed, retain_graph=s < total - 1, allow_unused=True
                        )
                    g = torch.zeros_like(xin[n]) if gr is None else gr[n].detach()
                yield torch.tensor([s]), g.unsqueeze(0), [(0, 0, h, w)]
        self.crop_log.append((layer, (h, w), len(img), "batch"))

    def whole_image(self, info: _LayerInfo, size: tuple[int, int]) -> bool:
        """Whether every seed of the layer runs on the whole image (no crop can help)."""
        assert info.out_shape is not None
        zero = torch.zeros(1, dtype=torch.long)
        whole = (0, 0, *size)
        return len(info.out_shape) != 3 or self.boxes(info, zero, zero, size)[0] == whole

    def backward(
        self,
        inp: Tensor,
        layer: str,
        chan: Tensor,
        prow: Tensor,
        pcol: Tensor,
        values: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Forward ``inp`` to ``layer``, seed one activation per item with its value, walk back.

        Returns the gradients and the seeded activations' values *as computed on* ``inp`` (which
        the caller compares with the full image's to catch a wrong crop).

        When ``layer`` is a plain convolution (no hooks) and the seeds' values are known, the
        forward pass stops at the convolution's *input*: the reverse step of a one-activation
        seed through a convolution is just that filter, scaled by the value, placed at the
        activation's position (the transposed filters applied to a one-hot), so the convolution
        itself need not run; its value at the seed is one dot product of that filter with the
        input window.
        """
        with torch.inference_mode(False):
            # tensors made inside torch.inference_mode cannot take part in autograd: copy them
            chan, prow, pcol = (normal(t) for t in (chan, prow, pcol))
            values = None if values is None else normal(values)
            xin = inp.detach().clone().requires_grad_(True)
            module = self.modules[split_call(layer)[0]]
            if values is not None and plain_conv(module):
                return self.backward_conv(xin, module, layer, chan, prow, pcol, values)  # type: ignore[arg-type]
            out = self.passes.forward_to(xin, layer, grad=True)
            b = torch.arange(out.shape[0], device=out.device)
            chan = chan.to(out.device)
            if out.dim() == 4:
                index: tuple[Tensor, ...] = (b, chan, prow.to(out.device), pcol.to(out.device))
            else:
                index = (b, chan)
            own = out[index].detach()
            seed = torch.zeros_like(out)
            seed[index] = own
            return self.grad(out, xin, seed), own

    def grad(self, out: Tensor, xin: Tensor, seed: Tensor) -> Tensor:
        """The reverse path of ``seed`` from ``out`` back to ``xin`` (zeros where none leads)."""
        if out is xin:
            return seed.detach()
        if not out.requires_grad:
            return torch.zeros_like(xin).detach()
        with torch.enable_grad(), exact_cuda(xin, self.passes.names):
            (g,) = torch.autograd.grad(out, xin, seed, allow_unused=True)
        return torch.zeros_like(xin).detach() if g is None else g.detach()

    def backward_conv(
        self,
        xin: Tensor,
        module: nn.Conv2d,
        layer: str,
        chan: Tensor,
        prow: Tensor,
        pcol: Tensor,
        values: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """``_backward`` for a plain convolution: its filters placed at the seeds, no conv run."""
        tin = self.passes.input_of(xin, layer)
        unit = place_filters(module, tin.shape, chan, prow, pcol, torch.ones_like(values))
        own = (unit * tin.detach()).sum(dim=(1, 2, 3))
        if module.bias is not None:
            own = own + module.bias.detach()[chan.to(own.device)]
        seed_in = unit * values.to(unit.device, unit.dtype).view(-1, 1, 1, 1)
        return self.grad(tin, xin, seed_in.to(tin.dtype)), own
