"""``python -m deconvviz_cli``: the ``deconvviz`` command."""

from deconvviz_cli.main import cli

cli(prog_name="deconvviz")
