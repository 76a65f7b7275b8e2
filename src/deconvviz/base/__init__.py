"""The base layer: exceptions, the input checks every layer above uses, images, devices,
torchrun's process group, atomic files and locks. Nothing here imports the layers above.

Import names from their modules (``deconvviz.base.checks``, ``deconvviz.base.errors``, ...);
this package re-exports nothing. See docs/architecture.md.
"""
