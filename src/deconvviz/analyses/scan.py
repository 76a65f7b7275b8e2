"""One pass over a dataset for the top-k activations of every unit of every chosen layer.

:func:`scan` runs each batch through the model **once**, with forward hooks on the chosen layers
(the pass stops after the last of them), reduces each image's feature map to its strongest
activation per channel, and keeps per layer and channel a running top-``k`` from distinct images:
``O(layers x channels x k)`` memory, on the model's device.

Exactness. Each image contributes one candidate per channel: its maximum, at the *lowest* flat
position among equal maxima (``torch.max``'s documented choice). Candidates are ordered by
(value descending, image index ascending) with a stable sort, so ties between images are broken
by the lowest dataset index. The selection therefore never depends on the batch size, on where a
scan was interrupted and resumed, or on how the dataset was sharded across processes: the
shards' top-``k`` lists, concatenated and re-selected with the same order, *are* the global
top-``k``. NaN activations count as ``-inf``. One caveat belongs to the forward pass, not the
selection: float kernels (float32 convolutions on CPU, matrix products) may round an image's
activations differently in a batch of another size, in the last bits. Processes therefore shard
the data in whole batches and resumed scans restart at a batch boundary, so that every image is
computed in the same batch as in one uninterrupted process: results are then equal bit for bit
(tested); with another ``batch_size`` they can differ only in those last bits.

Resumable. With ``state=PATH`` the scan state (the top-``k`` tensors, the number of images done
and a digest of the model, the layers, ``k`` and the data) is written atomically every
``save_every`` batches, on Ctrl-C and at the end; ``resume=True`` continues from it and refuses a
state made for another model or dataset.

Distributed. Inside a ``torch.distributed`` process group (``torchrun``), each rank scans a
contiguous block of the dataset and the ranks' states are all-gathered and re-selected, so every
rank returns the same result as one process would.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, Subset

from deconvviz.analyses.topk import (
    FewImagesWarning,
    TopActivations,
    TopProjections,
    few_images_message,
    input_boxes,
    project_top,
)
from deconvviz.base._io import write_bytes
from deconvviz.base._util import DEFAULT_MAX_MEMORY, autocast, check_precision, items_within, spread
from deconvviz.base.checks import (
    Resolved,
    batch_images,
    check_positive_int,
    default_layers,
    resolve_model,
    split_call,
)
from deconvviz.base.errors import CheckpointError, InputError, LayerError
from deconvviz.engine.deconvnet import Deconvnet
from deconvviz.engine.receptive import ReceptiveField
from deconvviz.engine.rules import RULES
from deconvviz.engine.tracer import Tracer, eval_mode

__all__ = ["Scan", "layer_parts", "project_layer", "scan", "select_top", "top_activations"]

_MISSING = torch.iinfo(torch.int64).max  # image index of an empty slot: sorts after every image
_STATE_VERSION = 2


@dataclass(frozen=True)
class Scan:
    """The result of :func:`scan`: per layer, a :class:`deconvviz.TopActivations`.

    Attributes:
        tops: ``{layer: TopActivations}`` in the order the layers were given.
        images: number of images scanned (over all processes).
        k: activations kept per channel.
    """

    tops: dict[str, Any]
    images: int
    k: int

    def __getitem__(self, layer: str) -> Any:
        try:
            return self.tops[layer]
        except KeyError:
            raise LayerError(
                f"layer {layer!r} was not scanned; scanned: {', '.join(self.tops)}"
            ) from None

    @property
    def layers(self) -> list[str]:
        return list(self.tops)


# ---------------------------------------------------------------------- exact selection


def select_top(values: Tensor, index: Tensor, pos: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best candidates per row by (value desc, image index asc), exactly.

    Args:
        values: ``[C, M]`` candidate values (NaN counts as ``-inf``).
        index: ``[C, M]`` image indices (distinct per row; ``_MISSING`` for empty slots).
        pos: ``[C, M]`` flat positions in the feature map.
        k: how many to keep (rows with fewer candidates are padded with empty slots).

    Returns:
        ``([C, k], [C, k], [C, k])`` values, indices and positions, best first.
    """
    values = torch.nan_to_num(values, nan=-math.inf)
    if values.shape[1] < k:
        pad = k - values.shape[1]
        values = torch.cat([values, values.new_full((values.shape[0], pad), -math.inf)], 1)
        index = torch.cat([index, index.new_full((index.shape[0], pad), _MISSING)], 1)
        pos = torch.cat([pos, pos.new_zeros((pos.shape[0], pad))], 1)
    # An image enters a row at most once, by construction: order by (image index asc, value
    # desc) and keep the first candidate of each image (the others become empty slots).
    # Whatever is fed twice (a batch merged again), the result cannot hold duplicates.
    order = values.argsort(dim=1, descending=True, stable=True)
    values, index, pos = values.gather(1, order), index.gather(1, order), pos.gather(1, order)
    order = index.argsort(dim=1, stable=True)
    values, index, pos = values.gather(1, order), index.gather(1, order), pos.gather(1, order)
    again = torch.zeros_like(index, dtype=torch.bool)
    again[:, 1:] = (index[:, 1:] == index[:, :-1]) & (index[:, 1:] != _MISSING)
    values = values.masked_fill(again, -math.inf)
    index = index.masked_fill(again, _MISSING)
    pos = pos.masked_fill(again, 0)
    order = index.argsort(dim=1, stable=True)  # empty slots last
    values, index, pos = values.gather(1, order), index.gather(1, order), pos.gather(1, order)
    # Then by value (descending), stably: equal values keep the image order, so ties go to the
    # lowest image index, whatever order the candidates came in.
    order = values.argsort(dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, order), index.gather(1, order), pos.gather(1, order)


_Top = tuple[Tensor, Tensor, Tensor]  # a layer's running (values, index, pos), each [C, k]


def _candidates(out: Tensor) -> tuple[Tensor, Tensor]:
    """A batch's layer output ``[B, C, H, W]`` or ``[B, C]`` as per-image candidates
    ``([B, C] values, [B, C] flat positions)``: each image's maximum per channel."""
    out = out.detach()
    if out.dim() == 4:
        return out.flatten(2).max(dim=2)  # first maximum on ties
    if out.dim() == 2:
        return out, torch.zeros(out.shape, dtype=torch.long, device=out.device)
    raise LayerError(
        f"a scanned layer output has shape {tuple(out.shape)}; only [N, C, H, W] feature "
        "maps and [N, C] vectors can be scanned"
    )


def _merge(top: _Top, out: Tensor, images: Tensor, k: int) -> _Top:
    """``top`` with a batch's layer output merged in (images: its ``[B]`` dataset indices).
    Pure: the running state changes only when the whole batch is committed."""
    val, where = _candidates(out)
    val = val.to(top[0].dtype)  # bfloat16 under autocast: kept in the model's dtype
    idx = images.to(out.device).unsqueeze(0).expand(val.shape[1], -1)
    return select_top(
        torch.cat([top[0], val.t()], 1),
        torch.cat([top[1], idx], 1),
        torch.cat([top[2], where.t()], 1),
        k,
    )


@dataclass(frozen=True)
class _Committed:
    """Everything a scan has taken in, replaced whole (one attribute store) after each batch,
    so that Ctrl-C at any instant sees either all layers with the batch counted or none."""

    done: int  # images of this process's share scanned
    tops: Mapping[str, _Top]  # layer -> running top-k
    batches: tuple[str, ...]  # sha256 of each scanned batch's images, in order


# ---------------------------------------------------------------------- data


def _is_dataset(data: Any) -> bool:
    """A dataset of items (not a list or tuple, which are read as lists of batches)."""
    if isinstance(data, (list, tuple, Tensor)):
        return False
    return isinstance(data, Dataset) or (hasattr(data, "__len__") and hasattr(data, "__getitem__"))


def _shard(n: int, rank: int, world: int, batch: int) -> range:
    """Rank ``rank``'s contiguous block of ``range(n)``, in whole batches: every image is then
    computed in the same batch as in a one-process scan (float kernels may round differently
    for other batch compositions; this keeps the values bit for bit equal)."""
    batches = -(-n // batch)
    lo, hi = batches * rank // world, batches * (rank + 1) // world
    return range(min(n, lo * batch), min(n, hi * batch))


def _batches(
    data: Any,
    batch_size: int,
    indices: Sequence[int] | None,
    start: int,
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(images, dataset indices)`` batches; ``indices``: the images to read (all when None),
    from position ``start`` of that list."""
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, RandomSampler):
            raise InputError(
                "the DataLoader shuffles, so image indices would not refer to dataset positions; "
                "build it with shuffle=False"
            )
        if indices is None and start == 0:
            seen = 0
            for batch in data:
                xb = batch_images(batch)
                yield xb, torch.arange(seen, seen + xb.shape[0])
                seen += xb.shape[0]
            return
        if not isinstance(data.sampler, SequentialSampler):
            raise InputError(
                "resuming or sharding a scan needs a DataLoader with a sequential sampler; pass "
                "the dataset itself instead"
            )
        bs = data.batch_size or batch_size
        dataset = data.dataset
        loader_kw: dict[str, Any] = {
            "num_workers": data.num_workers,
            "collate_fn": data.collate_fn,
            "pin_memory": data.pin_memory,
        }
    elif _is_dataset(data):
        bs, dataset, loader_kw = batch_size, data, {}
    else:
        if indices is not None:
            raise InputError(
                "sharding a scan over processes needs a Dataset or a DataLoader, not a plain "
                "iterable of batches"
            )
        seen = 0
        for batch in data:
            xb = batch_images(batch)
            b = xb.shape[0]
            if seen + b > start:
                lo = max(0, start - seen)
                yield xb[lo:], torch.arange(seen + lo, seen + b)
            seen += b
        return
    todo = list(indices if indices is not None else range(len(dataset)))[start:]  # type: ignore[arg-type]
    loader: DataLoader[Any] = DataLoader(
        Subset(dataset, todo), batch_size=bs, shuffle=False, **loader_kw
    )
    done = 0
    for batch in loader:
        xb = batch_images(batch)
        b = xb.shape[0]
        yield xb, torch.tensor(todo[done : done + b], dtype=torch.long)
        done += b


def _batch_size(data: Any, default: int) -> int:
    if isinstance(data, DataLoader):
        return data.batch_size or default
    return default


def _length(data: Any) -> int | None:
    if isinstance(data, DataLoader):
        try:
            return len(data.dataset)  # type: ignore[arg-type]
        except TypeError:
            return None
    if _is_dataset(data):
        return len(data)
    return None


# ---------------------------------------------------------------------- layers


def _choose_layers(model: nn.Module, layers: str | Sequence[str] | None) -> list[str]:
    if layers is None or layers == "conv":
        return default_layers(model, "scan")
    if isinstance(layers, str):
        layers = [layers]
    out: list[str] = []
    for layer in layers:
        if layer not in out:
            out.append(layer)
    if not out:
        raise LayerError("layers is empty; name at least one layer, or use 'conv'")
    return out


def _digest(
    model: nn.Module,
    layers: Sequence[str],
    k: int,
    data: Any,
    n: int | None,
    rank: int,
    world: int,
    batch: int,
    precision: str = "fp32",
) -> str:
    """A digest of what a scan state depends on: weights, layers, k, batch size, precision, data
    size and order, and (for datasets read from files) every file's path, size and modification
    time.
    The images' contents are checked apart (:func:`_batch_digest`)."""
    h = hashlib.sha256()
    h.update(repr((list(layers), k, n, rank, world, batch, precision, _STATE_VERSION)).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    files = _files(data.dataset if isinstance(data, DataLoader) else data)
    if files is not None:
        for f in files[: n if n is not None else len(files)]:
            try:
                st = os.stat(f)
                h.update(repr((os.fspath(f), st.st_size, st.st_mtime_ns)).encode())
            except OSError:
                h.update(repr((os.fspath(f), None)).encode())
    return h.hexdigest()


def _files(dataset: Any) -> list[Any] | None:
    """The files a dataset reads, in item order, when it says (``files``, or torchvision's
    ``samples``/``imgs`` of ``(path, label)``); None otherwise."""
    files = getattr(dataset, "files", None)
    if isinstance(files, list) and all(isinstance(f, (str, os.PathLike)) for f in files):
        return files
    samples = getattr(dataset, "samples", None) or getattr(dataset, "imgs", None)
    if isinstance(samples, list) and all(
        isinstance(x, tuple) and x and isinstance(x[0], (str, os.PathLike)) for x in samples
    ):
        return [x[0] for x in samples]
    return None


def _batch_digest(xb: Tensor) -> str:
    """sha256 of a batch of images exactly as read (shape, dtype and every byte)."""
    h = hashlib.sha256(repr((tuple(xb.shape), str(xb.dtype))).encode())
    h.update(xb.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- the scan


def _world() -> tuple[int, int, Any]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), dist
    return 0, 1, None


def scan(
    model: nn.Module,
    data: Any,
    layers: str | Sequence[str] | None = "conv",
    k: int = 9,
    *,
    batch_size: int = 256,
    max_images: int | None = None,
    progress: bool = True,
    state: str | os.PathLike[str] | None = None,
    save_every: int = 50,
    resume: bool = False,
    distributed: bool | None = None,
    precision: str = "fp32",
) -> Scan:
    """Top-``k`` activations of every channel of every chosen layer, in one pass over the data.

    Args:
        model: the network (run in eval mode; its flags are restored).
        data: a Dataset (items are images or ``(image, label)``), an unshuffled DataLoader, or
            any iterable of batches in dataset order, a list of batches included (no resume or
            sharding then).
        layers: ``"conv"`` (every ``Conv2d``), a layer name or a list of names
            (``named_modules()`` spelling; ``"name:1"`` for the second call of a shared module).
        k: activations kept per channel, from distinct images.
        batch_size: images per forward pass (for a Dataset; a DataLoader keeps its own).
        max_images: scan only ``N`` images of a Dataset or DataLoader, spread evenly over it
            (every ``len/N``-th: a dataset stored class by class is sampled across its classes).
        progress: show a progress bar (images/s and ETA; rank 0 only).
        state: file for the resumable scan state (one per rank: ``PATH.rank{r}of{w}`` when
            distributed).
        save_every: write the state every this many batches (and on Ctrl-C, and at the end).
        resume: continue from ``state`` when it exists (refused when it was made for another
            model, layers, ``k`` or dataset).
        distributed: shard over the ``torch.distributed`` process group; ``None``: when one is
            initialised with more than one process.
        precision: ``"fp32"`` (the model's own dtype; exact) or ``"bf16"`` (bfloat16 autocast:
            faster where the hardware has bf16; values about 1% off, so near-equal entries of a
            top-k can swap).

    Returns:
        A :class:`Scan`; ``result[layer]`` is a :class:`deconvviz.TopActivations` (values
        ``-inf`` and indices ``-1`` where there were fewer than ``k`` images). Every rank gets
        the same result.

    Example:
        >>> res = deconvviz.scan(model, test_set, "conv", k=9)   # doctest: +SKIP
        >>> res["layer1.0.conv1"].indices.shape                  # doctest: +SKIP
        torch.Size([16, 9])
    """
    door = _check_scan_args(model, layers, k, batch_size, max_images, save_every, precision)
    return scan_resolved(
        door,
        data,
        k,
        batch_size=batch_size,
        max_images=max_images,
        progress=progress,
        state=state,
        save_every=save_every,
        resume=resume,
        distributed=distributed,
    )


def scan_resolved(
    door: Resolved,
    data: Any,
    k: int,
    *,
    batch_size: int = 256,
    max_images: int | None = None,
    progress: bool = True,
    state: str | os.PathLike[str] | None = None,
    save_every: int = 50,
    resume: bool = False,
    distributed: bool | None = None,
) -> Scan:
    """:func:`scan` with its arguments already checked at the caller's door (``door``: the
    model, its device and dtype, the layers and the precision); checks none of them again."""
    model, names = door.model, list(door.layers)
    plan = _plan(data, batch_size, max_images, distributed, resume)
    bs = _batch_size(data, batch_size)
    scanner = _Scanner(door, k)
    with _State(
        state,
        plan,
        digest=lambda: _digest(
            model, names, k, data, plan.total, plan.rank, plan.world, bs, scanner.precision
        ),
    ) as saved:
        if resume:
            loaded = saved.load(names, k, plan, bs, scanner.device)
            if loaded is not None:
                _verify_images(data, batch_size, plan, loaded, saved.path)
                scanner.committed = loaded
                if loaded.done and plan.rank == 0:
                    total = len(plan.shard) if plan.shard is not None else plan.total
                    print(
                        f"resuming from {loaded.done} of {total} images (saved scan state)",
                        file=sys.stderr,
                    )
        _scan_batches(scanner, data, batch_size, plan, saved, save_every, progress)
    return _result(scanner, plan)


def _check_scan_args(
    model: nn.Module,
    layers: str | Sequence[str] | None,
    k: int,
    batch_size: int,
    max_images: int | None,
    save_every: int,
    precision: str,
) -> Resolved:
    """:func:`scan`'s door: every argument checked once, the model resolved."""
    model_only = resolve_model(model)
    check_positive_int("k", k)
    check_positive_int("batch_size", batch_size)
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise InputError(f"max_images must be a positive integer, got {max_images!r}")
    if save_every < 1:
        raise InputError(f"save_every must be a positive integer, got {save_every!r}")
    names = _choose_layers(model, layers)
    return replace(model_only, layers=tuple(names), precision=check_precision(precision))


@dataclass(frozen=True)
class _Plan:
    """Which images this process scans: ``shard`` (all, read in order, when None) of ``total``
    (None: unknown, a plain iterable), as rank ``rank`` of ``world`` (``dist``: the
    ``torch.distributed`` module, or None in one process)."""

    rank: int
    world: int
    dist: Any
    total: int | None
    shard: Sequence[int] | None


def _plan(
    data: Any, batch_size: int, max_images: int | None, distributed: bool | None, resume: bool
) -> _Plan:
    rank, world, dist = _world()
    if distributed is None:
        distributed = world > 1
    if not distributed:
        rank, world, dist = 0, 1, None
    length = total = _length(data)
    if total is not None and max_images is not None:
        total = min(total, max_images)
    if distributed and total is None:
        raise InputError(
            "a distributed scan needs a Dataset or a DataLoader (to shard it), not a plain "
            "iterable of batches"
        )
    if total == 0:
        raise InputError("the dataset is empty; give one with at least one image")
    shard: Sequence[int] | None = None
    if distributed or max_images is not None or resume:
        if total is None:
            if max_images is not None:
                raise InputError("max_images needs a Dataset or a DataLoader (with a length)")
            raise InputError("resume needs a Dataset or a DataLoader, not a plain iterable")
        shard = _shard(total, rank, world, _batch_size(data, batch_size))
        picked = spread(length or 0, max_images)
        if picked is not None:  # max_images spread over the dataset, not its first images
            shard = [picked[p] for p in shard]
    if isinstance(data, DataLoader) and isinstance(data.sampler, RandomSampler):
        raise InputError(
            "the DataLoader shuffles, so image indices would not refer to dataset positions; "
            "build it with shuffle=False"
        )
    return _Plan(rank, world, dist, total, shard)


_STATE_MAGIC = b"deconvviz scan state"


class _State:
    """The resumable scan state file (none when ``state`` is None), held under a lock
    (``PATH.lock``) while the scan runs.

    The file is one header line (``deconvviz scan state <version> sha256 <hex>``) and then the
    ``torch.save`` bytes of the state, whose sha256 the header holds: a flipped bit anywhere is
    refused before anything is read from it."""

    def __init__(
        self, state: str | os.PathLike[str] | None, plan: _Plan, digest: Callable[[], str]
    ) -> None:
        self.path: Path | None = None
        self.digest = ""
        self._stack = ExitStack()
        if state is not None:
            self.path = Path(state)
            if plan.world > 1:
                self.path = self.path.with_name(f"{self.path.name}.rank{plan.rank}of{plan.world}")
            self.digest = digest()

    def __enter__(self) -> _State:
        if self.path is not None:
            from deconvviz.base._io import lock, remove_stale_temporaries

            self._stack.enter_context(
                lock(self.path.with_name(self.path.name + ".lock"), f"the scan state {self.path}")
            )
            # a kill -9 during an earlier save leaves its temporary file: ours to remove now
            remove_stale_temporaries(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _damaged(self, why: str) -> CheckpointError:
        return CheckpointError(
            f"the scan state {self.path} is damaged or inconsistent ({why}); delete it to start "
            "over"
        )

    def load(
        self, names: list[str], k: int, plan: _Plan, batch: int, device: torch.device
    ) -> _Committed | None:
        """The saved state, checked through (checksum, digest, every value's consistency);
        None when there is none."""
        if self.path is None or not self.path.exists():
            return None
        saved = _read_state(self.path)
        if not isinstance(saved, dict) or saved.get("digest") != self.digest:
            raise CheckpointError(
                f"the scan state {self.path} was made for another model, layers, k, batch size "
                "or dataset (or the dataset's files changed); delete it or drop --resume to "
                "start over"
            )
        try:
            return self._check(saved, names, k, plan, batch, device)
        except CheckpointError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise self._damaged(f"{type(exc).__name__}: {exc}") from exc

    def _check(
        self,
        saved: dict[str, Any],
        names: list[str],
        k: int,
        plan: _Plan,
        batch: int,
        device: torch.device,
    ) -> _Committed:
        """Every claim of the state, checked: done at a batch boundary of this share, one
        image digest per batch, per layer ``[C, k]`` tensors whose indices are distinct images
        already scanned, empty slots exactly where fewer than k images were seen, and the
        (value desc, index asc) order :func:`select_top` gives."""
        assert plan.shard is not None
        share = plan.shard
        done, batches, layers = saved["done"], saved["batches"], saved["layers"]
        if not isinstance(done, int) or not 0 <= done <= len(share):
            raise self._damaged(f"{done!r} images done of a share of {len(share)}")
        if done % batch and done != len(share):
            raise self._damaged(f"{done} images done is not a whole number of batches")
        if not isinstance(batches, list) or len(batches) != -(-done // batch):
            raise self._damaged("the image digests do not match the images done")
        tops: dict[str, _Top] = {}
        if done == 0:
            return _Committed(0, {}, ())
        for name in names:
            st = layers[name]
            v, i, p = st["values"], st["index"], st["pos"]
            if not all(isinstance(t, Tensor) and t.dim() == 2 for t in (v, i, p)):
                raise self._damaged(f"layer {name}: not [C, k] tensors")
            if not (v.shape == i.shape == p.shape) or v.shape[1] != k or v.shape[0] < 1:
                raise self._damaged(f"layer {name}: shapes {tuple(v.shape)}, {tuple(i.shape)}")
            if not v.is_floating_point() or i.dtype != torch.long or p.dtype != torch.long:
                raise self._damaged(f"layer {name}: wrong dtypes")
            missing = i == _MISSING
            real = ~missing
            scanned = torch.as_tensor(list(share[:done]), dtype=torch.long, device=i.device)
            if not bool(torch.isin(i[real], scanned).all()):
                raise self._damaged(f"layer {name}: an image index outside the images done")
            if bool((real.sum(1) != min(k, done)).any()):
                raise self._damaged(f"layer {name}: empty slots where images were seen")
            if bool(v[missing].ne(-math.inf).any()) or bool(v.isnan().any()):
                raise self._damaged(f"layer {name}: a value without an image, or NaN")
            if bool((p < 0).any()) or bool(p[missing].ne(0).any()):
                raise self._damaged(f"layer {name}: a negative position")
            again = select_top(v, i, p, k)
            if not all(torch.equal(x, y) for x, y in zip(again, (v, i, p), strict=True)):
                raise self._damaged(f"layer {name}: values out of order or an image twice")
            tops[name] = (v.to(device), i.to(device), p.to(device))
        return _Committed(done, tops, tuple(str(b) for b in batches))

    def save(self, committed: _Committed) -> None:
        if self.path is None:
            return
        import io

        layers = {
            name: {"values": t[0].cpu(), "index": t[1].cpu(), "pos": t[2].cpu()}
            for name, t in committed.tops.items()
        }
        state = {
            "version": _STATE_VERSION,
            "digest": self.digest,
            "done": committed.done,
            "batches": list(committed.batches),
            "layers": layers,
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        payload = buf.getvalue()
        head = b"%s %d sha256 %s\n" % (
            _STATE_MAGIC,
            _STATE_VERSION,
            hashlib.sha256(payload).hexdigest().encode(),
        )
        write_bytes(self.path, head + payload)


def _read_state(path: Path) -> Any:
    """The contents of a scan state file, after its header and checksum are checked."""
    import io

    def damaged(why: str) -> CheckpointError:
        return CheckpointError(
            f"the scan state {path} is damaged or inconsistent ({why}); delete it to start over"
        )

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(
            f"cannot read the scan state {path} ({exc.strerror or exc}); check the path"
        ) from exc
    head, _, payload = raw.partition(b"\n")
    parts = head.split(b" ")
    if not head.startswith(_STATE_MAGIC) or len(parts) != 6 or parts[4] != b"sha256":
        raise CheckpointError(
            f"{path} is not a scan state of this deconvviz version (an older one, or another "
            "file); delete it to start over"
        )
    if hashlib.sha256(payload).hexdigest().encode() != parts[5]:
        raise damaged("its checksum does not match its contents")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise damaged(f"unreadable: {type(exc).__name__}") from exc


def _verify_images(
    data: Any, batch_size: int, plan: _Plan, loaded: _Committed, path: Path | None
) -> None:
    """Check that the images a resumed state has taken in are still the same: every batch's
    sha256 against the state's, read again; for a dataset read from files (whose paths, sizes
    and modification times the digest already holds) a sample of batches (first, last and six
    between)."""
    assert plan.shard is not None
    n = len(loaded.batches)
    if n == 0:
        return
    bs = _batch_size(data, batch_size)
    dataset = data.dataset if isinstance(data, DataLoader) else data
    which = range(n)
    if _files(dataset) is not None and n > 8:
        which = sorted({0, n - 1, *(round(j * (n - 1) / 7) for j in range(1, 7))})  # type: ignore[assignment]
    share = plan.shard
    for b in which:
        lo, hi = b * bs, min((b + 1) * bs, loaded.done)
        got = [x for x, _ in _batches(data, batch_size, share[lo:hi], 0)]
        xb = got[0] if len(got) == 1 else torch.cat(got)
        if _batch_digest(xb) != loaded.batches[b]:
            raise CheckpointError(
                f"the images of the scan state {path} changed (images {share[lo]} to "
                f"{share[hi - 1]} differ from those scanned); delete the state or drop --resume "
                "to start over"
            )


class _Scanner:
    """Every layer's running top-``k``, fed by a :class:`Tracer` on the layers' modules; its
    state is :attr:`committed`, replaced whole after each batch."""

    def __init__(self, door: Resolved, k: int) -> None:
        self.model, self.names, self.k = door.model, list(door.layers), k
        self.precision, self.device, self.dtype = door.precision, door.device, door.dtype
        self.committed = _Committed(0, {}, ())
        self.pending: dict[str, _Top] = {}
        self.widths: dict[str, int] = {}
        self.rfs: dict[str, ReceptiveField | None] = {}
        self.size: tuple[int, int] | None = None
        self.wanted: dict[str, dict[int, str]] = {}  # module name -> {call: layer}
        self.tracer: Tracer | None = None
        self.images = torch.empty(0, dtype=torch.long)
        self.left = 0

    def setup(self, dn: Deconvnet, xb: Tensor) -> Tracer:
        """Learn every layer's geometry from one traced probe pass and start empty states (or
        check loaded ones against it); returns the tracer (to enter) on the layers' modules."""
        tops = dict(self.committed.tops)
        for layer, geo in zip(self.names, dn.layer_geometries(xb, self.names), strict=True):
            self.rfs[layer] = geo.receptive_field
            shape = tuple(int(s) for s in geo.out_shape)
            self.widths[layer] = shape[-1] if len(shape) == 3 else 1
            c, cells = shape[0], math.prod(shape[1:])
            if layer not in tops:
                tops[layer] = (
                    xb.new_full((c, self.k), -math.inf),
                    torch.full((c, self.k), _MISSING, dtype=torch.long, device=xb.device),
                    torch.zeros((c, self.k), dtype=torch.long, device=xb.device),
                )
            elif tops[layer][0].shape[0] != c or bool((tops[layer][2] >= cells).any()):
                raise CheckpointError(
                    f"the scan state does not fit layer {layer} ({c} channels of {cells} "
                    "positions); delete it to start over"
                )
            else:
                v = tops[layer][0].to(xb.dtype)
                tops[layer] = (v, tops[layer][1], tops[layer][2])
            mod, call = split_call(layer)
            self.wanted.setdefault(mod, {})[call or 0] = layer
        self.committed = _Committed(self.committed.done, tops, self.committed.batches)
        self.size = int(xb.shape[-2]), int(xb.shape[-1])
        modules = dict(self.model.named_modules())
        self.tracer = Tracer(self.model, {modules[mod]: mod for mod in self.wanted})
        self.tracer.on_return(self._on_return)
        return self.tracer

    def _on_return(self, name: str, call: int, module: nn.Module, args: Any, out: Any) -> None:
        layer = self.wanted[name].get(call)
        if layer is None:
            return
        self.pending[layer] = _merge(self.committed.tops[layer], out, self.images, self.k)
        self.left -= 1
        if self.left == 0:
            Tracer.stop()

    def add(self, xb: Tensor, idx: Tensor, digest: str) -> None:
        """Run one batch (images ``xb``, dataset indices ``idx``, ``digest`` of the images as
        read) and commit it: every layer's new top-k and the count, in one store."""
        assert self.tracer is not None
        if self.size != tuple(xb.shape[-2:]):
            raise InputError(
                f"images change size within the dataset ({self.size} then "
                f"{tuple(xb.shape[-2:])}); resize them to one size"
            )
        self.images, self.left, self.pending = idx, len(self.names), {}
        with autocast(xb.device, self.precision):
            self.tracer.run(xb)
        if self.left != 0:
            raise LayerError(
                "the forward pass did not reach every scanned layer; scan layers the "
                "model's forward calls"
            )
        c = self.committed
        self.committed = _Committed(
            c.done + int(xb.shape[0]), {**c.tops, **self.pending}, (*c.batches, digest)
        )


def _scan_batches(
    scanner: _Scanner,
    data: Any,
    batch_size: int,
    plan: _Plan,
    saved: _State,
    save_every: int,
    progress: bool,
) -> None:
    """Scan this process's images from the committed count on (saving the state every
    ``save_every`` batches, on Ctrl-C and at the end). A batch counts only once every layer has
    taken it (:meth:`_Scanner.add`), so the state saved on Ctrl-C is always a whole one."""
    from tqdm.auto import tqdm

    n = len(scanner.names)
    bar = tqdm(
        total=len(plan.shard) if plan.shard is not None else plan.total,
        initial=scanner.committed.done,
        desc=f"scanning {n} layer{'s' * (n > 1)}",
        disable=not progress or plan.rank != 0,
        unit="img",
        leave=False,
    )
    since_save = 0
    try:
        with (
            Deconvnet(scanner.model, RULES["deconvnet"], warn=False) as dn,  # no rule used
            eval_mode(scanner.model),
            ExitStack() as hooks,
        ):
            for xb, idx in _batches(data, batch_size, plan.shard, scanner.committed.done):
                digest = _batch_digest(xb)
                xb = dn.check_input(xb.to(scanner.device, scanner.dtype))
                if scanner.size is None:
                    hooks.enter_context(scanner.setup(dn, xb))
                scanner.add(xb, idx, digest)
                bar.update(xb.shape[0])
                since_save += 1
                if since_save >= save_every:
                    saved.save(scanner.committed)
                    since_save = 0
            if scanner.size is None:
                # nothing left to scan here (a finished state, or an empty shard): geometry only
                dataset = data.dataset if isinstance(data, DataLoader) else data
                if plan.total is None or not _is_dataset(dataset):
                    raise InputError("the loader yielded no images; check the dataset is not empty")
                first = batch_images(dataset[0]).unsqueeze(0)
                scanner.setup(dn, dn.check_input(first.to(scanner.device, scanner.dtype)))
    except KeyboardInterrupt:
        saved.save(scanner.committed)
        raise
    finally:
        bar.close()
    saved.save(scanner.committed)


def _result(scanner: _Scanner, plan: _Plan) -> Scan:
    """The :class:`Scan` of every process's images (gathered from every rank when
    distributed)."""
    done = scanner.committed.done
    images, merged = done, dict[str, tuple[Tensor, Tensor, Tensor]]()
    if plan.dist is not None:
        images, merged = _gather(scanner, plan, done)
    assert scanner.size is not None
    tops: dict[str, Any] = {}
    for layer in scanner.names:
        width = scanner.widths[layer]
        values, index, pos = merged[layer] if layer in merged else scanner.committed.tops[layer]
        values, index, pos = values.cpu(), index.cpu(), pos.cpu()
        missing = index == _MISSING
        index = index.masked_fill(missing, -1)
        values = values.masked_fill(missing, -math.inf)
        pos = pos.masked_fill(missing, 0)
        positions = torch.stack([pos // width, pos % width], dim=-1)
        rf = scanner.rfs[layer]
        boxes = input_boxes(rf, positions, scanner.size)
        tops[layer] = TopActivations(layer, values, index, positions, boxes, scanner.size, rf)
    return Scan(tops, images, scanner.k)


def _gather(
    scanner: _Scanner, plan: _Plan, done: int
) -> tuple[int, dict[str, tuple[Tensor, Tensor, Tensor]]]:
    """All ranks' image count and every layer's top-k re-selected over all ranks."""
    dist, device = plan.dist, scanner.device
    comm = _comm_device(dist, device)
    count = torch.tensor([done], dtype=torch.long, device=comm)
    dist.all_reduce(count)
    merged: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
    for layer in scanner.names:
        parts = []
        for t in scanner.committed.tops[layer]:
            t = t.contiguous().to(comm)
            got = [torch.empty_like(t) for _ in range(plan.world)]
            dist.all_gather(got, t)
            parts.append(torch.cat(got, dim=1).to(device))
        merged[layer] = select_top(parts[0], parts[1], parts[2], scanner.k)
    return int(count.item()), merged


def _comm_device(dist: Any, device: torch.device) -> torch.device:
    """Where collective tensors must live: CUDA for NCCL, else CPU."""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def top_activations(
    model: nn.Module,
    loader: Iterable[Any],
    layer: str,
    k: int = 9,
    *,
    progress: bool = True,
) -> TopActivations:
    """Find, for every channel of ``layer``, its ``k`` strongest activations over a dataset.

    Args:
        model: the network.
        loader: a DataLoader (or any iterable of batches) **in dataset order** (no shuffling):
            image indices count batches in the order they come.
        layer: layer name (``named_modules()`` spelling).
        k: activations kept per channel, from distinct images. Over fewer than ``k`` images the
            rest is padding (index ``-1``, value ``-inf``) and a :class:`FewImagesWarning` says
            so, once.
        progress: show a progress bar.

    Returns:
        A :class:`TopActivations`.

    Example:
        >>> loader = DataLoader(test_set, batch_size=256)                 # doctest: +SKIP
        >>> top = deconvviz.top_activations(model, loader, "conv2", k=9)  # doctest: +SKIP
        >>> top.values.shape                                              # doctest: +SKIP
        torch.Size([64, 9])
    """
    top = scan(model, loader, [layer], k, progress=progress, distributed=False)[layer]
    real = int((top.indices >= 0).sum(dim=1).max()) if top.indices.numel() else 0
    if real < k:  # fewer images than k: the rest is padding (index -1)
        warnings.warn(few_images_message(k, real), FewImagesWarning, stacklevel=2)
    return top


def project_layer(
    model: nn.Module,
    dataset: Any,
    top: Any,
    rule: str = "deconvnet",
    *,
    batch_size: int = 4096,
    progress: bool = True,
    distributed: bool | None = None,
    precision: str = "fp32",
    channels: Sequence[int] | None = None,
) -> Any:
    """Project every top activation of one scanned layer, sharded over processes.

    Each rank projects every ``world``-th channel (with :func:`deconvviz.project_top`) and rank 0
    gathers them.

    Args:
        model: the network the scan ran on.
        dataset: the dataset it read (``dataset[i]`` is an image or ``(image, label)``).
        top: a :class:`deconvviz.TopActivations` (``scan_result[layer]``).
        rule: ``"deconvnet"``, ``"gradient"`` or ``"guided"``.
        batch_size: seeds per batch.
        progress: show a progress bar (rank 0).
        distributed: shard over the process group; ``None``: when one is initialised.
        precision: ``"fp32"`` (exact) or ``"bf16"`` (bfloat16 autocast), as for :func:`scan`.
        channels: only these channels (default all), e.g. a layer in parts, so that a writer
            holds one part's pictures at a time.

    Returns:
        A :class:`deconvviz.TopProjections` of all channels (of ``channels``, in that order,
        when given) on rank 0; ``None`` on other ranks.
    """
    rank, world, dist = _world()
    if distributed is False or dist is None:
        rank, world, dist = 0, 1, None
    wanted = list(range(top.channels)) if channels is None else [int(c) for c in channels]
    mine = wanted[rank::world]
    part = None
    if mine:
        part = project_top(
            model,
            dataset,
            top,
            rule,
            channels=mine,
            batch_size=batch_size,
            progress=progress and rank == 0,
            precision=precision,
        )
    if dist is None:
        assert part is not None
        return part if channels is not None else replace(part, channels=None)
    payload = None if part is None else (mine, part.reconstructions, part.patches)
    got: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(payload, got, dst=0)
    if rank != 0:
        return None
    assert got is not None
    return _assemble(top, got, rule, wanted, channels is not None)


def layer_parts(top: Any, max_memory: int | None = None) -> list[list[int]]:
    """The channels of a scanned layer in parts whose projections and patches (``k`` of each
    per channel, receptive-field sized) fit in ``max_memory`` bytes (default: the engine's
    budget), for writers that hold one part at a time.

    Example:
        >>> for part in layer_parts(res[layer]):                          # doctest: +SKIP
        ...     proj = project_layer(model, data, res[layer], channels=part)
    """
    h, w = top.input_size
    rf = top.receptive_field
    if rf is not None:
        h, w = min(h, rf.size[0]), min(w, rf.size[1])
    # projections, patches and their float64 display copies, 3 colour channels, float32
    per_unit = 4 * top.k * 3 * h * w * 4
    n = items_within(DEFAULT_MAX_MEMORY if max_memory is None else max_memory, per_unit)
    return [list(range(s, min(top.channels, s + n))) for s in range(0, top.channels, n)]


def _assemble(top: Any, got: list[Any], rule: str, wanted: list[int], subset: bool) -> Any:
    """Rank 0's :class:`deconvviz.TopProjections` of channels ``wanted`` from every rank's
    ``(channels, reconstructions, patches)`` (None for a rank without channels)."""
    first = next(p for p in got if p is not None)
    row = {c: n for n, c in enumerate(wanted)}
    recs = first[1].new_zeros((len(wanted), *first[1].shape[1:]))
    patches = first[2].new_zeros((len(wanted), *first[2].shape[1:]))
    for p in got:
        if p is not None:
            idx = torch.tensor([row[c] for c in p[0]], dtype=torch.long)
            recs[idx], patches[idx] = p[1], p[2]
    return TopProjections(top, recs, patches, rule, tuple(wanted) if subset else None)
