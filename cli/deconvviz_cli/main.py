"""The ``deconvviz`` command: a thin click app over the library.

Each command parses its options, calls one public library function, saves what it returns and
prints one line. Whatever goes wrong is one line on stderr, never a traceback:

* errors the user can fix (:class:`deconvviz.errors.DeconvvizError`, or a file that cannot be
  read or written) print ``Error: ...`` and exit with 1;
* usage errors (a bad option value, a missing option) print ``Error: ...`` and exit with 2, as
  click does, but in one line (``--help`` shows the usage);
* warnings print as one ``Warning: ...`` line each;
* anything else is a bug in deconvviz: one line saying so (``DECONVVIZ_TRACEBACK=1`` shows
  the traceback).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import click

from deconvviz import __version__
from deconvviz.errors import DeconvvizError

TRACEBACK_ENV = "DECONVVIZ_TRACEBACK"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    click.echo(f"Warning: {_one_line(str(message))}", err=True)


def _os_error(exc: OSError) -> str:
    what = exc.strerror or type(exc).__name__
    where = f" {exc.filename}" if exc.filename else ""
    return f"{what}:{where}; check the path and that you may read and write there"


class DeconvvizGroup(click.Group):
    """A click group that turns every failure into one line on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():  # restores the caller's warning display afterwards
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except DeconvvizError as exc:
            click.echo(f"Error: {_one_line(str(exc))}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo(
                "Interrupted: files already written are complete; nothing was left half-written.",
                err=True,
            )
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except OSError as exc:
            if os.environ.get(TRACEBACK_ENV):
                raise
            click.echo(f"Error: {_one_line(_os_error(exc))}", err=True)
            sys.exit(1)
        except Exception as exc:
            if os.environ.get(TRACEBACK_ENV):
                raise
            click.echo(
                f"Error: unexpected {type(exc).__name__}: {_one_line(str(exc))} (a bug in "
                f"deconvviz; please report it, with the traceback {TRACEBACK_ENV}=1 shows)",
                err=True,
            )
            sys.exit(1)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `deconvviz`: the help
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {_one_line(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {_one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


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

if __name__ == "__main__":  # python -m deconvviz_cli.main
    cli(prog_name="deconvviz")
