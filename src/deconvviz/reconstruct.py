"""Per-layer reconstructions: the paper's Fig. 2 over a dataset, and projections of given images.

Two computations, each returning tensors (no files written):

* :func:`reconstruct_dataset` -- for every chosen layer, the top-``k`` activations of each
  feature map over a dataset, projected to pixel space beside the image patches (receptive
  fields) that caused them (:class:`LayerReconstructions` per layer);
* :func:`reconstruct_images` -- for given images, the strongest activation of each feature map
  (or of chosen channels), projected (:class:`ImageProjections` per layer).

:func:`load_images` reads PNG/JPEG files into a batch the model can take, and the ``write_*``
functions render the results (:mod:`deconvviz.render.reconstruct`) and write them atomically
with :mod:`deconvviz._io`.

Example::

    from deconvviz.reconstruct import reconstruct_dataset, write_dataset_reconstructions

    results = reconstruct_dataset(model, test_set, layers=["conv1", "conv2"], k=9)
    results["conv2"].reconstructions.shape          # [64, 9, 3, 14, 14]
    write_dataset_reconstructions(results, "out/reconstruct")
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from deconvviz._io import save_figure, save_torch, write_json
from deconvviz.engine import attach, model_device_dtype
from deconvviz.engine import split_call as _split_layer
from deconvviz.errors import DataError, InputError, LayerError, unknown_name
from deconvviz.receptive import ReceptiveField
from deconvviz.rules import RULES
from deconvviz.topk import (
    FewImagesWarning,
    TopProjections,
    few_images_message,
    project_top,
    top_activations,
)

__all__ = [
    "ImageProjections",
    "LayerReconstructions",
    "conv_layer_names",
    "dataset_for_model",
    "expected_input",
    "load_images",
    "reconstruct_dataset",
    "reconstruct_images",
    "safe_name",
    "write_dataset_reconstructions",
    "write_image_reconstructions",
]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
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
        from deconvviz._display import figure_png
        from deconvviz.render.reconstruct import image_projections_figure

        return figure_png(image_projections_figure(self, 0, max_channels=16))


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
        alive = self.fired.any(dim=1)
        return [
            int(c) for c, a in zip(self.channels.tolist(), alive.tolist(), strict=True) if not a
        ]

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
        from deconvviz._display import figure_png
        from deconvviz.render.reconstruct import top_projections_figure

        n = int(self.channels.numel())
        return figure_png(top_projections_figure(self, list(range(min(n, 8)))))


# ------------------------------------------------------------------------------ helpers


def safe_name(layer: str) -> str:
    """A file-name-safe spelling of a layer name (``features.3`` stays, ``a/b`` -> ``a_b``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", layer).strip("._")
    return name or "layer"


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of the 2-D convolution layers of ``model`` (``named_modules()`` order)."""
    return [name for name, m in model.named_modules() if name and isinstance(m, nn.Conv2d)]


def _check_layers(model: nn.Module, layers: Sequence[str] | str | None) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    if layers is None or len(layers) == 0:
        found = conv_layer_names(model)
        if not found:
            raise LayerError(
                f"{type(model).__name__} has no Conv2d layers to reconstruct by default; "
                "name the layers to project: --layer NAME (layers=[...] in Python)"
            )
        return found
    names = [n for n, _ in model.named_modules() if n]
    out: list[str] = []
    for layer in layers:
        # 'name:N' (the N-th call of a module called several times) is the engine's to check
        if not isinstance(layer, str) or _split_layer(layer)[0] not in names:
            raise LayerError(unknown_name("layer", str(layer), names))
        if layer not in out:
            out.append(layer)
    return out


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise InputError(unknown_name("rule", str(rule), sorted(RULES)))


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
) -> dict[str, LayerReconstructions]:
    """The paper's Fig. 2 for every chosen layer: top-``k`` activations per feature map, projected.

    For each layer the dataset is scanned once (each forward pass stopped at the layer) for the
    ``k`` strongest activations of every feature map, from distinct images; each is then
    projected to pixel space with ``rule`` and cut to its receptive field, beside the image patch
    that caused it.

    Args:
        model: the network (its ``training`` flags are left as they were).
        dataset: items ``(image [C, H, W], label)`` or images, all of one size, in the model's
            input space (e.g. :func:`deconvviz.data.load_dataset`).
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
            disk, e.g. :class:`deconvviz.datasets.FolderDataset`).

    Returns:
        ``{layer: LayerReconstructions}`` in the order given; ``reconstructions`` and
        ``patches`` are ``[C', k, Cin, h, w]`` with ``h, w`` the receptive field's size (at most
        the image's).

    Example::

        res = reconstruct_dataset(net, test_set, ["conv1"], k=9, progress=False)
        res["conv1"].patches.shape        # torch.Size([32, 9, 3, 5, 5])
    """
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k (--top) must be a positive integer, got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    _check_rule(rule)
    names = _check_layers(model, layers)
    _first_image(dataset)  # a clear error for an empty dataset or odd items, before scanning
    loader: DataLoader[Any] = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    if len(dataset) < k:  # once here, not once per layer
        warnings.warn(few_images_message(k, len(dataset)), FewImagesWarning, stacklevel=2)
    results: dict[str, LayerReconstructions] = {}
    for layer in tqdm(names, desc="reconstructing", unit="layer", disable=not progress):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FewImagesWarning)
            top = top_activations(model, loader, layer, k=k, progress=progress)
        chans = list(range(top.channels)) if channels is None else [int(c) for c in channels]
        if max_channels is not None:
            chans = chans[:max_channels]
        if max_channels is not None:
            chans = chans[:max_channels]
        bad = [c for c in chans if not 0 <= c < top.channels]
        if bad:
            raise InputError(
                f"channel {bad[0]} is out of range for {layer!r}, which has {top.channels} "
                f"channels (0..{top.channels - 1})"
            )
        if not chans:
            raise InputError("channels is empty; give at least one channel")
        proj = project_top(
            model,
            dataset,
            top,
            rule=rule,
            channels=chans,
            batch_size=batch_size,
            progress=progress,
        )
        results[layer] = LayerReconstructions.from_projections(proj, chans, images=len(dataset))
    return results


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

    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, Tensor):
        raise InputError(f"images must be a tensor [N, C, H, W], got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    _check_rule(rule)
    names = _check_layers(model, layers)
    device, dtype = model_device_dtype(model)
    if not images.is_floating_point():
        raise InputError(
            f"images must be floating point in the model's input space, got {images.dtype}; "
            "convert uint8 pixels with x.float() / 255"
        )
    x = images.detach().to(device=device, dtype=dtype)
    if isinstance(channels, int):
        channels = [channels]
    results: dict[str, ImageProjections] = {}
    with attach(model, rule, warn=False) as dn:
        jobs: list[tuple[str, list[int], Tensor]] = []
        for layer in names:
            acts = dn.layer_output(x, layer)
            if acts.dim() not in (2, 4):
                raise LayerError(
                    f"layer {layer!r} outputs shape {tuple(acts.shape)}; only [N, C, H, W] feature "
                    "maps and [N, C] vectors can be projected"
                )
            n_ch = int(acts.shape[1])
            chans = list(range(n_ch)) if channels is None else [int(c) for c in channels]
            bad = [c for c in chans if not 0 <= c < n_ch]
            if bad:
                raise InputError(
                    f"channel {bad[0]} is out of range for {layer!r}, which has {n_ch} channels "
                    f"(0..{n_ch - 1})"
                )
            if not chans:
                raise InputError("channels is empty; give at least one channel")
            jobs.append((layer, chans, acts))
        total = sum(len(ch) for _, ch, _ in jobs)
        with tqdm(total=total, desc="projecting", unit="map", disable=not progress) as bar:
            for layer, chans, acts in jobs:
                sel = acts[:, chans]
                if sel.dim() == 4:
                    flat = sel.flatten(2)
                    values, best = flat.max(dim=2)  # first maximum on ties, as the engine
                    w = sel.shape[-1]
                    positions = torch.stack([best // w, best % w], dim=-1)
                else:
                    values = sel
                    positions = torch.zeros((*sel.shape, 2), dtype=torch.long, device=sel.device)
                per_map = x.numel() * x.element_size()
                step = max(1, _CHANNEL_BUDGET // max(per_map, 1))
                parts = []
                for start in range(0, len(chans), step):
                    block = chans[start : start + step]
                    parts.append(dn.project(x, layer, channel=block).detach().cpu())
                    bar.update(len(block))
                results[layer] = ImageProjections(
                    layer=layer,
                    rule=rule,
                    images=x.detach().cpu(),
                    channels=torch.tensor(chans, dtype=torch.long),
                    values=values.detach().cpu(),
                    positions=positions.cpu(),
                    reconstructions=torch.cat(parts, dim=1),
                )
    return results


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


def load_images(
    paths: Iterable[str | os.PathLike[str]],
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
) -> Tensor:
    """Read PNG/JPEG (any format Pillow reads) into a float batch ``[N, C, H, W]`` in [0, 1].

    Colour images become greyscale (ITU-R 601-2 luma) when ``channels`` is 1; greyscale images
    are repeated to 3 channels when ``channels`` is 3. With ``size``, each image is cropped to
    the aspect ratio of ``size`` around its centre and resized (bicubic) to it; without it, all
    images must already have one size.

    Args:
        paths: image files.
        channels: 1 or 3 (the model's input channels), or ``None`` to keep each image's own
            (grey -> 1, colour -> 3).
        size: ``S`` or ``(H, W)`` to resize to, or ``None``.

    Returns:
        ``float32 [N, C, H, W]`` with values in [0, 1].

    Raises:
        DataError: a file is missing or not an image.
        InputError: the model's channel count cannot be made from an image (not 1 or 3), or
            the images have different sizes and no ``size`` is given.
    """
    from PIL import Image, UnidentifiedImageError

    files = [Path(p).expanduser() for p in paths]
    if not files:
        raise InputError("no image files given; pass at least one (--image PATH)")
    if channels is not None and channels not in (1, 3):
        raise InputError(
            f"the model takes {channels}-channel input, which cannot be made from PNG/JPEG images "
            "(grey or RGB); feed such a model tensors through the Python API instead"
        )
    target: tuple[int, int] | None = None
    if size is not None:
        target = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(target) < 1:
            raise InputError(f"size must be positive, got {size!r}")
    arrays = []
    import numpy as np

    for path in files:
        if not path.is_file():
            raise DataError(f"image {path} does not exist; check the path")
        try:
            with Image.open(path) as im:
                im.load()
                grey = im.mode in ("L", "1", "LA", "I", "I;16", "F")
                mode = {1: "L", 3: "RGB"}.get(channels or 0, "L" if grey else "RGB")
                img = im.convert(mode)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(
                f"cannot read {path} as an image ({exc}); give a PNG or JPEG file"
            ) from exc
        if target is not None:
            img = _fit(img, target)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(
            f"the images have different sizes {sorted(s[1:] for s in shapes)}; give a size to "
            "resize them to (the model's input size)"
        )
    return torch.from_numpy(np.stack(arrays))


def _fit(img: Any, target: tuple[int, int]) -> Any:
    from PIL import Image

    th, tw = target
    w, h = img.size
    if (h, w) == (th, tw):
        return img
    want = tw / th
    if w / h > want:  # too wide: crop the sides
        nw = max(1, round(h * want))
        left = (w - nw) // 2
        img = img.crop((left, 0, left + nw, h))
    elif w / h < want:  # too tall
        nh = max(1, round(w / want))
        top = (h - nh) // 2
        img = img.crop((0, top, w, top + nh))
    return img.resize((tw, th), Image.Resampling.BICUBIC)


def dataset_for_model(
    model: nn.Module,
    config: Mapping[str, Any],
    data_dir: str | os.PathLike[str] | None,
    dataset: str | None = None,
    split: str = "test",
    max_images: int | None = None,
) -> Any:
    """The dataset that goes with a model: by its run config, else by name, converted to fit it.

    A deconvviz run's config names its data (:func:`deconvviz.data.dataset_for_config`); a run
    trained on the shipped CIFAR-10 sample (``deconvviz demo``) gets that sample back when no
    ``data_dir`` is given (or the full CIFAR-10 under ``data_dir``). For a user model (no
    config) the dataset under ``data_dir`` is converted to the model's input channels and size
    where :func:`expected_input` can tell them; where ``data_dir`` holds several datasets, the
    one whose images have that shape is read (:func:`deconvviz.data.choose_dataset`).

    Args:
        model: the loaded model.
        config: the run's config (may be empty for a user model).
        data_dir: where the data is (``None``: only for runs trained on the shipped sample).
        dataset: a dataset name to force (``"auto"``, ``"cifar10"``, ...; ``"imagefolder"``
            or ``"images"`` for a folder of images).
        split: ``"train"`` or ``"test"``.
        max_images: for image folders, list only the first N files (deterministic order).

    An ``ImageFolder`` tree or a flat folder of images under ``data_dir`` (see
    :mod:`deconvviz.datasets`) is used when no deconvviz dataset layout is found there.
    """
    from deconvviz.data import choose_dataset, dataset_for_config, load_dataset

    model_cfg = config.get("model") if config else None
    trained_on = config.get("dataset") if config else None
    if trained_on == "cifar10-sample" and dataset is None:
        if data_dir is None:
            from deconvviz.demo import load_sample

            return load_sample(split)
        dataset = "cifar10"
    if data_dir is None:
        raise DataError(
            "no data folder given; pass --data-dir DIR (data_dir= in Python) pointing at the "
            "dataset (e.g. ../shared/data)"
        )
    if dataset is None and isinstance(model_cfg, Mapping):
        return dataset_for_config(dict(config), data_dir, split)
    channels, size = expected_input(model, config)
    if dataset in (None, "auto", "imagefolder", "images"):
        from deconvviz.data import find_datasets
        from deconvviz.datasets import find_image_folder

        if dataset in ("imagefolder", "images") or not find_datasets(data_dir):
            folder = find_image_folder(
                data_dir, split, channels=channels, image_size=size, max_images=max_images
            )
            if folder is not None:
                return folder
    if dataset is None:  # a folder holding several: the one whose images fit the model
        dataset = choose_dataset(data_dir, None, channels, size)
    return load_dataset(
        data_dir,
        dataset,
        split,
        grayscale=None if channels is None else channels == 1,
        image_size=size,
    )


# ------------------------------------------------------------------------------ writing


def _finite(values: Tensor) -> list[Any]:
    out: list[Any] = []
    for row in values.tolist():
        if isinstance(row, list):
            out.append([v if isinstance(v, int) or math.isfinite(v) else None for v in row])
        else:
            out.append(row if isinstance(row, int) or math.isfinite(row) else None)
    return out


def write_dataset_reconstructions(
    results: Mapping[str, LayerReconstructions],
    out_dir: str | os.PathLike[str],
    *,
    channels_per_page: int = 64,
    ncols: int = 8,
    dpi: int = 100,
    save_tensors: bool = False,
) -> list[Path]:
    """Render and write :func:`reconstruct_dataset`'s results, atomically.

    Per layer: ``<layer>.png`` (the Fig. 2 grid; ``<layer>_p2.png``... when it has more than
    ``channels_per_page`` feature maps) and ``<layer>.json`` (values, dataset indices,
    positions and receptive-field boxes of every top activation, the dead feature maps and the
    number of images scanned; padding entries, when the dataset had fewer than ``k`` images, are
    left out and ``k`` counts the real ones); with ``save_tensors``, also ``<layer>.pt`` holding
    the reconstructions and patches.

    Returns:
        The written PNG paths, in order.
    """
    from deconvviz.render.reconstruct import top_projections_figure

    if channels_per_page < 1:
        raise InputError(f"channels_per_page must be positive, got {channels_per_page}")
    out = Path(out_dir)
    pngs: list[Path] = []
    for layer, rec in results.items():
        stem = safe_name(layer)
        n = rec.reconstructions.shape[0]
        pages = max(1, math.ceil(n / channels_per_page))
        written = []
        for page in range(pages):
            sel = list(range(page * channels_per_page, min(n, (page + 1) * channels_per_page)))
            fig = top_projections_figure(
                rec, sel, ncols=ncols, page=(page + 1, pages) if pages > 1 else None
            )
            path = out / (f"{stem}.png" if page == 0 else f"{stem}_p{page + 1}.png")
            save_figure(path, fig, dpi=dpi)
            written.append(path)
        pngs += written
        rf = rec.receptive_field
        keep = rec.valid  # padding (fewer images than k) is left out
        summary = {
            "layer": layer,
            "rule": rec.rule,
            "k": rec.found,
            "k_asked": rec.k,
            "input_size": list(rec.input_size),
            "receptive_field": None
            if rf is None
            else {
                "size": list(rf.size),
                "jump": list(rf.jump),
                "start": list(rf.start),
            },
            "figures": [p.name for p in written],
            "images": rec.images,
            "dead": rec.dead,
            "channels": rec.channels.tolist(),
            "values": [_finite(v[m]) for v, m in zip(rec.values, keep, strict=True)],
            "indices": [i[m].tolist() for i, m in zip(rec.indices, keep, strict=True)],
            "positions": [p[m].tolist() for p, m in zip(rec.positions, keep, strict=True)],
            "boxes": [b[m].tolist() for b, m in zip(rec.boxes, keep, strict=True)],
        }
        write_json(out / f"{stem}.json", summary)
        if save_tensors:
            save_torch(
                out / f"{stem}.pt",
                {
                    "channels": rec.channels,
                    "reconstructions": rec.reconstructions,
                    "patches": rec.patches,
                    "values": rec.values,
                    "indices": rec.indices,
                    "positions": rec.positions,
                    "boxes": rec.boxes,
                },
            )
    return pngs


def _unique(names: list[str]) -> list[str]:
    """``names`` made distinct as file names: a repeated ``cat`` becomes ``cat_2``, ``cat_3``..."""
    seen: set[str] = set()
    out = []
    for name in names:
        base = safe_name(name)
        cand, n = base, 1
        while cand in seen:
            n += 1
            cand = f"{base}_{n}"
        seen.add(cand)
        out.append(cand)
    return out


def write_image_reconstructions(
    results: Mapping[str, ImageProjections],
    out_dir: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    *,
    max_channels: int | None = 64,
    dpi: int = 100,
) -> list[Path]:
    """Render and write :func:`reconstruct_images`'s results, atomically.

    Per image and layer: ``<image>_<layer>.png`` (the input beside the projections of its
    ``max_channels`` strongest feature maps, labelled with channel and activation value), and
    one ``projections.json`` with every value and position.

    Args:
        results: what :func:`reconstruct_images` returned.
        out_dir: the folder.
        names: a name per image (e.g. the file stems; repeated names get ``_2``, ``_3``...);
            default ``image0``, ``image1``...
        max_channels: show at most this many feature maps per figure, strongest first
            (``None``: all).
        dpi: resolution of the PNGs.

    Returns:
        The written PNG paths, in order.
    """
    from deconvviz.render.reconstruct import image_projections_figure

    out = Path(out_dir)
    pngs: list[Path] = []
    summary: dict[str, Any] = {}
    for layer, res in results.items():
        n = res.images.shape[0]
        labels = list(names) if names is not None else [f"image{i}" for i in range(n)]
        if len(labels) != n:
            raise InputError(f"got {len(labels)} names for {n} images; give one per image")
        labels = _unique(labels)
        per_image = []
        for i in range(n):
            fig = image_projections_figure(res, i, max_channels=max_channels, title=labels[i])
            path = out / f"{safe_name(labels[i])}_{safe_name(layer)}.png"
            save_figure(path, fig, dpi=dpi)
            pngs.append(path)
            per_image.append(
                {
                    "image": labels[i],
                    "figure": path.name,
                    "values": res.values[i].tolist(),
                    "positions": res.positions[i].tolist(),
                }
            )
        summary[layer] = {"rule": res.rule, "channels": res.channels.tolist(), "images": per_image}
    write_json(out / "projections.json", summary)
    return pngs
