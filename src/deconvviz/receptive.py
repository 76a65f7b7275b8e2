"""Moved to :mod:`deconvviz.engine.receptive` (kept: ``ReceptiveField`` is public here)."""

from deconvviz.engine.deconvnet import receptive_field
from deconvviz.engine.receptive import UNKNOWN, ReceptiveField, RFTracker

__all__ = ["UNKNOWN", "RFTracker", "ReceptiveField", "receptive_field"]
