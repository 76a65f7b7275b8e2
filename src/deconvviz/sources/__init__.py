"""Where models and data come from: the example networks (``models``), the datasets (``data``,
``datasets``), users' models and checkpoints in every layout (``loading``, ``checkpoint``) and the
shipped weights (``pretrained``).

Import names from their modules; this package re-exports nothing. See docs/architecture.md.
"""
