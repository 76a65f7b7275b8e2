"""Occlusion sensitivity (Zeiler & Fergus 2014, Sec. 4.2 and Fig. 7).

A square is slid over each image; at every position the occluded image goes through the model
and we record the probability of the true (or given) class, the most probable class and,
optionally, the total activation of one feature map of a chosen layer (summed both as the layer
outputs it and rectified, ``max(a, 0)``, which is what the paper plots: for a conv layer whose
ReLU is a separate module the raw sum is of pre-ReLU values and can be negative). Occluded
images are built on the fly and evaluated in batches sized to a memory budget, mixing positions of
several images in one batch, so the cost is close to one batched forward over all of them.

Inputs are in the model's own input space: ``fill="grey"`` is the value 0.5, which is grey for
models that take pixels scaled to [0, 1] (the course's LeNet5 and the MNIST RNNs). For a model
that takes normalised inputs, pass the normalised value of the colour you want (``fill=0.0`` is
the dataset mean) or ``fill="mean"`` (each image's own mean colour).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from deconvviz.base._display import occlusion_png
from deconvviz.base._util import items_within, pair
from deconvviz.base._util import memory_budget as memory_budget_for
from deconvviz.base.checks import check_batch, check_layer, check_model, model_device_dtype
from deconvviz.base.errors import InputError, LayerError
from deconvviz.engine.deconvnet import attach, layer_output
from deconvviz.engine.tracer import Tracer, eval_mode

__all__ = ["OcclusionResult", "input_size_within", "occlusion", "occluder_starts"]

Fill = str | float | Sequence[float] | Tensor
# A job whose rows fit the budget at this many activation bytes per input byte runs as one
# batch without measuring (generous for small CNNs; VGG/ResNet at 224 px take ~100-300).
_GUESS_BYTES_PER_INPUT_BYTE = 512


@dataclass(frozen=True)
class OcclusionResult:
    """What :func:`occlusion` measured; every tensor is on the CPU.

    ``Hp x Wp`` is the grid of occluder positions; position ``(i, j)`` covers the input pixels
    ``boxes[i, j]``.

    Attributes:
        prob: ``[N, Hp, Wp]`` probability of ``target`` with the occluder at each position.
        top_class: ``[N, Hp, Wp]`` most probable class with the occluder there.
        top_prob: ``[N, Hp, Wp]`` its probability.
        target: ``[N]`` the class whose probability ``prob`` holds.
        base_prob: ``[N]`` probability of ``target`` on the unoccluded image.
        base_class: ``[N]`` most probable class on the unoccluded image.
        positions: ``[Hp, Wp, 2]`` top-left ``(row, col)`` input pixel of each occluder.
        size: occluder ``(height, width)`` in pixels.
        stride: step between positions ``(rows, cols)``.
        image_size: ``(H, W)`` of the input.
        layer: the layer the feature map belongs to, or None.
        channel: ``[N]`` the feature map (channel) that is strongest on each unoccluded image,
            i.e. that holds the image's largest single activation of ``layer``.
        feature: ``[N, Hp, Wp]`` total activation (sum over the map) of that channel with the
            occluder at each position, as the layer outputs it (for a conv layer followed by a
            separate ReLU: pre-ReLU, can be negative).
        base_feature: ``[N]`` its total activation on the unoccluded image.
        feature_rectified: ``[N, Hp, Wp]`` the same sum of the rectified map,
            ``sum(max(a, 0))``: the activity a following ReLU passes on, what the paper's
            Fig. 7(b) shows (equal to ``feature`` for a layer whose outputs are >= 0).
        base_feature_rectified: ``[N]`` that rectified total on the unoccluded image.
        activation: the channel's activation map on the unoccluded image (``[N, h, w]`` for a
            conv layer, ``[N]`` for a layer with one value per channel).
        projection: ``[N, C, H, W]`` deconvnet projection of the channel's strongest activation
            on the unoccluded image, or None when not asked for.
    """

    prob: Tensor
    top_class: Tensor
    top_prob: Tensor
    target: Tensor
    base_prob: Tensor
    base_class: Tensor
    positions: Tensor
    size: tuple[int, int]
    stride: tuple[int, int]
    image_size: tuple[int, int]
    layer: str | None = None
    channel: Tensor | None = None
    feature: Tensor | None = None
    base_feature: Tensor | None = None
    activation: Tensor | None = None
    projection: Tensor | None = None
    feature_rectified: Tensor | None = None
    base_feature_rectified: Tensor | None = None

    @property
    def grid(self) -> tuple[int, int]:
        """Number of occluder positions ``(Hp, Wp)``."""
        return (int(self.positions.shape[0]), int(self.positions.shape[1]))

    @property
    def boxes(self) -> Tensor:
        """``[Hp, Wp, 4]`` input box ``(y0, x0, y1, x1)`` of each occluder (half-open, clipped)."""
        y0, x0 = self.positions[..., 0], self.positions[..., 1]
        y1 = (y0 + self.size[0]).clamp(max=self.image_size[0])
        x1 = (x0 + self.size[1]).clamp(max=self.image_size[1])
        return torch.stack([y0, x0, y1, x1], dim=-1)

    @property
    def centers(self) -> Tensor:
        """``[Hp, Wp, 2]`` centre ``(row, col)`` of each (clipped) occluder, in pixel units."""
        b = self.boxes.double()
        return torch.stack([(b[..., 0] + b[..., 2] - 1) / 2, (b[..., 1] + b[..., 3] - 1) / 2], -1)

    def _repr_png_(self) -> bytes:
        """The occlusion probability maps, for Jupyter."""
        return occlusion_png(self)


def occluder_starts(length: int, size: int, stride: int) -> Tensor:
    """First pixel of each occluder position along one axis.

    Positions start at 0 and step by ``stride`` until the occluder reaches the far edge; when
    ``stride`` does not divide ``length - size`` the last occluder is cut off by the edge, so
    every pixel is covered (the same positions as captum's ``Occlusion``).

    Example:
        >>> occluder_starts(10, 4, 4).tolist()
        [0, 4, 8]
    """
    if size > length:
        raise InputError(f"occluder size {size} is larger than the image side {length}")
    count = math.ceil((length - size) / stride) + 1
    return torch.arange(count, dtype=torch.long) * stride


def _fill_values(fill: Fill, x: Tensor) -> Tensor:
    """Per-image, per-channel fill value, ``[N, C, 1, 1]`` (or broadcastable)."""
    n, c = x.shape[:2]
    if isinstance(fill, str):
        if fill == "grey" or fill == "gray":
            return torch.full((1, 1, 1, 1), 0.5, dtype=x.dtype, device=x.device)
        if fill == "mean":
            return x.mean(dim=(2, 3), keepdim=True)
        raise InputError(
            f"unknown fill {fill!r}; use 'grey' (0.5), 'mean' (each image's mean colour), "
            "a number or one number per channel"
        )
    if isinstance(fill, bool):
        raise InputError(
            f"fill must be 'grey', 'mean', a number or per-channel numbers, not {fill}"
        )
    if isinstance(fill, int | float):
        return torch.full((1, 1, 1, 1), float(fill), dtype=x.dtype, device=x.device)
    values = torch.as_tensor(fill, dtype=x.dtype).flatten().to(x.device)
    if values.numel() != c:
        raise InputError(
            f"fill has {values.numel()} values but the images have {c} channels; "
            "give one number, or one per channel"
        )
    return values.view(1, c, 1, 1)


def _given_targets(
    target: int | Sequence[int] | Tensor | None, n: int, device: torch.device
) -> Tensor | None:
    """The target class per image ``[n]`` (on ``device``), or None to use the prediction."""
    if target is None:
        return None
    if isinstance(target, bool):
        raise InputError(f"target must be a class index or one per image, got {target!r}")
    t = torch.as_tensor(target)
    if t.is_floating_point() or t.is_complex():
        raise InputError(f"target must hold integer class indices, got {target!r}")
    t = t.to(torch.long).flatten()
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise InputError(f"got {t.numel()} targets for {n} images; give one, or one per image")
    if int(t.min()) < 0:
        raise InputError(f"target classes must be non-negative, got {t.tolist()}")
    return t.to(device)


def _check_logits(out: Any, n: int) -> Tensor:
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != n:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(
            f"occlusion needs a model that maps images to logits [N, classes]; its output is "
            f"{got}; wrap the model so that it returns the logits tensor"
        )
    return out


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        return out[0]
    raise InputError(f"layer output is a {type(out).__name__}, not a tensor")


def _channel_totals(out: Tensor, channels: Tensor, rectified: bool = False) -> Tensor:
    """Sum over everything but batch of ``out[b, channels[b]]`` (of ``max(out, 0)`` when
    ``rectified``)."""
    rows = torch.arange(out.shape[0], device=out.device)
    picked = out[rows, channels.to(out.device)]
    if rectified:
        picked = picked.clamp(min=0)
    return picked.reshape(out.shape[0], -1).sum(dim=1) if picked.dim() > 1 else picked


def _activation_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes of every module output (the model's own included) of one forward pass on ``x``."""
    total = 0
    tracer = Tracer(model, include_root=True)

    @tracer.on_return
    def add(name: str, call: int, module: nn.Module, args: Any, out: Any) -> None:
        nonlocal total
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, Tensor):
                total += t.numel() * t.element_size()

    with tracer:
        tracer.run(x, exact=False)
    return total


def input_size_within(
    model: nn.Module,
    size: tuple[int, int],
    channels: int,
    memory_budget: int | None = None,
    probe: int = 64,
) -> tuple[int, int]:
    """The largest ``(H, W)`` of ``size``'s aspect ratio, at most ``size``, whose forward pass
    fits the memory budget (the engine's: :func:`deconvviz.base._util.memory_budget`), for a model
    that takes any input size. The activation bytes per input pixel are measured on one
    ``probe x probe`` image; an image bigger than the budget allows is to be resized to this
    before it meets the model (occlusion then batches its rows within the same budget).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        >>> input_size_within(net, (6000, 4000), 3, memory_budget=2**20)
        (157, 105)
    """
    device, dtype = model_device_dtype(model)
    budget = memory_budget_for(device, memory_budget)
    h, w = size
    x = torch.zeros(1, channels, probe, probe, device=device, dtype=dtype)
    with torch.no_grad():
        per_pixel = (_activation_bytes(model, x) + 3 * x.numel() * x.element_size()) / probe**2
    pixels = budget / max(per_pixel, 1e-9)
    if h * w <= pixels:
        return h, w
    scale = math.sqrt(pixels / (h * w))
    return max(probe // 4, int(h * scale)), max(probe // 4, int(w * scale))


def _auto_batch_size(model: nn.Module, x: Tensor, rows: int, memory_budget: int | None) -> int:
    """Rows per forward pass that fit the memory budget.

    A job that fits even with a generous guess of the activation size runs as one batch;
    otherwise one image goes through the model to measure its activation bytes.
    """
    budget = memory_budget_for(x.device, memory_budget)
    image_bytes = x[0].numel() * x.element_size()
    if rows * _GUESS_BYTES_PER_INPUT_BYTE * image_bytes <= budget:
        return rows
    per_row = max(_activation_bytes(model, x[:1]), 4 * image_bytes) + 2 * image_bytes
    return items_within(budget, per_row)


@dataclass
class _Grid:
    """Every image, unoccluded and under every occluder position: ``total`` rows, image-major,
    ``per_image`` rows per image of which the first is the clean image."""

    x: Tensor
    fillv: Tensor
    ys: Tensor
    xs: Tensor
    size: tuple[int, int]

    @classmethod
    def over(
        cls, x: Tensor, fillv: Tensor, size: tuple[int, int], stride: tuple[int, int]
    ) -> _Grid:
        """The occluders of side ``size`` every ``stride`` pixels over images ``x``."""
        h, w = x.shape[-2:]
        ys, xs = occluder_starts(h, size[0], stride[0]), occluder_starts(w, size[1], stride[1])
        return cls(x, fillv, ys, xs, size)

    def __post_init__(self) -> None:
        device = self.x.device
        self.ys, self.xs = self.ys.to(device), self.xs.to(device)
        self.per_image = len(self.ys) * len(self.xs) + 1
        self.total = int(self.x.shape[0]) * self.per_image
        h, w = self.x.shape[-2:]
        self.rows, self.cols = torch.arange(h, device=device), torch.arange(w, device=device)

    def batch(self, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor]:
        """Rows ``[start, stop)``: ``(images, image index of each row, whether it is clean)``."""
        x, fillv, wp = self.x, self.fillv, len(self.xs)
        idx = torch.arange(start, stop, device=x.device)
        img, pos = idx // self.per_image, idx % self.per_image
        occ = (pos - 1).clamp(min=0)
        clean = pos == 0
        y0 = torch.where(clean, x.shape[-2], self.ys[occ // wp]).unsqueeze(1)  # clean: off image
        x0 = self.xs[occ % wp].unsqueeze(1)
        in_rows = (self.rows >= y0) & (self.rows < y0 + self.size[0])
        in_cols = (self.cols >= x0) & (self.cols < x0 + self.size[1])
        mask = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)
        first, last = start // self.per_image, (stop - 1) // self.per_image
        if first == last:  # one image: broadcast it instead of copying it B times
            fv = fillv if fillv.shape[0] == 1 else fillv[first : first + 1]
            return torch.where(mask, fv, x[first : first + 1]), img, clean
        fv = fillv if fillv.shape[0] == 1 else fillv.index_select(0, img)
        return torch.where(mask, fv, x.index_select(0, img)), img, clean


def _feature_tracer(
    model: nn.Module, module: nn.Module | None, layer: str | None
) -> tuple[Tracer, dict[str, Any]]:
    """A tracer on ``module`` (none without a layer) that reduces each output to the chosen
    channel's totals, raw and rectified (appended to ``current["totals"]``, ``[2, B]`` each);
    set ``current["channels"]`` (``[B]``) and an empty ``current["totals"]`` before a pass."""
    tracer = Tracer(model, {module: layer or ""} if module is not None else {})
    current: dict[str, Any] = {"totals": []}

    @tracer.on_return
    def reduce(name: str, call: int, m: nn.Module, args: Any, o: Any) -> None:
        # Reduce right away: a later in-place op (ReLU(inplace=True)) may change `o`.
        t, c = _first_tensor(o), current["channels"]
        current["totals"].append(
            torch.stack([_channel_totals(t, c), _channel_totals(t, c, rectified=True)])
        )

    return tracer, current


def _scan(
    model: nn.Module,
    grid: _Grid,
    target: Tensor | None,
    module: nn.Module | None,
    layer: str | None,
    channel: Tensor | None,
    batch_size: int,
    progress: bool,
) -> dict[str, Any]:
    """Evaluate every row of ``grid`` in batches of ``batch_size`` rows.

    Row 0 of each image is the clean image, so the predicted class (the default target) is
    known before that image's occluded rows are read.
    """
    x, total, device = grid.x, grid.total, grid.x.device
    tgt = target if target is not None else torch.full((x.shape[0],), -1, device=device)
    prob = top_prob = None
    top_class = torch.empty(total, dtype=torch.long, device=device)
    feature = torch.empty((2, total), dtype=x.dtype, device=device) if module is not None else None
    tracer, current = _feature_tracer(model, module, layer)
    with tracer, tqdm(total=total, desc="occlusion", unit="img", disable=not progress) as bar:
        for start in range(0, total, batch_size):
            sl = slice(start, min(start + batch_size, total))
            batch, img, clean = grid.batch(sl.start, sl.stop)
            if channel is not None:
                current["channels"] = channel.index_select(0, img)
                current["totals"] = []
            logits = _check_logits(tracer.run(batch, exact=False), len(img))
            if prob is None:
                _check_target(tgt, logits.shape[1])
                prob = torch.empty(total, dtype=logits.dtype, device=device)
                top_prob = torch.empty(total, dtype=logits.dtype, device=device)
            probs = torch.softmax(logits, dim=1)
            tp, tc = probs.max(dim=1)
            if target is None and bool(clean.any()):
                tgt[img[clean]] = logits[clean].argmax(dim=1)
            prob[sl] = probs.gather(1, tgt.index_select(0, img).unsqueeze(1))[:, 0]
            top_prob[sl] = tp  # type: ignore[index]
            top_class[sl] = tc
            if feature is not None:
                feature[:, sl] = _ran_once(current, layer)
            bar.update(len(img))
    assert prob is not None and top_prob is not None
    return _split_clean(grid, tgt, prob, top_prob, top_class, feature)


def _check_target(tgt: Tensor, k: int) -> None:
    if int(tgt.max()) >= k:
        raise InputError(
            f"target class {int(tgt.max())} is out of range: the model has {k} "
            f"classes; give one of 0..{k - 1} (--target)"
        )


def _ran_once(current: dict[str, Any], layer: str | None) -> Tensor:
    totals = current["totals"]
    if len(totals) != 1:
        raise LayerError(
            f"layer {layer!r} ran {len(totals)} times in one forward pass; occlusion needs a "
            "layer that runs once"
        )
    return totals[0]


def _split_clean(
    grid: _Grid,
    tgt: Tensor,
    prob: Tensor,
    top_prob: Tensor,
    top_class: Tensor,
    feature: Tensor | None,
) -> dict[str, Any]:
    """The scanned rows split into the clean images' values and the occluded ones (on the CPU)."""
    is_clean = torch.zeros(grid.total, dtype=torch.bool, device=prob.device)
    is_clean[:: grid.per_image] = True
    return {
        "target": tgt.cpu(),
        "base_prob": prob[is_clean].cpu(),
        "base_class": top_class[is_clean].cpu(),
        "prob": prob[~is_clean].cpu(),
        "top_prob": top_prob[~is_clean].cpu(),
        "top_class": top_class[~is_clean].cpu(),
        "feature": feature[0, ~is_clean].cpu() if feature is not None else None,
        "feature_rectified": feature[1, ~is_clean].cpu() if feature is not None else None,
    }


def occlusion(
    model: nn.Module,
    x: Tensor,
    target: int | Sequence[int] | Tensor | None = None,
    size: int | Sequence[int] = 8,
    stride: int | Sequence[int] = 2,
    fill: Fill = "grey",
    layer: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    *,
    project: bool = True,
    memory_budget: int | None = None,
) -> OcclusionResult:
    """Slide an occluder over each image and record how the model's output changes.

    Works with any model that maps images ``[N, C, H, W]`` to logits ``[N, classes]`` (CNNs,
    the MNIST ``RNNClassifier``, ...). The model is run in eval mode and put back as it was.

    Args:
        model: the classifier.
        x: images ``[N, C, H, W]`` in the model's input space.
        target: class whose probability is mapped: one index for all images, one per image, or
            None for the class the model predicts on the unoccluded image.
        size: occluder side in pixels (or ``(height, width)``).
        stride: step between occluder positions (or ``(rows, cols)``).
        fill: ``"grey"`` (0.5), ``"mean"`` (each image's mean per channel), a number, or one
            number per channel, all in the model's input space.
        layer: optional layer name (``named_modules()`` spelling); adds the total activation of
            the image's strongest feature map of that layer (raw and rectified), and its
            deconvnet projection.
        batch_size: occluded images per forward pass; None picks it from ``memory_budget``.
        progress: show a progress bar.
        project: with ``layer``, also compute the deconvnet projection (needs a layer the
            engine can project).
        memory_budget: bytes of activations a batch may use when ``batch_size`` is None
            (default: a quarter of free GPU memory, or 512 MiB on the CPU).

    Returns:
        An :class:`OcclusionResult`.

    Example:
        >>> from deconvviz.sources.models import LeNet5
        >>> res = occlusion(LeNet5(), torch.rand(2, 1, 28, 28), size=8, stride=2, progress=False)
        >>> tuple(res.prob.shape)  # [N, Hp, Wp] with Hp = ceil((28 - 8) / 2) + 1
        (2, 11, 11)
    """
    size, stride, module = _check_args(model, x, size, stride, batch_size, layer)
    x = x.detach().to(*model_device_dtype(model, like=x))
    grid = _Grid.over(x, _fill_values(fill, x), size, stride)
    tgt = _given_targets(target, x.shape[0], x.device)
    with eval_mode(model), torch.no_grad():
        base = _strongest_maps(model, x, layer) if layer is not None else _no_maps()
        rows = batch_size or _auto_batch_size(model, x, grid.total, memory_budget)
        chan = base["channel"].to(x.device) if base["channel"] is not None else None
        res = _scan(model, grid, tgt, module, layer, chan, rows, progress)
    if layer is not None and project:
        assert base["channel"] is not None
        base["projection"] = _project(model, x, layer, base["channel"].cpu())
    return _result(grid, res, base, stride, layer)


def _result(
    grid: _Grid,
    res: dict[str, Any],
    base: dict[str, Any],
    stride: tuple[int, int],
    layer: str | None,
) -> OcclusionResult:
    """The scanned rows as ``[N, Hp, Wp]`` maps, with the layer's values ``base``."""
    shape = (int(grid.x.shape[0]), len(grid.ys), len(grid.xs))
    for key in ("prob", "top_class", "top_prob", "feature", "feature_rectified"):
        res[key] = res[key].view(shape) if res[key] is not None else None
    return OcclusionResult(
        **res,
        **base,
        positions=torch.stack(torch.meshgrid(grid.ys.cpu(), grid.xs.cpu(), indexing="ij"), -1),
        size=grid.size,
        stride=stride,
        image_size=(int(grid.x.shape[-2]), int(grid.x.shape[-1])),
        layer=layer,
    )


def _check_args(
    model: nn.Module,
    x: Any,
    size: int | Sequence[int],
    stride: int | Sequence[int],
    batch_size: int | None,
    layer: str | None,
) -> tuple[tuple[int, int], tuple[int, int], nn.Module | None]:
    """:func:`occlusion`'s arguments, checked: ``(size, stride, the layer's module or None)``."""
    check_model(model)
    check_batch(x, "images")
    sh, sw = pair(size, "size")
    th, tw = pair(stride, "stride")
    h, w = x.shape[-2:]
    if sh > h or sw > w:
        raise InputError(
            f"occluder {sh}x{sw} is larger than the images ({h}x{w}); pick a smaller size"
        )
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise InputError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if layer is None:
        return (sh, sw), (th, tw), None
    return (sh, sw), (th, tw), check_layer(model, layer)


def _no_maps() -> dict[str, Any]:
    """:func:`_strongest_maps`'s keys, without a layer."""
    return dict.fromkeys(("channel", "activation", "base_feature", "base_feature_rectified"))


def _strongest_maps(model: nn.Module, x: Tensor, layer: str) -> dict[str, Any]:
    """Each unoccluded image's strongest channel of ``layer`` (the one holding its largest
    activation), that channel's map and its totals, raw and rectified (on the CPU)."""
    n = x.shape[0]
    acts = _first_tensor(layer_output(model, x, layer)).detach()
    if acts.dim() < 2 or acts.shape[0] != n:
        raise LayerError(
            f"layer {layer!r} outputs shape {tuple(acts.shape)}, not one map per image "
            "and channel; pick a conv or linear layer"
        )
    channel = acts.reshape(n, acts.shape[1], -1).amax(dim=2).argmax(dim=1)
    return {
        "channel": channel.cpu(),
        "activation": acts[torch.arange(n, device=acts.device), channel].cpu(),
        "base_feature": _channel_totals(acts, channel).cpu(),
        "base_feature_rectified": _channel_totals(acts, channel, rectified=True).cpu(),
    }


def _project(model: nn.Module, x: Tensor, layer: str, channel: Tensor) -> Tensor:
    """Deconvnet projection of each image's chosen channel (its strongest activation)."""
    out: Tensor | None = None
    # Full-image passes (crop=False): one projection per image costs little next to the scan,
    # and they work for every model, including ones that refuse inputs of another size.
    with attach(model, rule="deconvnet", crop=False) as dn:
        for c in torch.unique(channel).tolist():
            idx = (channel == c).nonzero().flatten()
            rec = dn.project(x[idx.to(x.device)], layer=layer, channel=int(c)).detach().cpu()
            if out is None:
                out = torch.zeros((x.shape[0], *rec.shape[1:]), dtype=rec.dtype)
            out[idx] = rec
    assert out is not None
    return out
