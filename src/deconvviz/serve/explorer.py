"""What the live page shows, computed: the model, its dataset, uploads, and each view as data.

:class:`Explorer` holds a model in eval mode, its dataset (items ``(image [C, H, W] in [0, 1],
label)``), the images uploaded to it and the source of each unit's top-k (an atlas folder built
by ``deconvviz atlas``, or a dataset scan it runs in a background thread). Each method answers one
endpoint of the HTTP API with plain data (dicts, tensors, PNG bytes); the web app only routes.

Every method that touches the model must run on the :class:`~deconvviz.serve.worker.ModelWorker`
thread (the app does that); the background scan runs on its own copy of the model and only while
the worker is idle.

Bad input raises :class:`deconvviz.base.errors.InputError` (or ``LayerError``) with a one-line
message naming the valid values; a top-k asked for before the scan is done raises
:class:`NotReady`.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import math
import os
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deconvviz.analyses.occlusion import occluder_starts
from deconvviz.analyses.scan import scan
from deconvviz.analyses.topk import TopActivations, input_boxes, project_top
from deconvviz.base._util import safe_name
from deconvviz.base.checks import batch_images, class_names_for
from deconvviz.base.errors import CheckpointError, DeconvvizError, InputError, LayerError
from deconvviz.base.images import fit_image
from deconvviz.engine.deconvnet import Deconvnet
from deconvviz.engine.rules import rule_names
from deconvviz.sources.loading import model_outputs

__all__ = [
    "MAX_UPLOAD_BYTES",
    "MAX_UPLOAD_PIXELS",
    "Explorer",
    "NotFound",
    "NotReady",
    "ScanProgress",
    "default_cache_dir",
]

MAX_UPLOAD_BYTES = 16 * 1024 * 1024
"""Largest upload accepted, in bytes."""
MAX_UPLOAD_PIXELS = 40_000_000
"""Largest decoded upload accepted, in pixels (width x height): a decompression bomb, a small
file that decodes to gigabytes, is refused from its header, before it is decoded."""
UPLOADS_KEPT = 64
"""Uploaded images kept in memory (the oldest are forgotten)."""
MAPS_KEPT = 8
"""Layer outputs kept (image, layer), for the projections that follow a layer's grid."""
TOP5 = 5
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


class NotReady(DeconvvizError):
    """The top-k is not known yet: the background scan is still running."""


class NotFound(DeconvvizError):
    """An image id that is not (or no longer) known."""


def default_cache_dir() -> Path:
    """Where ``deconvviz serve`` keeps its scan states: ``$XDG_CACHE_HOME/deconvviz`` (or
    ``~/.cache/deconvviz``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deconvviz" / "serve"


@dataclass
class ScanProgress:
    """The background scan's state, as the page shows it."""

    total: int
    done: int = 0
    finished: bool = False
    error: str | None = None
    state: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "total": self.total,
            "finished": self.finished,
            "error": self.error,
            "state": self.state,
        }


class _Stop(KeyboardInterrupt):
    """Raised inside the scan's data reads when the server stops (the scan saves its state on
    a KeyboardInterrupt, so the next start resumes)."""


class _Paced(torch.utils.data.Dataset):
    """The dataset as the background scan reads it: each read waits until the model worker is
    idle (interactive requests first) and counts towards the progress."""

    def __init__(self, data: Any, idle: threading.Event, progress: ScanProgress) -> None:
        self.data, self.idle, self.progress = data, idle, progress

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Any:
        # every read is paced and counted: a resumed scan first re-reads the images it had
        # scanned (to check they did not change), then goes on from there
        while not self.idle.wait(0.25):
            if self.progress.stop.is_set():
                raise _Stop
        if self.progress.stop.is_set():
            raise _Stop
        self.progress.done = max(self.progress.done, int(i) + 1)
        return self.data[i]


@dataclass(frozen=True)
class LayerInfo:
    """A layer the page can show: its name, module type, output shape and receptive field."""

    name: str
    type: str
    shape: tuple[int, int, int]
    rf: tuple[int, int] | None


def _png(arr: np.ndarray) -> bytes:
    """PNG bytes of a uint8 ``[H, W]`` or ``[H, W, 3]`` array (fast compression)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _to_uint8(t: Tensor) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] as a uint8 ``[H, W]`` (one channel) or ``[H, W, 3]`` array."""
    a = (t.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _display_projection(rec: Tensor) -> Tensor:
    """Zeiler & Fergus display: 0 is grey, the largest magnitude black or white."""
    scale = rec.abs().max()
    return (0.5 + rec / (2 * scale)).clamp(0, 1) if float(scale) > 0 else torch.full_like(rec, 0.5)


def _display_input(x: Tensor) -> Tensor:
    """Input pixels for display (stretched per image when outside [0, 1])."""
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0 and hi <= 1:
        return x
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


class Explorer:
    """The model, its data and the top-k source behind ``deconvviz serve``.

    Args:
        model: the network (put in eval mode; moved to ``device``).
        dataset: items ``(image [C, H, W] in [0, 1], label)`` or images; the page's picker.
        classes: class names by output index (default: ``dataset.classes``, else numbers).
        atlas: a folder written by ``deconvviz atlas`` (its ``atlas.json`` gives each scanned
            unit's top-k; its pages are linked); without it, :meth:`start_scan` computes them.
        device: where the model runs.
        k: top activations per unit (background scan).
        title: what the page calls the model.

    Example:
        >>> ex = Explorer(model, load_sample())                       # doctest: +SKIP
        >>> ex.activations("3", "relu2")["channels"]                  # doctest: +SKIP
        128
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Any,
        *,
        classes: list[str] | None = None,
        atlas: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        k: int = 9,
        title: str = "",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        first = next(model.parameters(), None)
        self.dtype = first.dtype if first is not None else torch.float32
        if len(dataset) == 0:
            raise InputError("the dataset is empty; pass a folder that holds images")
        self.dataset = dataset
        self.input_shape = tuple(int(s) for s in batch_images(dataset[0]).shape)
        self.k = k
        self.title = title or type(model).__name__
        self._dns: dict[str, Deconvnet] = {}
        self.layers = self._find_layers()
        self.classes = (
            class_names_for(
                classes or getattr(dataset, "classes", None), model_outputs(model, dataset)
            )
            or []
        )
        targets = getattr(dataset, "targets", None)
        self.labels: list[int] | None = (
            [int(t) for t in targets]
            if targets is not None and len(targets) == len(dataset)
            else None
        )
        self.uploads: OrderedDict[str, Tensor] = OrderedDict()
        self._maps: OrderedDict[tuple[str, str], Tensor] = OrderedDict()  # worker thread only
        self._lock = threading.Lock()
        self.atlas = Path(atlas) if atlas is not None else None
        self._atlas: dict[str, dict[str, Any]] = self._read_atlas() if self.atlas else {}
        self.scan: ScanProgress | None = None
        self._scan_result: Any = None
        self._tops: dict[str, Any] = {}
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ model and layers

    def dn(self, rule: str = "deconvnet") -> Deconvnet:
        """The engine for ``rule`` (one per rule, kept: it caches the forward probe)."""
        if rule not in rule_names():
            raise InputError(f"unknown rule {rule!r}; valid rules: {', '.join(rule_names())}")
        if rule not in self._dns:
            self._dns[rule] = Deconvnet(self.model, rule=rule, warn=False)
        return self._dns[rule]

    def _find_layers(self) -> dict[str, LayerInfo]:
        """Every layer (and every call of a shared module) whose output is a feature map."""
        dn = self.dn()
        x = torch.zeros((1, *self.input_shape), dtype=self.dtype, device=self.device)
        dn.layer_geometry(x, dn.layers[0])  # one probe: dn.layers now in forward order
        modules = dict(self.model.named_modules())
        found: dict[str, LayerInfo] = {}
        for name in dn.layers:
            try:
                geo = dn.layer_geometry(x, name)
            except DeconvvizError:
                continue
            if geo.out_shape is None or len(geo.out_shape) != 3:
                continue
            rf = geo.receptive_field
            module = modules.get(name.split(":")[0])
            found[name] = LayerInfo(
                name,
                type(module).__name__ if module is not None else "?",
                (int(geo.out_shape[0]), int(geo.out_shape[1]), int(geo.out_shape[2])),
                None if rf is None else (int(rf.size[0]), int(rf.size[1])),
            )
        if not found:
            raise InputError(
                "the model has no layer that outputs feature maps [C, H, W]; serve needs a "
                "convolutional network"
            )
        return found

    @property
    def default_layer(self) -> str:
        """A rectified layer deep in the net whose maps are still at least 4x4 (else the
        first)."""
        good = [n for n, i in self.layers.items() if i.type == "ReLU" and min(i.shape[1:]) >= 4]
        return good[-1] if good else next(iter(self.layers))

    def layer(self, name: str | None) -> LayerInfo:
        """The layer called ``name``; an error naming the valid ones otherwise."""
        if name is None or name not in self.layers:
            names = list(self.layers)
            shown = ", ".join(names[:40]) + (
                f" ... ({len(names)} in all)" if len(names) > 40 else ""
            )
            if name in (None, ""):
                raise LayerError(f"layer is missing; give layer=NAME (one of {shown})")
            raise LayerError(f"unknown layer {name!r}; valid layers: {shown}")
        return self.layers[name]

    def unit(self, info: LayerInfo, unit: Any) -> int:
        """``unit`` as a channel index of ``info``; an error naming the valid range otherwise."""
        if unit in (None, ""):
            raise InputError(
                f"unit is missing; give unit=N (a unit of layer {info.name!r}: "
                f"0..{info.shape[0] - 1})"
            )
        try:
            c = int(unit)
        except (TypeError, ValueError):
            c = -1
        if not 0 <= c < info.shape[0]:
            raise InputError(
                f"unknown unit {unit!r} of layer {info.name!r}; valid units: 0..{info.shape[0] - 1}"
            )
        return c

    def summary(self) -> dict[str, Any]:
        """``GET /api/model``: layers, classes, rules, the dataset and the top-k source."""
        return {
            "title": self.title,
            "input_shape": list(self.input_shape),
            "classes": self.classes,
            "rules": list(rule_names()),
            "default_layer": self.default_layer,
            "layers": [
                {"name": i.name, "type": i.type, "shape": list(i.shape), "rf": i.rf}
                for i in self.layers.values()
            ],
            "images": len(self.dataset),
            "labels": self.labels is not None,
            "atlas": sorted(self._atlas) if self.atlas else None,
            "topk": "atlas" if self.atlas else "scan",
            "scan": self.scan.as_dict() if self.scan else None,
        }

    # ------------------------------------------------------------------ images

    def _index(self, i: Any) -> int:
        n = len(self.dataset)
        if i in (None, ""):
            raise InputError(
                f"image is missing; give image=N (a dataset image, 0..{n - 1}) or an upload's id"
            )
        try:
            idx = int(i)
        except (TypeError, ValueError):
            idx = -1
        if not 0 <= idx < n or str(i).strip() != str(idx):
            raise InputError(f"unknown image {i!r}; dataset images are 0..{n - 1}")
        return idx

    def image(self, spec: Any) -> Tensor:
        """``[1, C, H, W]`` on the model's device: dataset image ``"17"`` or upload ``"u..."``."""
        s = "" if spec is None else str(spec)
        if not s:
            self._index(s)  # raises: image is missing
        if s.startswith("u"):
            with self._lock:
                t = self.uploads.get(s)
            if t is None:
                raise NotFound(f"image {s!r} is not (or no longer) on the server; upload it again")
        else:
            t = batch_images(self.dataset[self._index(s)])
        return t.unsqueeze(0).to(self.device, self.dtype)

    def images(self, cls: Any = None, offset: int = 0, limit: int = 60) -> dict[str, Any]:
        """``GET /api/images``: dataset indices (of class ``cls`` when given), a page of them."""
        n = len(self.dataset)
        if cls in (None, ""):
            idx: list[int] | range = range(n)
        else:
            if self.labels is None:
                raise InputError("this dataset has no labels, so it cannot be filtered by class")
            c = self._class(cls)
            idx = [i for i, y in enumerate(self.labels) if y == c]
        if int(offset) < 0:
            raise InputError(f"offset must be 0 or more, got {offset}")
        if not 1 <= int(limit) <= 500:
            raise InputError(f"limit must lie in 1..500, got {limit}")
        offset, limit = int(offset), int(limit)
        page = list(idx[offset : offset + limit])
        return {
            "total": len(idx),
            "offset": offset,
            "images": [
                {"id": str(i), "label": None if self.labels is None else self.labels[i]}
                for i in page
            ],
        }

    def _class(self, cls: Any) -> int:
        names = self.classes
        if str(cls) in names:
            return names.index(str(cls))
        try:
            c = int(cls)
        except (TypeError, ValueError):
            c = -1
        if not 0 <= c < max(len(names), 1):
            raise InputError(
                f"unknown class {cls!r}; valid classes: {', '.join(names) or 'none'} "
                "(or their indices)"
            )
        return c

    def image_png(self, spec: Any) -> bytes:
        """The image as the model sees it, as PNG."""
        return _png(_to_uint8(_display_input(self.image(spec)[0].cpu())))

    def add_upload(self, data: bytes) -> str:
        """Decode an uploaded image (checked for size before decoding) and keep it, fitted to the
        model's input; returns its id (``u`` + a digest, so the same file has the same id)."""
        from PIL import Image, UnidentifiedImageError

        if len(data) > MAX_UPLOAD_BYTES:
            raise InputError(
                f"the upload is {len(data)} bytes, over the {MAX_UPLOAD_BYTES} byte limit; send "
                "a smaller image"
            )
        if not data:
            raise InputError("the upload is empty; send a PNG or JPEG file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:
                    w, h = im.size
                    if w * h > MAX_UPLOAD_PIXELS:
                        raise InputError(
                            f"the image is {w}x{h} = {w * h} pixels, over the "
                            f"{MAX_UPLOAD_PIXELS} pixel limit (a decompression bomb?); send a "
                            "smaller image"
                        )
                    im.load()
                    c = self.input_shape[0]
                    img = im.convert("L" if c == 1 else "RGB")
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputError(
                f"the image is over the {MAX_UPLOAD_PIXELS} pixel limit (a decompression "
                "bomb?); send a smaller image"
            ) from None
        except UnidentifiedImageError:
            raise InputError(
                "the upload is not an image Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP, "
                "...); send an image file as the request body"
            ) from None
        except (OSError, SyntaxError, ValueError) as exc:
            # Pillow's messages may hold object reprs (<_io.BytesIO object at 0x...>)
            why = _OBJECT_REPR.sub("", " ".join(str(exc).split())).strip(" :")
            why = why[:120] or type(exc).__name__
            raise InputError(
                f"the upload is not an image Pillow can read ({why}); send a PNG or JPEG file"
            ) from None
        img = fit_image(img, (self.input_shape[1], self.input_shape[2]))
        arr = np.asarray(img, dtype=np.float32) / 255.0
        t = torch.from_numpy(arr[None].copy() if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
        if t.shape[0] != self.input_shape[0]:
            t = t.expand(self.input_shape[0], -1, -1).clone()
        key = "u" + hashlib.sha256(data).hexdigest()[:16]
        with self._lock:
            self.uploads.pop(key, None)
            self.uploads[key] = t
            while len(self.uploads) > UPLOADS_KEPT:
                self.uploads.popitem(last=False)
        return key

    # ------------------------------------------------------------------ views (model work)

    @torch.no_grad()
    def predict(self, spec: Any) -> dict[str, Any]:
        """``GET /api/predict``: the top-5 classes with their probabilities."""
        logits = self.model(self.image(spec))
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise InputError("the model does not output class scores [N, classes]")
        probs = torch.softmax(logits.float(), dim=1)[0]
        p, c = probs.topk(min(TOP5, probs.numel()))
        return {
            "top": [
                {"class": int(ci), "name": self._class_name(int(ci)), "prob": float(pi)}
                for pi, ci in zip(p, c, strict=True)
            ]
        }

    def _class_name(self, c: int) -> str:
        return self.classes[c] if c < len(self.classes) else str(c)

    def feature_maps(self, spec: Any, layer: str) -> Tensor:
        """``[C, h, w]`` output of ``layer`` for the image (the last few are kept: the page
        asks for a layer's maps, then for projections of its units on the same image)."""
        info = self.layer(layer)
        x = self.image(spec)  # checks the image (an upload may have been forgotten)
        key = (str(spec), info.name)
        maps = self._maps.get(key)
        if maps is None:
            maps = self.dn().layer_output(x, info.name)[0]
            self._maps[key] = maps
            while len(self._maps) > MAPS_KEPT:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(key)
        return maps

    def activations(self, spec: Any, layer: str) -> dict[str, Any]:
        """``GET /api/activations``: per unit its strongest activation and where, whether it is
        silent on this image (never above 0) and dead over the dataset (when the top-k is
        known), and every map in one grid PNG (a data URL; cells ``cols`` wide, ``gap`` px
        apart, grey = 0 to white = the layer's largest activation on this image)."""
        info = self.layer(layer)
        maps = self.feature_maps(spec, layer).float().cpu()
        c, h, w = maps.shape
        flat = maps.flatten(1)
        best, arg = flat.max(dim=1)
        cols = math.ceil(math.sqrt(c))
        rows = math.ceil(c / cols)
        gap = 1
        top = float(best.max()) if c else 0.0
        scaled = (maps.clamp(min=0) / top if top > 0 else torch.zeros_like(maps)) * 255
        tiles = scaled.round().to(torch.uint8).numpy()
        grid = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), 40, dtype=np.uint8)
        for i in range(c):
            r, q = divmod(i, cols)
            grid[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = tiles[i]
        dead = self.dead_units(info.name)
        return {
            "layer": info.name,
            "channels": c,
            "map": [h, w],
            "cols": cols,
            "rows": rows,
            "gap": gap,
            "max": best.tolist(),
            "position": [[int(a) // w, int(a) % w] for a in arg],
            "silent": [bool(v <= 0) for v in best],
            "dead": dead,
            "grid": _data_url(_png(grid)),
        }

    def projection(
        self,
        spec: Any,
        layer: str,
        unit: Any,
        rule: str = "deconvnet",
        position: tuple[int, int] | None = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        """``GET /api/projection``: the unit's projection for the image (``[C, H, W]``, float)
        at ``position`` (default: its strongest activation), and what was projected."""
        info = self.layer(layer)
        c = self.unit(info, unit)
        dn = self.dn(rule)
        x = self.image(spec)
        maps = self.feature_maps(spec, info.name)[c]
        if position is None:
            a = int(maps.flatten().argmax())
            position = (a // maps.shape[1], a % maps.shape[1])
        else:
            r, q = position
            if not (0 <= r < info.shape[1] and 0 <= q < info.shape[2]):
                raise InputError(
                    f"position {r},{q} is outside the {info.shape[1]}x{info.shape[2]} map of "
                    f"{info.name!r} (rows 0..{info.shape[1] - 1}, cols 0..{info.shape[2] - 1})"
                )
        value = float(maps[position[0], position[1]])
        # the value is known: project_seeds checks its pass against it instead of running the
        # forward pass to the layer once more (Deconvnet.project(x, layer, c, position) otherwise)
        rec = dn.project_seeds(x, info.name, [0], [c], [position], values=[value])[0]
        return rec, {
            "layer": info.name,
            "unit": c,
            "rule": rule,
            "position": list(position),
            "value": value,
        }

    def projection_png(self, rec: Tensor) -> bytes:
        return _png(_to_uint8(_display_projection(rec.float().cpu())))

    # ------------------------------------------------------------------ top-k

    def dead_units(self, layer: str) -> list[int] | None:
        """Units never above 0 over the scanned images (None while unknown)."""
        if self.atlas is not None:
            entry = self._atlas.get(layer)
            return None if entry is None else [int(c) for c in entry.get("dead", [])]
        if self._scan_result is None or layer not in self._scan_result.tops:
            return None
        values = self._scan_result[layer].values[:, 0]
        return [int(c) for c in torch.nonzero(~(values > 0)).flatten()]

    def _read_atlas(self) -> dict[str, dict[str, Any]]:
        assert self.atlas is not None
        path = self.atlas / "atlas.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            layers = {d["layer"]: d for d in data["layers"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"{path} is missing or unreadable ({type(exc).__name__}); pass --atlas a folder "
                "written by 'deconvviz atlas'"
            ) from None
        n = len(self.dataset)
        for name, d in layers.items():
            for u in d.get("units", []):
                if any(int(i) >= n for i in u.get("indices", [])):
                    raise InputError(
                        f"the atlas {self.atlas} was built on a larger dataset than the one "
                        f"served ({n} images; layer {name} refers to image "
                        f"{max(u['indices'])}); pass the data the atlas was built on"
                    )
        return layers

    def atlas_page(self, layer: str, unit: int) -> str | None:
        """The atlas's page of a unit, relative to the atlas folder (None when it has none)."""
        if self.atlas is None or layer not in self._atlas:
            return None
        page = f"units/{safe_name(layer)}/{unit}.html"  # deconvviz.export.atlas's layout
        return page if (self.atlas / page).is_file() else None

    def _top(self, layer: str) -> Any:
        """The :class:`deconvviz.TopActivations` of ``layer`` (from the atlas or the scan)."""
        if layer in self._tops:
            return self._tops[layer]
        if self.atlas is not None:
            entry = self._atlas.get(layer)
            if entry is None:
                raise InputError(
                    f"the atlas has no layer {layer!r}; its layers: {', '.join(self._atlas)}"
                )
            units = entry["units"]
            values = torch.tensor(
                [[-math.inf if v is None else float(v) for v in u["values"]] for u in units],
                dtype=torch.float64,
            )
            indices = torch.tensor([u["indices"] for u in units], dtype=torch.long)
            positions = torch.tensor([u["positions"] for u in units], dtype=torch.long)
            x = torch.zeros((1, *self.input_shape), dtype=self.dtype, device=self.device)
            rf = self.dn().receptive_field(layer, x.shape)
            size = (self.input_shape[1], self.input_shape[2])
            boxes = input_boxes(rf, positions, size)
            top = TopActivations(layer, values, indices, positions, boxes, size, rf)
        else:
            scan = self.scan
            if self._scan_result is None:
                if scan is not None and scan.error:
                    raise InputError(f"the background scan failed: {scan.error}")
                done, total = (scan.done, scan.total) if scan else (0, len(self.dataset))
                raise NotReady(f"scanning {done}/{total}")
            top = self._scan_result[layer]
        self._tops[layer] = top
        return top

    def topk(self, layer: str, unit: Any, rule: str = "deconvnet") -> dict[str, Any]:
        """``GET /api/topk``: the unit's top-k dataset images, their patches and projections
        (one strip PNG: row 0 the patches, row 1 the projections)."""
        info = self.layer(layer)
        c = self.unit(info, unit)
        self.dn(rule)  # checks the rule
        top = self._top(info.name)
        keep = [j for j in range(top.k) if int(top.indices[c, j]) >= 0]
        entries = [
            {
                "image": int(top.indices[c, j]),
                "value": float(top.values[c, j]),
                "position": [int(v) for v in top.positions[c, j]],
                "box": [int(v) for v in top.boxes[c, j]],
            }
            for j in keep
        ]
        out: dict[str, Any] = {
            "layer": info.name,
            "unit": c,
            "rule": rule,
            "source": "atlas" if self.atlas else "scan",
            "dead": not (float(top.values[c, 0]) > 0),
            "top": entries,
            "strip": None,
            "atlas_page": self.atlas_page(info.name, c),
        }
        if keep:
            proj = project_top(self.model, self.dataset, top, rule, channels=[c], progress=False)
            th, tw = proj.reconstructions.shape[-2:]
            cin = proj.patches.shape[2]
            strip = torch.ones((cin, 2 * th + 2, len(keep) * (tw + 2) - 2))
            for n, j in enumerate(keep):
                x0 = n * (tw + 2)
                strip[:, :th, x0 : x0 + tw] = _display_input(proj.patches[0, j].float())
                strip[:, th + 2 :, x0 : x0 + tw] = _display_projection(
                    proj.reconstructions[0, j].float()
                )
            out["strip"] = _data_url(_png(_to_uint8(strip)))
            out["tile"] = [int(th), int(tw)]
        return out

    # ------------------------------------------------------------------ occlusion

    def occlusion_plan(
        self,
        spec: Any,
        target: str = "class",
        layer: str | None = None,
        unit: Any = None,
        cls: Any = None,
        size: int | None = None,
        stride: int | None = None,
    ) -> dict[str, Any]:
        """What ``GET /api/occlusion`` will measure: the occluder grid and the target (the
        predicted class, a given class, or a unit's total rectified activation)."""
        _, _, h, w = (1, *self.input_shape)
        side = min(h, w)
        size = max(2, side // 4) if size is None else int(size)
        stride = max(1, size // 4) if stride is None else int(stride)
        for what, v in (("size", size), ("stride", stride)):
            if not 1 <= v <= side:
                raise InputError(
                    f"{what} must lie in 1..{side} (the image side, in pixels), got {v}"
                )
        x = self.image(spec)
        plan: dict[str, Any] = {"image": str(spec), "size": size, "stride": stride, "x": x}
        if target == "class":
            with torch.no_grad():
                probs = torch.softmax(self.model(x).float(), dim=1)[0]
            c = int(probs.argmax()) if cls in (None, "") else self._class(cls)
            if c >= probs.numel():
                raise InputError(
                    f"class {c} is not an output of the model (0..{probs.numel() - 1})"
                )
            plan.update(target="class", cls=c, name=self._class_name(c), base=float(probs[c]))
        elif target == "unit":
            info = self.layer(layer)
            u = self.unit(info, unit)
            base = self.feature_maps(spec, info.name)[u].clamp(min=0).sum()
            plan.update(target="unit", layer=info.name, unit=u, base=float(base))
        else:
            raise InputError(f"unknown occlusion target {target!r}; valid targets: class, unit")
        plan["ys"] = occluder_starts(h, size, stride).tolist()
        plan["xs"] = occluder_starts(w, size, stride).tolist()
        return plan

    def occlusion_row(self, plan: dict[str, Any], r: int) -> list[float]:
        """Row ``r`` of the occlusion map: the target's value with the occluder at each column
        (grey fill, 0.5, as :func:`deconvviz.occlusion` uses by default)."""
        x: Tensor = plan["x"]
        size, y0 = plan["size"], plan["ys"][r]
        h, w = x.shape[-2:]
        xs = torch.tensor(plan["xs"], device=x.device)
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        in_rows = (rows >= y0) & (rows < y0 + size)
        in_cols = (cols[None, :] >= xs[:, None]) & (cols[None, :] < xs[:, None] + size)
        mask = (in_rows[None, :, None] & in_cols[:, None, :]).unsqueeze(1)
        batch = torch.where(mask, torch.full_like(x, 0.5), x)
        with torch.no_grad():
            if plan["target"] == "class":
                probs = torch.softmax(self.model(batch).float(), dim=1)
                vals = probs[:, plan["cls"]]
            else:
                out = self.dn().layer_output(batch, plan["layer"])[:, plan["unit"]]
                vals = out.clamp(min=0).flatten(1).sum(dim=1)
        return [float(v) for v in vals]

    # ------------------------------------------------------------------ background scan

    def start_scan(
        self,
        idle: threading.Event,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> None:
        """Scan the dataset for every layer's top-k in a background thread, on a copy of the
        model, reading only while ``idle`` is set; resumable from ``cache_dir`` (a state file per
        model, data and layers) when given and writable."""
        if self.atlas is not None or self._thread is not None:
            return
        self.scan = ScanProgress(total=len(self.dataset))
        state = None
        if cache_dir is not None:
            key = hashlib.sha256(
                repr(
                    (
                        type(self.model).__name__,
                        repr(self.dataset)[:500],
                        len(self.dataset),
                        list(self.layers),
                        self.k,
                    )
                ).encode()
            ).hexdigest()[:20]
            folder = Path(cache_dir) / key
            try:
                folder.mkdir(parents=True, exist_ok=True)
                state = folder / "scan-state.pt"
            except OSError as exc:
                warnings.warn(
                    f"cannot write the scan cache in {folder} ({exc.strerror}); the scan will "
                    "not be resumable (pass --cache-dir a writable folder)",
                    stacklevel=2,
                )
        self.scan.state = None if state is None else str(state)
        self._thread = threading.Thread(
            target=self._run_scan,
            args=(idle, state, batch_size, progress),
            name="deconvviz-scan",
            daemon=True,
        )
        self._thread.start()

    def _run_scan(
        self, idle: threading.Event, state: Path | None, batch_size: int, bar: bool
    ) -> None:
        progress = self.scan
        assert progress is not None
        try:
            model = copy.deepcopy(self.model)
            for attempt in (0, 1):
                data = _Paced(self.dataset, idle, progress)
                try:
                    result = scan(
                        model,
                        data,
                        list(self.layers),
                        self.k,
                        batch_size=batch_size,
                        progress=bar,
                        state=state,
                        save_every=4,
                        resume=state is not None,
                    )
                    break
                except CheckpointError:  # a stale or damaged state: start over once
                    if attempt or state is None:
                        raise
                    state.unlink(missing_ok=True)
            self._scan_result = result
            progress.done = progress.total
            progress.finished = True
        except _Stop:
            return
        except Exception as exc:  # shown on the page; the server keeps running
            progress.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"

    def wait_scan(self, timeout: float | None = None) -> bool:
        """Wait for the background scan; True when it has finished."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._scan_result is not None or self.atlas is not None

    def close(self) -> None:
        """Stop the background scan (its state is saved) and release the engines."""
        if self.scan is not None:
            self.scan.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for dn in self._dns.values():
            dn.detach()
        self._dns.clear()
