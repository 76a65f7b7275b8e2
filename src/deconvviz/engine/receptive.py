"""Receptive fields, found by watching the forward pass.

While the engine runs a forward pass it follows every tensor that derives from the input and
keeps, per spatial dimension, an affine map from an output position ``p`` to the interval of
input pixels that can influence it: ``[p * jump + start, p * jump + end]`` (inclusive). Convolutions
and pooling compose the map; elementwise ops (ReLU, BatchNorm in eval, residual adds, channel
concatenations) take the union of their inputs' maps. Any op whose effect may depend on the
absolute position makes the map unknown, and the engine then falls back to dense, full-image
projections (exact) for every layer downstream of it: ops it does not know (global pooling,
flatten, resizing, padding, rolls, ``narrow``, ``index_select``...), indexing that touches H or W
(reads, writes with ``__setitem__``, in-place ops on such a view, which change the tensor it was
taken from), constants that vary along H or W (a row mask, a positional ramp, coordinate
channels, even when they broadcast from ``[H, 1]``) and concatenation along H or W. In-place ops
carry their verdict to every tensor that shares the mutated storage.

This module imports nothing of the engine but its op catalogue (:mod:`~deconvviz.engine.rfops`:
which calls keep, compose or lose the map); :func:`deconvviz.receptive_field` (a model and a layer
name in, a field out) lives with :func:`~deconvviz.engine.deconvnet.attach`, which it uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from deconvviz.engine.rfops import (
    AVGPOOL,
    CAT,
    CONV,
    LOCAL,
    MAXPOOL,
    PER_CHANNEL,
    UNKNOWN,
    arg,
    compose,
    keeps_positions,
    pads_channels_only,
    position_free,
    sliced,
    tensors,
    window,
    window_support,
    written_in_place,
)

__all__ = ["UNKNOWN", "RFTracker", "ReceptiveField"]


@dataclass(frozen=True)
class ReceptiveField:
    """Where in the input an activation at position ``(row, col)`` of a layer can look.

    Attributes:
        jump: input pixels between neighbouring positions of the layer, ``(rows, cols)``.
        start: offset of position 0's first input pixel (negative where padding is used).
        end: offset of position 0's last input pixel (inclusive).
        input_size: ``(H, W)`` of the input this was measured on.
    """

    jump: tuple[int, int]
    start: tuple[int, int]
    end: tuple[int, int]
    input_size: tuple[int, int]
    #: per dimension and output position, the first and last input pixel it really reads
    #: (``(lo_rows, hi_rows, lo_cols, hi_cols)``; ``hi < lo`` where it reads only padding):
    #: the true support, which the affine map above can exceed where a strided window never
    #: reaches the image's last pixels. ``None`` where it was not followed.
    support: tuple[tuple[int, ...], ...] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The affine map, for JSON (:func:`deconvviz.base._util.json_safe`)."""
        return {
            "jump": list(self.jump),
            "start": list(self.start),
            "end": list(self.end),
            "input_size": list(self.input_size),
        }

    @property
    def size(self) -> tuple[int, int]:
        """Side lengths of one activation's receptive field, in input pixels (unclipped)."""
        return (self.end[0] - self.start[0] + 1, self.end[1] - self.start[1] + 1)

    def box(self, row: int, col: int, clip: bool = True) -> tuple[int, int, int, int]:
        """Input-pixel box ``(y0, x0, y1, x1)`` (half-open) seen by activation ``(row, col)``.

        Example:
            >>> rf = ReceptiveField((2, 2), (-2, -2), (5, 5), (28, 28))
            >>> rf.box(0, 0)
            (0, 0, 6, 6)
        """
        if clip:
            y0, x0, y1, x1 = (int(v) for v in self.boxes(torch.tensor([row, col])).tolist())
            return (y0, x0, y1, x1)
        return self._corners(row, col)

    def boxes(self, positions: Tensor, clip: bool = True) -> Tensor:
        """:meth:`box` of every ``(row, col)`` in ``positions`` (``[..., 2]``): ``[..., 4]``.

        Example:
            >>> rf = ReceptiveField((2, 2), (-2, -2), (5, 5), (28, 28))
            >>> rf.boxes(torch.tensor([[0, 0], [1, 3]])).tolist()
            [[0, 0, 6, 6], [0, 4, 8, 12]]
        """
        y0, x0, y1, x1 = self._corners(positions[..., 0], positions[..., 1])
        if clip:
            h, w = self.input_size
            y0, x0 = y0.clamp(0, h), x0.clamp(0, w)
            y1, x1 = y1.clamp(0, h), x1.clamp(0, w)
            if self.support is not None:  # the pixels really read (never wider)
                y0, y1 = _support_side(self.support[0], self.support[1], positions[..., 0], y0, y1)
                x0, x1 = _support_side(self.support[2], self.support[3], positions[..., 1], x0, x1)
            # an activation that reads only padding has an empty box, never an inverted one
            y1, x1 = torch.maximum(y1, y0), torch.maximum(x1, x0)
        return torch.stack([y0, x0, y1, x1], dim=-1)

    def _corners(self, row: Any, col: Any) -> tuple[Any, Any, Any, Any]:
        """Unclipped ``(y0, x0, y1, x1)`` of ``(row, col)`` (ints or tensors alike)."""
        return (
            row * self.jump[0] + self.start[0],
            col * self.jump[1] + self.start[1],
            row * self.jump[0] + self.end[0] + 1,
            col * self.jump[1] + self.end[1] + 1,
        )


def _support_side(
    lo: tuple[int, ...], hi: tuple[int, ...], pos: Tensor, a: Tensor, b: Tensor
) -> tuple[Tensor, Tensor]:
    """``[a, b)`` narrowed to the pixels positions ``pos`` really read (``[lo, hi + 1)``); an
    empty support gives the empty box ``[a, a)``."""
    if len(lo) == 0:
        return a, b
    p = pos.clamp(0, len(lo) - 1).long()
    lo_t = torch.tensor(lo, dtype=torch.long)[p]
    hi_t = torch.tensor(hi, dtype=torch.long)[p] + 1
    empty = hi_t <= lo_t
    return torch.where(empty, a, torch.maximum(a, lo_t)), torch.where(
        empty, a, torch.minimum(b, hi_t)
    )


class RFTracker:
    """Follows the receptive-field map of every tensor derived from the input."""

    def __init__(self) -> None:
        self.meta: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        #: per followed tensor, the input pixels each position really reads (see
        #: :attr:`ReceptiveField.support`)
        self.support: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.bytes_per_sample = 0  # size of every derived tensor made, per batch item

    def watch(self, x: Tensor) -> None:
        self.meta[x] = (1, 1, 0, 0, 0, 0) if x.dim() == 4 else UNKNOWN
        if x.dim() == 4:
            h, w = int(x.shape[-2]), int(x.shape[-1])
            self.support[x] = (tuple(range(h)), tuple(range(h)), tuple(range(w)), tuple(range(w)))

    def field(self, t: Tensor, input_size: tuple[int, int]) -> ReceptiveField | None:
        m = self.meta.get(t)
        if m is None or m is UNKNOWN or t.dim() != 4:
            return None
        sup = self.support.get(t)
        return ReceptiveField((m[0], m[1]), (m[2], m[3]), (m[4], m[5]), input_size, sup)

    def update(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        ins = list(tensors(args)) + list(tensors(kwargs))
        derived = [(t, m) for t in ins if (m := self.meta.get(t)) is not None]
        mutated = written_in_place(func, args, kwargs)
        aliases = self._aliases(mutated) if mutated is not None else []
        if not derived and not aliases:
            return
        outs = list(tensors(out))
        if mutated is not None and all(o is not mutated for o in outs):
            outs = [mutated, *outs]
        if not outs:
            return
        for o in outs:
            if o.dim() > 0:
                self.bytes_per_sample += o.numel() // max(o.shape[0], 1) * o.element_size()
        new = self._rule(func, args, kwargs, derived, ins, outs) if derived else UNKNOWN
        sup = None
        if new is not UNKNOWN:
            try:
                sup = self._support_of(func, args, kwargs, derived, outs[0])
            except Exception:  # pragma: no cover - an odd call: the affine map still holds
                sup = None
        for o in outs:
            self.meta[o] = new if (new is UNKNOWN or o.dim() == 4) else UNKNOWN
            if sup is not None and o.dim() == 4:
                self.support[o] = sup
            elif o in self.support:
                del self.support[o]
        # An in-place op changes every tensor that shares the storage (the tensor a view was
        # taken from, ``.data``): they keep a map only if the op was local and they have the
        # same spatial layout.
        for a in aliases:
            assert mutated is not None
            if a is mutated:
                continue
            m = self.meta.get(a)
            if m is UNKNOWN:
                continue
            if a in self.support:
                del self.support[a]  # the affine map below still bounds it
            if (
                new is UNKNOWN
                or m is None
                or a.dim() != 4
                or mutated.dim() != 4
                or a.shape[-2:] != mutated.shape[-2:]
                or (m[0], m[1]) != (new[0], new[1])
            ):
                self.meta[a] = UNKNOWN
            else:
                self.meta[a] = (
                    m[0],
                    m[1],
                    min(m[2], new[2]),
                    min(m[3], new[3]),
                    max(m[4], new[4]),
                    max(m[5], new[5]),
                )

    def _support_of(
        self, func: Any, args: tuple, kwargs: dict, derived: list, out0: Tensor
    ) -> tuple[tuple[int, ...], ...] | None:
        """The pixels each position of an op's output really reads, from its inputs'."""
        name = getattr(func, "__name__", "")
        if name in CONV or name in MAXPOOL or name in AVGPOOL:
            first = args[0]
            sup = self.support.get(first)
            if sup is None:
                return None
            kernel, stride, padding, dilation = window(name, args, kwargs)
            out: list[tuple[int, ...]] = []
            for d in (0, 1):
                n_out = int(out0.shape[-2 + d])
                lo, hi = window_support(
                    sup[2 * d], sup[2 * d + 1], n_out, kernel[d], stride[d], padding[d], dilation[d]
                )
                out += [lo, hi]
            return tuple(out)
        sups = [self.support.get(t) for t, _ in derived if t.dim() == 4]
        if not sups or any(s is None for s in sups):
            return None
        first = sups[0]
        assert first is not None
        if any(s is None or len(s[0]) != len(first[0]) or len(s[2]) != len(first[2]) for s in sups):
            return None
        if len(first[0]) != out0.shape[-2] or len(first[2]) != out0.shape[-1]:
            return None
        sides: list[tuple[int, ...]] = []
        for k in range(4):
            pick = min if k % 2 == 0 else max  # union: the lowest first pixel, highest last
            columns = zip(*(s[k] for s in sups if s is not None), strict=True)
            sides.append(tuple(pick(vals) for vals in columns))
        return tuple(sides)

    def _aliases(self, t: Tensor) -> list[Tensor]:
        """Followed tensors (``t`` included when followed) that share ``t``'s storage."""
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # no storage: assume it aliases everything
            return [k for k, _ in self.meta.items()]
        found = []
        for k, _ in self.meta.items():
            try:
                same = k.device == t.device and k.untyped_storage().data_ptr() == ptr
            except (RuntimeError, NotImplementedError):
                same = True
            if same and (ptr != 0 or k is t):
                found.append(k)
        return found

    def _rule(
        self, func: Any, args: tuple, kwargs: dict, derived: list, ins: list, outs: list
    ) -> Any:
        """The map of an op's outputs, from the maps of its derived inputs."""
        if any(m is UNKNOWN for _, m in derived):
            return UNKNOWN
        name = getattr(func, "__name__", "")
        if outs[0].dim() != 4:
            return UNKNOWN
        if name in CONV or name in MAXPOOL or name in AVGPOOL:
            first = args[0] if args else None
            if not isinstance(first, Tensor) or self.meta.get(first) is None:
                return UNKNOWN  # e.g. a convolution whose *weight* depends on the input
            if name in CONV and self.meta.get(arg(args, kwargs, 1, "weight", None)) is not None:
                return UNKNOWN
            return compose(self.meta[first], *window(name, args, kwargs))
        first = args[0] if args else None
        if name in ("__getitem__", "pad") and isinstance(first, Tensor) and first.dim() == 4:
            m = self.meta.get(first)
            shifted = sliced(m, args[1] if len(args) > 1 else None) if name != "pad" else None
            if shifted is not None and len(derived) == 1:
                return shifted  # x[:, :, a::s, b::t]: a 1x1 window op with stride (s, t)
            pads = arg(args, kwargs, 1, "pad", None) if name == "pad" else None
            if m is not None and len(derived) == 1 and pads_channels_only(pads):
                return m  # F.pad of the batch/channel dimensions only: positions unchanged
        if name not in LOCAL:
            return UNKNOWN
        return self._local(name, args, kwargs, derived, ins, outs[0])

    def _local(
        self, name: str, args: tuple, kwargs: dict, derived: list, ins: list, out0: Tensor
    ) -> Any:
        """The union of the inputs' maps for an op that acts on each position on its own."""
        if name in ("__getitem__", "__setitem__") and not keeps_positions(
            args[1] if len(args) > 1 else None
        ):
            return UNKNOWN
        if name in CAT:
            dim = arg(args, kwargs, 1, "dim", 0)
            if not isinstance(dim, int) or dim % 4 >= 2:
                return UNKNOWN  # concatenating along H or W puts pieces at absolute positions
        hw = tuple(out0.shape[-2:])
        spatial = [m for t, m in derived if t.dim() == 4 and tuple(t.shape[-2:]) == hw]
        if len(spatial) != len(derived) or not spatial:
            return UNKNOWN
        # A constant that varies over positions (a positional embedding, a row mask, coordinate
        # channels, a ramp broadcast from [H, 1]) breaks the translation equivariance the crops
        # rely on.
        for t in ins:
            if self.meta.get(t) is None and not position_free(t, name in PER_CHANNEL):
                return UNKNOWN
        jumps = {(m[0], m[1]) for m in spatial}
        if len(jumps) != 1:
            return UNKNOWN
        ((jh, jw),) = jumps
        return (
            jh,
            jw,
            min(m[2] for m in spatial),
            min(m[3] for m in spatial),
            max(m[4] for m in spatial),
            max(m[5] for m in spatial),
        )
