"""The commands of the ``deconvviz`` app, one module per family.

Add a command by importing it here and listing it in ``COMMANDS``.
"""

from __future__ import annotations

import click

from deconvviz_cli.commands import analyses as _analyses
from deconvviz_cli.commands import atlas as _atlas
from deconvviz_cli.commands import inspect as _inspect
from deconvviz_cli.commands import measures as _measures
from deconvviz_cli.commands import reconstruct as _reconstruct
from deconvviz_cli.commands import report as _report
from deconvviz_cli.commands import serve as _serve
from deconvviz_cli.commands import train as _train

COMMANDS: list[click.Command] = []
COMMANDS += [_train.train, _train.sweep]
COMMANDS += [_measures.occlude, _measures.filters, _measures.stats]
COMMANDS += [
    _analyses.invariance_cmd,
    _analyses.correspondence_cmd,
    _analyses.sanity_cmd,
    _analyses.sensitivity_cmd,
]
COMMANDS += _reconstruct.COMMANDS
COMMANDS += _report.COMMANDS
COMMANDS += _atlas.COMMANDS
COMMANDS += [_inspect.inspect_cmd]
COMMANDS += _serve.COMMANDS
# every registered analysis without a hand-written command (deconvviz.analyses.registry)
COMMANDS += _analyses.registered_commands({c.name for c in COMMANDS if c.name})
