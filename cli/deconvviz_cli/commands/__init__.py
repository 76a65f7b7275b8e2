"""The commands of the ``deconvviz`` app, one module per family.

Add a command by importing it here and listing it in ``COMMANDS``.
"""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
