"""Small helpers every layer shares: JSON-safe values, file-safe names, pairs, memory budgets.

Rank 0 (base): imports only the standard library, torch and :mod:`deconvviz.base.errors`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

import torch
from torch import Tensor

from deconvviz.base.errors import InputError

__all__ = [
    "spread",
    "DEAD_UNIT",
    "dead_units",
    "DEFAULT_MAX_MEMORY",
    "PRECISIONS",
    "autocast",
    "check_precision",
    "items_within",
    "json_safe",
    "memory_budget",
    "pair",
    "safe_name",
    "safe_names",
]

DEFAULT_MAX_MEMORY = 512 * 2**20
"""Bytes a batch of work may take when nothing else is said (the engine's ``max_memory``)."""


DEAD_UNIT = "never above 0 on the scanned images"
"""The one definition of a dead unit, in words, for every table and figure that counts them."""


def dead_units(channel_max: torch.Tensor) -> list[int]:
    """The dead units of a layer: the channels whose largest activation over the scanned images
    (``channel_max``, ``[C]``) is not above 0 (NaN included). Statistics, reconstructions, the
    report and the atlas all count dead units with this function.

    Example:
        >>> dead_units(torch.tensor([0.5, 0.0, -1.0, float("nan")]))
        [1, 2, 3]
    """
    alive = channel_max.detach().cpu().double() > 0
    return [int(c) for c in (~alive).nonzero().flatten().tolist()]


def spread(n: int, m: int | None) -> list[int] | None:
    """``m`` indices spread evenly over ``range(n)`` (``p * n // m``: the first is 0), or None
    when all ``n`` are wanted. ``--max-images`` takes these, not the first ``m``: a dataset stored
    class by class is then sampled across its classes, not cut to the first ones."""
    if m is None or m >= n:
        return None
    return [p * n // m for p in range(m)]


def json_safe(obj: Any) -> Any:
    """``obj`` as plain JSON-ready Python.

    Dataclasses become dicts (their ``to_dict()`` when they have one), mappings dicts with
    string keys, tuples and lists lists, tensors and NumPy values their ``tolist()``, paths
    strings, and NaN/infinite floats ``None``; everything else is returned as it is.

    Example:
        >>> json_safe({"a": (1.0, float("nan")), 2: torch.tensor([0.5])})
        {'a': [1.0, None], '2': [0.5]}
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Tensor) or type(obj).__module__ == "numpy":
        return json_safe(obj.tolist())
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def safe_name(name: str, default: str = "layer") -> str:
    """A file-name-safe spelling of a name: runs of other characters than letters, digits,
    ``_``, ``.`` and ``-`` become one ``_``, and leading/trailing ``.``/``_`` go
    (``default`` when nothing is left).

    Example:
        >>> safe_name("features.3"), safe_name("a/b c"), safe_name("..")
        ('features.3', 'a_b_c', 'layer')
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or default


def safe_names(names: Sequence[str], default: str = "layer") -> dict[str, str]:
    """An injective :func:`safe_name` for each of ``names``: where two names would share a file
    name (``conv a`` and ``conv/a``, ``κ`` and ``λ``; compared without case, for file systems
    that ignore it), each of them gets a short hash of its full name appended.

    Example:
        >>> safe_names(["conv a", "conv/a", "fc"])
        {'conv a': 'conv_a-3c4538', 'conv/a': 'conv_a-ad45b5', 'fc': 'fc'}
    """
    import hashlib

    plain = {name: safe_name(name, default) for name in names}
    seen: dict[str, int] = {}
    for spelling in plain.values():
        seen[spelling.lower()] = seen.get(spelling.lower(), 0) + 1
    for digits in (6, 16, 64):
        out = {}
        for name, spelling in plain.items():
            if seen[spelling.lower()] > 1:
                spelling += "-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:digits]
            out[name] = spelling
        if len({v.lower() for v in out.values()}) == len(out):
            break
    return out


def pair(value: Any, name: str | None = None, *, default: int | None = None) -> tuple[int, int]:
    """``(rows, cols)`` from an int or a sequence of one or two ints.

    Args:
        value: ``n`` (-> ``(n, n)``), ``(n,)`` or ``(r, c)``; ``None`` gives
            ``(default, default)`` when a default is set.
        name: the argument's name: with it, the value is checked (ints, not bools, at least 1)
            and a bad one raises :class:`InputError` naming it; without it, PyTorch's lenient
            reading of layer arguments (any int-like values).

    Example:
        >>> pair(3), pair((2, 5)), pair([4]), pair(None, default=1)
        ((3, 3), (2, 5), (4, 4), (1, 1))
    """
    if value is None and default is not None:
        return (default, default)
    if name is None:
        if isinstance(value, int):
            return (value, value)
        t = tuple(int(i) for i in value)
        return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])
    return _checked_pair(name, value)


def _checked_pair(name: str, value: Any) -> tuple[int, int]:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if is_int(value):
        out = (int(value), int(value))
    elif isinstance(value, Sequence) and len(value) == 2 and all(is_int(v) for v in value):
        out = (int(value[0]), int(value[1]))
    else:
        raise InputError(f"{name} must be an int or a pair of ints (rows, cols), got {value!r}")
    if min(out) < 1:
        raise InputError(f"{name} must be at least 1, got {value!r}")
    return out


def memory_budget(device: torch.device | str, given: int | None = None) -> int:
    """Bytes a batch of work may take on ``device``: ``given`` when set, else a quarter of the
    GPU's free memory on CUDA, else :data:`DEFAULT_MAX_MEMORY`."""
    if given is not None:
        return int(given)
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 4)
    return DEFAULT_MAX_MEMORY


def items_within(budget: float, per_item: float, cap: int | None = None) -> int:
    """How many items of ``per_item`` bytes fit in ``budget`` bytes: at least 1, at most
    ``cap`` (when given).

    Example:
        >>> items_within(1000, 300), items_within(10, 300), items_within(10**6, 1, cap=7)
        (3, 1, 7)
    """
    n = max(1, int(budget // max(per_item, 1)))
    return n if cap is None else max(1, min(cap, n))


PRECISIONS = ("fp32", "bf16")
"""The ``precision=`` choices of scans and projections: ``"fp32"``, the model's own dtype (no
autocast; what every exactness test uses), or ``"bf16"``, bfloat16 autocast (faster on CPUs
with AVX-512 bf16/AMX and on GPUs; values and projections then agree with ``"fp32"`` to about
1%, and the top-k can swap near-equal entries)."""


def check_precision(precision: Any) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else an :class:`InputError`."""
    if precision not in PRECISIONS:
        raise InputError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}; use fp32 "
            "(exact, the default) or bf16 (bfloat16 autocast)"
        )
    return str(precision)


def autocast(device: torch.device | str, precision: str) -> Any:
    """The autocast context of ``precision`` on ``device``'s type (disabled for ``"fp32"``)."""
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16")
