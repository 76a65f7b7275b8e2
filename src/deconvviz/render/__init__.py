"""Rendering: tensors from the analyses to matplotlib figures and PIL images (no file I/O)."""
