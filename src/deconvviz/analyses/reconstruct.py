"""Per-layer reconstructions: the paper's Fig. 2 over a dataset, and projections of given images.

Two computations, each returning tensors (no files written):

* :func:`reconstruct_dataset` -- for every chosen layer, the top-``k`` activations of each
  feature map over a dataset, projected to pixel space beside the image patches (receptive
  fields) that caused them (:class:`LayerReconstructions` per layer);
* :func:`reconstruct_images` -- for given images, the strongest activation of each feature map
  (or of chosen channels), projected (:class:`ImageProjections` per layer).

:func:`load_images` (from :mod:`deconvviz.base.images`) reads PNG/JPEG files into a batch the model
can take. Drawing is :mod:`deconvviz.render.reconstruct`'s; writing the figures and JSON is
:mod:`deconvviz.export.reconstructions`'s; the dataset that goes with a model is
:func:`deconvviz.sources.datasets.dataset_for_model`.

Example::

    from deconvviz.export.reconstructions import write_dataset_reconstructions
    from deconvviz.analyses.reconstruct import reconstruct_dataset

    results = reconstruct_dataset(model, test_set, layers=["conv1", "conv2"], k=9)
    results["conv2"].reconstructions.shape          # [64, 9, 3, 14, 14]
    write_dataset_reconstructions(results, "out/reconstruct")
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from deconvviz.analyses.scan import scan_resolved
from deconvviz.analyses.topk import (
    FewImagesWarning,
    TopProjections,
    few_images_message,
    project_top_with,
)
from deconvviz.base._display import render_png
from deconvviz.base._util import dead_units, items_within
from deconvviz.base.checks import (
    Resolved,
    check_layer_calls,
    check_positive_int,
    default_layers,
    model_device_dtype,
    resolve_model,
)
from deconvviz.base.errors import DataError, InputError, LayerError
from deconvviz.engine.deconvnet import Deconvnet, attach
from deconvviz.engine.receptive import ReceptiveField
from deconvviz.engine.rules import Rule, get_rule

__all__ = [
    "ImageProjections",
    "LayerReconstructions",
    "expected_input",
    "reconstruct_dataset",
    "reconstruct_images",
]

#: names this module used to pass through from their own modules: old imports still work, warned
_PASSED_THROUGH = {
    "conv_layer_names": "deconvviz.base.checks",
    "load_images": "deconvviz.base.images",
    "safe_name": "deconvviz.base._util",
}


def __getattr__(name: str) -> Any:
    home = _PASSED_THROUGH.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"{__name__}.{name} is {home}.{name}; import it from there (this alias goes in 0.3)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(home), name)


_CHANNEL_BUDGET = 256 * 2**20  # bytes of reconstructions held per projection call


@dataclass(frozen=True)
class ImageProjections:
    """Projections of the strongest activation of chosen feature maps of one layer, per image.

    Attributes:
        layer: the layer's name.
        rule: the ReLU rule used (``"deconvnet"``, ``"gradient"`` or ``"guided"``).
        images: ``[N, C, H, W]`` the input images.
        channels: ``[K]`` the feature maps (channels) projected.
        values: ``[N, K]`` each channel's strongest activation in each image.
        positions: ``[N, K, 2]`` its ``(row, col)`` in the feature map (``0, 0`` for ``[N, C]``
            layer outputs).
        reconstructions: ``[N, K, C, H, W]`` the projections.
    """

    layer: str
    rule: str
    images: Tensor
    channels: Tensor
    values: Tensor
    positions: Tensor
    reconstructions: Tensor

    def _repr_png_(self) -> bytes:
        """The first image's projections, for Jupyter."""
        return render_png(self, 0, max_channels=16)


@dataclass(frozen=True)
class LayerReconstructions:
    """The paper's Fig. 2 for one layer: top activations of feature maps over a dataset, projected.

    Row ``i`` of every tensor belongs to feature map ``channels[i]``.

    Attributes:
        layer: the layer's name.
        rule: the ReLU rule used.
        channels: ``[C']`` the feature maps (channel indices of the layer).
        values: ``[C', k]`` activation values, strongest first (``-inf`` where the dataset had
            fewer than ``k`` images).
        indices: ``[C', k]`` dataset indices of the images (``-1`` where missing: padding, see
            :attr:`valid`; figures and JSON leave it out).
        positions: ``[C', k, 2]`` ``(row, col)`` of each activation in the feature map.
        boxes: ``[C', k, 4]`` its receptive field ``(y0, x0, y1, x1)`` in input pixels
            (half-open, clipped to the image).
        reconstructions: ``[C', k, Cin, h, w]`` projections cut to the receptive field
            (``h, w``: its size, at most the image's; zero where it runs off the image).
        patches: ``[C', k, Cin, h, w]`` the input pixels of the same boxes.
        input_size: ``(H, W)`` of the images.
        receptive_field: the layer's :class:`deconvviz.ReceptiveField`, or ``None``.
        images: how many images were scanned for the top activations (``None``: not known).

    A feature map is *dead* when its strongest activation over the scanned images is not above
    0 (a ReLU after it never lets anything through): :attr:`dead` lists them, and the figures
    draw them as dead instead of projecting their zeros. Entries of a live map that are not
    above 0 (it fired on fewer than ``k`` images) are not real top activations either:
    :attr:`fired` is False there.
    """

    layer: str
    rule: str
    channels: Tensor
    values: Tensor
    indices: Tensor
    positions: Tensor
    boxes: Tensor
    reconstructions: Tensor
    patches: Tensor
    input_size: tuple[int, int]
    receptive_field: ReceptiveField | None
    images: int | None = None

    @property
    def k(self) -> int:
        """Activations per feature map (padding included; see :attr:`found`)."""
        return int(self.values.shape[1])

    @property
    def fired(self) -> Tensor:
        """``[C', k]`` True where the entry is a real activation: an image was there and the
        value is above 0 (finite)."""
        v = self.values
        return (self.indices >= 0) & torch.isfinite(v) & (v > 0)

    @property
    def dead(self) -> list[int]:
        """Channels (of the layer, as in :attr:`channels`) whose activation never rose above 0
        on the scanned images.

        Example::

            rec = reconstruct_dataset(net, test_set, ["conv2"], progress=False)["conv2"]
            rec.dead                       # e.g. [3, 17]: never > 0 on rec.images images
        """
        # the strongest real activation of each map (-inf where there was none), through the
        # one definition of a dead unit
        best = torch.where(self.fired, self.values.double(), float("-inf")).amax(dim=1)
        return [int(self.channels[r]) for r in dead_units(best)]

    @property
    def valid(self) -> Tensor:
        """``[C', k]`` True for real entries, False for padding (fewer images than ``k``)."""
        return self.indices >= 0

    @property
    def found(self) -> int:
        """Real (not padding) activations of the fullest feature map: ``k``, or the number of
        images when the dataset had fewer than ``k``."""
        return int(self.valid.sum(dim=1).max()) if self.indices.numel() else 0

    @classmethod
    def from_projections(
        cls,
        proj: TopProjections,
        channels: Sequence[int] | None = None,
        images: int | None = None,
    ) -> LayerReconstructions:
        """From :func:`deconvviz.project_top`'s result (``channels``: those it projected;
        ``images``: how many images were scanned)."""
        top = proj.top
        chans = list(range(top.channels)) if channels is None else [int(c) for c in channels]
        idx = torch.tensor(chans, dtype=torch.long)
        if proj.reconstructions.shape[0] != len(chans):
            raise InputError(
                f"{proj.reconstructions.shape[0]} projected feature maps but {len(chans)} channels "
                "given; pass the channels project_top projected"
            )
        return cls(
            layer=top.layer,
            rule=proj.rule,
            channels=idx,
            values=top.values[idx],
            indices=top.indices[idx],
            positions=top.positions[idx],
            boxes=top.boxes[idx],
            reconstructions=proj.reconstructions,
            patches=proj.patches,
            input_size=top.input_size,
            receptive_field=top.receptive_field,
            images=None if images is None else int(images),
        )

    def _repr_png_(self) -> bytes:
        """The top-k grid (up to 8 feature maps), for Jupyter."""
        n = int(self.channels.numel())
        return render_png(self, list(range(min(n, 8))))


# ------------------------------------------------------------------------------ helpers


def _check_layers(model: nn.Module, layers: Sequence[str] | str | None) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    if layers is None or len(layers) == 0:
        return default_layers(model, "reconstruct")
    return check_layer_calls(model, layers)


def _first_image(dataset: Sequence[Any]) -> Tensor:
    if len(dataset) == 0:
        raise DataError("the dataset is empty; give one with at least one image")
    item = dataset[0]
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], Tensor):
        item = item[0]
    if not isinstance(item, Tensor) or item.dim() != 3:
        raise InputError(
            "dataset items must be images [C, H, W] or (image, label) pairs, got "
            f"{type(item).__name__}{tuple(item.shape) if isinstance(item, Tensor) else ''}"
        )
    return item


def _pick_channels(
    layer: str, n_ch: int, channels: Sequence[int] | None, max_channels: int | None = None
) -> list[int]:
    """The feature maps of ``layer`` (which has ``n_ch``) to project: ``channels`` (default
    all), at most the first ``max_channels`` of them, each checked to be in range."""
    chans = list(range(n_ch)) if channels is None else [int(c) for c in channels]
    if max_channels is not None:
        chans = chans[:max_channels]
    bad = [c for c in chans if not 0 <= c < n_ch]
    if bad:
        raise InputError(
            f"channel {bad[0]} is out of range for {layer!r}, which has {n_ch} channels "
            f"(0..{n_ch - 1})"
        )
    if not chans:
        raise InputError("channels is empty; give at least one channel")
    return chans


# ------------------------------------------------------------------------------ compute


def reconstruct_dataset(
    model: nn.Module,
    dataset: Sequence[Any],
    layers: Sequence[str] | str | None = None,
    k: int = 9,
    rule: str = "deconvnet",
    *,
    channels: Sequence[int] | None = None,
    max_channels: int | None = None,
    batch_size: int = 256,
    progress: bool = True,
    num_workers: int = 0,
    max_images: int | None = None,
) -> dict[str, LayerReconstructions]:
    """The paper's Fig. 2 for every chosen layer: top-``k`` activations per feature map, projected.

    The dataset is read once for all layers (one :func:`deconvviz.scan`, each forward pass
    stopped after the deepest layer) for the ``k`` strongest activations of every feature map
    of every layer, from distinct images; each is then projected to pixel space with ``rule``
    and cut to its receptive field, beside the image patch that caused it (only those images
    are read again).

    Args:
        model: the network (its ``training`` flags are left as they were).
        dataset: items ``(image [C, H, W], label)`` or images, all of one size, in the model's
            input space (e.g. :func:`deconvviz.sources.data.load_dataset`).
        layers: layer names (``named_modules()`` spelling); default: every ``Conv2d`` layer.
        k: activations per feature map. Over fewer than ``k`` images the rest is padding
            (index ``-1``; see :attr:`LayerReconstructions.valid`), never drawn, and a
            :class:`deconvviz.FewImagesWarning` says so once.
        rule: ``"deconvnet"`` (Zeiler & Fergus), ``"gradient"`` or ``"guided"``.
        channels: only these feature maps (default: all of each layer).
        max_channels: at most this many of them per layer (the first ones; default: all).
        batch_size: images per forward pass while scanning.
        progress: show progress bars.
        num_workers: DataLoader worker processes reading the images (for folders read from
            disk, e.g. :class:`deconvviz.sources.datasets.FolderDataset`).
        max_images: use only ``N`` images of ``dataset``, spread evenly over it.

    Returns:
        ``{layer: LayerReconstructions}`` in the order given; ``reconstructions`` and
        ``patches`` are ``[C', k, Cin, h, w]`` with ``h, w`` the receptive field's size (at most
        the image's).

    Example::

        res = reconstruct_dataset(net, test_set, ["conv1"], k=9, progress=False)
        res["conv1"].patches.shape        # torch.Size([32, 9, 3, 5, 5])
    """
    from tqdm.auto import tqdm

    door, resolved_rule, loader = _checked_scan(
        model, dataset, layers, k, rule, batch_size, num_workers, max_images
    )
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    if n < k:  # once here, not once per layer
        warnings.warn(few_images_message(k, n), FewImagesWarning, stacklevel=2)
    found = scan_resolved(
        door,
        loader,
        k,
        batch_size=batch_size,
        max_images=max_images,
        progress=progress,
        distributed=False,
    )
    with Deconvnet(model, resolved_rule, warn=False) as dn:
        return {
            layer: _project_layer(
                dn, door, dataset, found[layer], channels, max_channels, batch_size, progress, n
            )
            for layer in tqdm(door.layers, desc="projecting", unit="layer", disable=not progress)
        }


def _checked_scan(
    model: Any,
    dataset: Sequence[Any],
    layers: Sequence[str] | str | None,
    k: Any,
    rule: str,
    batch_size: Any,
    num_workers: int,
    max_images: Any,
) -> tuple[Resolved, Rule, DataLoader[Any]]:
    """:func:`reconstruct_dataset`'s door: every argument checked once; the resolved model and
    layers, the rule, and a loader of ``dataset`` in order."""
    door = resolve_model(model)
    check_positive_int("k (--top)", k)
    check_positive_int("batch_size", batch_size)
    check_positive_int("max_images", max_images, or_none=True)
    resolved_rule = get_rule(rule)
    door = replace(door, layers=tuple(_check_layers(model, layers)))
    _first_image(dataset)  # a clear error for an empty dataset or odd items, before scanning
    loader: DataLoader[Any] = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    return door, resolved_rule, loader


def _project_layer(
    dn: Deconvnet,
    door: Resolved,
    dataset: Sequence[Any],
    top: Any,
    channels: Sequence[int] | None,
    max_channels: int | None,
    batch_size: int,
    progress: bool,
    images: int,
) -> LayerReconstructions:
    """One layer of :func:`reconstruct_dataset`: project the scanned top activations of the
    chosen channels (``images``: how many images the scan read)."""
    chans = _pick_channels(top.layer, top.channels, channels, max_channels)
    proj = project_top_with(dn, door, dataset, top, chans, tuple(chans), batch_size, progress)
    return LayerReconstructions.from_projections(proj, chans, images=images)


def reconstruct_images(
    model: nn.Module,
    images: Tensor,
    layers: Sequence[str] | str | None = None,
    channels: Sequence[int] | int | None = None,
    rule: str = "deconvnet",
    *,
    progress: bool = True,
) -> dict[str, ImageProjections]:
    """Project the strongest activation of each feature map of each layer, for given images.

    Args:
        model: the network.
        images: ``[N, C, H, W]`` (or one ``[C, H, W]`` image) in the model's input space.
        layers: layer names; default: every ``Conv2d`` layer.
        channels: feature maps to project (default: all of each layer).
        rule: ``"deconvnet"``, ``"gradient"`` or ``"guided"``.
        progress: show a progress bar.

    Returns:
        ``{layer: ImageProjections}`` in the order given.

    Example::

        res = reconstruct_images(net, x, ["conv2"], channels=[0, 5], progress=False)
        res["conv2"].reconstructions.shape     # torch.Size([4, 2, 3, 32, 32])
    """
    from tqdm.auto import tqdm

    x, names, resolved_rule = _checked_images(model, images, layers, rule)
    chosen = [channels] if isinstance(channels, int) else channels
    results: dict[str, ImageProjections] = {}
    with attach(model, resolved_rule, warn=False) as dn:
        # every layer's channels are checked before any projection starts
        jobs = [_image_job(dn, x, layer, chosen) for layer in names]
        total = sum(len(ch) for _, ch, _ in jobs)
        with tqdm(total=total, desc="projecting", unit="map", disable=not progress) as bar:
            for layer, chans, acts in jobs:
                results[layer] = _project_images(dn, x, layer, chans, acts, rule, bar.update)
    return results


def _checked_images(
    model: Any, images: Any, layers: Sequence[str] | str | None, rule: str
) -> tuple[Tensor, list[str], Rule]:
    """:func:`reconstruct_images`'s door, every argument checked once: the ``[N, C, H, W]``
    batch on the model's device and dtype, the layer names and the rule."""
    device, dtype = model_device_dtype(model)
    if not isinstance(images, Tensor):
        raise InputError(f"images must be a tensor [N, C, H, W], got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    resolved_rule = get_rule(rule)
    names = _check_layers(model, layers)
    if not images.is_floating_point():
        raise InputError(
            f"images must be floating point in the model's input space, got {images.dtype}; "
            "convert uint8 pixels with x.float() / 255"
        )
    return images.detach().to(device=device, dtype=dtype), names, resolved_rule


def _image_job(
    dn: Deconvnet, x: Tensor, layer: str, channels: Sequence[int] | None
) -> tuple[str, list[int], Tensor]:
    """``(layer, channels to project, its output on x)``, checked."""
    acts = dn.layer_output(x, layer)
    if acts.dim() not in (2, 4):
        raise LayerError(
            f"layer {layer!r} outputs shape {tuple(acts.shape)}; only [N, C, H, W] feature "
            "maps and [N, C] vectors can be projected"
        )
    return layer, _pick_channels(layer, int(acts.shape[1]), channels), acts


def _strongest(sel: Tensor) -> tuple[Tensor, Tensor]:
    """``[N, K]`` the strongest activation of each map of ``sel`` (``[N, K, h, w]`` or
    ``[N, K]``) and ``[N, K, 2]`` its ``(row, col)`` (``0, 0`` for vectors)."""
    if sel.dim() == 4:
        flat = sel.flatten(2)
        values, best = flat.max(dim=2)  # first maximum on ties, as the engine
        w = sel.shape[-1]
        return values, torch.stack([best // w, best % w], dim=-1)
    return sel, torch.zeros((*sel.shape, 2), dtype=torch.long, device=sel.device)


def _project_images(
    dn: Deconvnet,
    x: Tensor,
    layer: str,
    chans: list[int],
    acts: Tensor,
    rule: str,
    done: Callable[[int], Any],
) -> ImageProjections:
    """Project the strongest activation of each of ``chans`` in ``acts`` (``layer``'s output on
    ``x``), a memory-budgeted block of channels at a time; ``done(n)`` after each block. The
    engine is handed the positions and values found here, so it runs no search pass of its own."""
    values, positions = _strongest(acts[:, chans])
    n = x.shape[0]
    per_map = x.numel() * x.element_size()
    step = items_within(_CHANNEL_BUDGET, per_map)
    parts = []
    for start in range(0, len(chans), step):
        block = chans[start : start + step]
        image = torch.arange(n).repeat_interleave(len(block))
        channel = torch.tensor(block, dtype=torch.long).repeat(n)
        at: dict[str, Any] = {}
        if acts.dim() == 4:  # vectors have no positions
            cut = slice(start, start + len(block))
            at = {"position": positions[:, cut].reshape(-1, 2), "values": values[:, cut].flatten()}
        rec = dn.project_seeds(x, layer, image, channel, **at)
        parts.append(rec.view(n, len(block), *x.shape[1:]).detach().cpu())
        done(len(block))
    return ImageProjections(
        layer=layer,
        rule=rule,
        images=x.detach().cpu(),
        channels=torch.tensor(chans, dtype=torch.long),
        values=values.detach().cpu(),
        positions=positions.cpu(),
        reconstructions=torch.cat(parts, dim=1),
    )


# ------------------------------------------------------------------------------ input images


def expected_input(
    model: nn.Module, config: Mapping[str, Any] | None = None
) -> tuple[int | None, int | None]:
    """The input ``(channels, size)`` a model expects, where it can be told (else ``None``).

    Looks at ``config["model"]`` (a run's config) or ``model.config`` (deconvviz's example
    models: ``in_channels`` and ``image_size``), then at the first ``Conv2d``'s input channels.
    """
    cfg: Any = None
    if config:
        cfg = config.get("model") if isinstance(config.get("model"), Mapping) else config
    if not isinstance(cfg, Mapping):
        cfg = getattr(model, "config", None)
    channels = size = None
    if isinstance(cfg, Mapping):
        if isinstance(cfg.get("in_channels"), int):
            channels = int(cfg["in_channels"])
        if isinstance(cfg.get("image_size"), int):
            size = int(cfg["image_size"])
    if channels is None:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is not None:
            channels = int(conv.in_channels)
    return channels, size
