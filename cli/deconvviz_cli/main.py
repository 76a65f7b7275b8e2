"""The ``deconvviz`` command: a thin click app over the library.

Each command parses its options, calls one public library function, saves what it returns and
prints one line. Whatever goes wrong is one line on stderr, never a traceback:

* errors the user can fix (:class:`deconvviz.base.errors.DeconvvizError`, or a file that cannot be
  read or written) print ``Error: ...`` and exit with 1 (``DECONVVIZ_TRACEBACK=1`` shows the
  traceback and its cause instead, e.g. torch's own words on an unreadable checkpoint);
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
from deconvviz.base.errors import DeconvvizError

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


def _has_option(group: click.Group, ctx: click.Context, name: str) -> bool:
    """Whether the subcommand being run has an option called ``name``."""
    sub = ctx.invoked_subcommand or (ctx.protected_args[0] if ctx.protected_args else None)
    command = group.get_command(ctx, sub) if sub else None
    return command is not None and any(p.name == name for p in command.params)


_OURS = (
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.abspath(sys.modules["deconvviz"].__file__ or "")),
)
_MODEL_FILES = ("models.py", "loading.py")  # deconvviz's example networks and its wrapper


def _raised_by_the_model(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside a model's forward pass (a module call is on the
    stack) by code that is not deconvviz's: the model's own, or torch's on its behalf."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append((os.path.abspath(code.co_filename), code.co_name))
        tb = tb.tb_next
    module_py = os.path.join("torch", "nn", "modules", "module.py")
    if not any(f.endswith(module_py) for f, _ in frames):
        return False
    # a torch function mode (deconvviz's ReLU swap, its counters) only passes calls through
    while len(frames) > 1 and frames[-1][1] == "__torch_function__":
        frames.pop()
    innermost = frames[-1][0]
    ours = innermost.startswith(_OURS) and not innermost.endswith(_MODEL_FILES)
    return not ours


class DeconvvizGroup(click.Group):
    """A click group that turns every failure into one line on stderr."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        # an analysis registered after start-up (a plugin, a notebook) is a command too
        command = super().get_command(ctx, cmd_name)
        if command is None:
            from deconvviz_cli.commands.analyses import registered_commands

            found = [c for c in registered_commands(set(self.commands)) if c.name == cmd_name]
            command = found[0] if found else None
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():  # restores the caller's warning display afterwards
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except DeconvvizError as exc:
            if os.environ.get(TRACEBACK_ENV):
                raise  # the whole story, with the cause (torch's own words on a bad file)
            click.echo(f"Error: {_one_line(str(exc))}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            more = ""
            if _has_option(self, ctx, "resume"):
                more = " Run the same command again with --resume to continue where it stopped."
            click.echo(
                "Interrupted: files already written are complete; nothing was left half-written."
                + more,
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
            if _raised_by_the_model(exc):
                click.echo(
                    f"Error: the model raised {type(exc).__name__} in its forward pass: "
                    f"{_one_line(str(exc))} (this comes from the model, not deconvviz; for "
                    "images larger than the model was trained on, give --image-size N, the "
                    f"training size; {TRACEBACK_ENV}=1 shows the traceback)",
                    err=True,
                )
                sys.exit(1)
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
