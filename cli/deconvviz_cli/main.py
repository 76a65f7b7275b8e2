"""The ``deconvviz`` command: a thin click app over the library.

Each command parses its options, calls one public library function, saves what it returns and
prints one line. Errors the user can fix (:class:`deconvviz.errors.DeconvvizError`) are printed
as one line on stderr with exit code 1; usage errors exit with 2, as click does.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from deconvviz import __version__
from deconvviz.errors import DeconvvizError


class DeconvvizGroup(click.Group):
    """A click group that turns library errors into one-line messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DeconvvizError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo(
                "Interrupted: files already written are complete; nothing was left half-written.",
                err=True,
            )
            sys.exit(130)


@click.group(cls=DeconvvizGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deconvviz")
def cli() -> None:
    """deconvviz: see inside a trained PyTorch network (Zeiler & Fergus, ECCV 2014)."""


def _register() -> None:
    # Each commands module defines click commands; registered here, in help order.
    from deconvviz_cli.commands import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


_register()
