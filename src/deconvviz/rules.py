"""Moved to :mod:`deconvviz.engine.rules` (kept: the documented import path of the rules)."""

from deconvviz.engine.rules import *  # noqa: F403
from deconvviz.engine.rules import __all__ as __all__
