"""Errors raised by deconvviz.

Every error a user can cause (bad input, unknown layer, missing data, corrupt checkpoint,
unsupported layer) is a :class:`DeconvvizError` whose message names the problem *and* the fix.
The command-line app prints such errors as one line on stderr and exits with code 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DeconvvizError(Exception):
    """Base class of every error deconvviz raises on purpose."""


class LayerError(DeconvvizError, KeyError):
    """Unknown, ambiguous or unsuitable layer name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputError(DeconvvizError, ValueError):
    """Input of the wrong rank, shape, channel count, range or type."""


class UnsupportedLayerError(DeconvvizError, TypeError):
    """A layer or activation that has no deconvnet rule (raised in strict mode)."""


class DataError(DeconvvizError, FileNotFoundError):
    """A dataset that is missing or damaged."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CheckpointError(DeconvvizError, ValueError):
    """A checkpoint or run directory that is missing, corrupt or of the wrong kind."""


class BusyError(DeconvvizError, RuntimeError):
    """An output folder or state file that another live run holds (its lock names the owner)."""


class NonFiniteError(DeconvvizError, ValueError):
    """NaN or infinite weights or activations (the message names the first layer with them)."""


class ClassNamesWarning(UserWarning):
    """The dataset's class names do not match the model's outputs, so they are not used."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> str:
    """Message for an unknown name, listing close matches (or a few valid names)."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    if close:
        hint = "did you mean " + ", ".join(repr(c) for c in close) + "?"
    elif known:
        shown = ", ".join(repr(k) for k in known[:12])
        more = f" (and {len(known) - 12} more)" if len(known) > 12 else ""
        hint = f"valid names: {shown}{more}"
    else:
        hint = "there are none"
    return f"unknown {kind} {name!r}; {hint}"
