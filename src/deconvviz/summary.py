"""Moved to :mod:`deconvviz.engine.summary` (kept: the documented import path of layer_table)."""

from deconvviz.engine.summary import LayerRow, LayerTable, layer_table

__all__ = ["LayerRow", "LayerTable", "layer_table"]
