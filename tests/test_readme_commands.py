"""Every ``deconvviz ...`` command in README.md's shell blocks runs as written.

The commands are parsed from the README itself (not listed here), so a README edit is tested as
it is made. They run in README order in one temporary folder (later commands read what earlier
ones wrote, e.g. ``--checkpoint runs/lenet5``), with ``../shared/data`` pointing at the real data
and tiny sizes (``--iterations 2``, ``--max-images 16``, ...) wherever a command has such an
option, so the whole file takes about a minute. ``pip install`` lines and Python blocks are not
run here (``.ci/run`` runs the README's install command).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from deconvviz_cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DATA = ROOT.parent / "shared" / "data"

# Test-only sizes, set wherever a command has the option (replacing a value the README gives).
TINY = {
    "--iterations": "2",
    "--per-class": "13",  # 130 images: enough for the RNNs' batch of 128
    "--max-images": "16",
    "--images": "1",
    "--top": "2",
    "--hidden": "8",
    "--config": "adam:1e-3",  # sweep: one configuration of the grid
}
# Replaced only where the README gives them (they exclude others, e.g. --epochs / --iterations).
TINY_IF_GIVEN = {"--epochs": "0.2"}


def readme_commands(text: str) -> list[list[str]]:
    """The ``deconvviz`` command lines of the shell blocks, split as a shell would."""
    commands = []
    for block in re.findall(r"^```(?:bash|sh|shell|console)[^\n]*\n(.*?)^```", text, re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            args = shlex.split(line.strip().removeprefix("$ "), comments=True)
            if args and args[0] == "deconvviz":
                commands.append(args)
    return commands


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def command_of(args: list[str]) -> click.Command:
    """The click command ``args`` (without the leading ``deconvviz``) invokes."""
    cmd: click.Command = cli
    rest = list(args)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), rest.pop(0))
        assert sub is not None, f"the README names a command that does not exist: {args}"
        cmd = sub
    return cmd


def option_arity(cmd: click.Command) -> dict[str, int]:
    """Every option string of ``cmd`` -> how many values follow it (0 for flags)."""
    out = {}
    for p in cmd.params:
        if isinstance(p, click.Option):
            n = 0 if p.is_flag or p.count else p.nargs
            for name in (*p.opts, *p.secondary_opts):
                out[name] = n
    return out


def shrink(args: list[str]) -> list[str]:
    """``args`` (after ``deconvviz``) with the real data path and tiny sizes."""
    args = [a.replace("../shared/data", str(DATA)) for a in args]
    arity = option_arity(command_of(args))
    sizes = {k: v for k, v in TINY.items() if k in arity}
    sizes |= {k: v for k, v in TINY_IF_GIVEN.items() if k in args}
    if "--epochs" in args:
        sizes.pop("--iterations", None)
    kept: list[str] = []
    i = 0
    while i < len(args):
        name = args[i].split("=", 1)[0]
        if name in sizes:  # drop the README's value; the tiny one is appended below
            i += 1 + (arity[name] if "=" not in args[i] else 0)
            continue
        kept.append(args[i])
        i += 1
    for name, value in sizes.items():
        kept += [name, value]
    if "--no-progress" in arity and "--progress" not in kept:
        kept.append("--no-progress")
    return kept


def out_dir(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a in ("--out", "-o") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--out="):
            return a.split("=", 1)[1]
    return None


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """Run every README command in order in one folder: ``(folder, [Result, ...])``."""
    if not DATA.is_dir():
        pytest.skip(f"the README's commands read ../shared/data, absent here ({DATA})")
    work = tmp_path_factory.mktemp("readme")
    results = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for args in COMMANDS:
            results.append(CliRunner().invoke(cli, shrink(args[1:]), catch_exceptions=True))
    return work, results


def test_the_readme_has_commands_to_run() -> None:
    names = {" ".join(a[1:3]) for a in COMMANDS}
    assert any(n.startswith("train ") for n in names), COMMANDS  # the parser found the blocks
    assert len(COMMANDS) >= 5


def test_shrink_sets_tiny_sizes_and_keeps_the_rest() -> None:
    args = ["train", "lenet5", "--data-dir", "../shared/data", "--iterations", "2000", "--out", "r"]
    got = shrink(args)
    assert got[:3] == ["train", "lenet5", "--data-dir"] and got[3] == str(DATA)
    assert got.count("--iterations") == 1 and got[got.index("--iterations") + 1] == "2"
    assert got[got.index("--out") + 1] == "r" and "--no-progress" in got
    assert "--epochs" not in got and "--max-images" not in got  # train has no --max-images
    epochs = shrink(["train", "lenet5", "--data-dir", "d", "--epochs", "3", "--out", "r"])
    assert "--iterations" not in epochs and epochs[epochs.index("--epochs") + 1] == "0.2"


@pytest.mark.parametrize(
    "index", range(len(COMMANDS)), ids=[f"{i}-{'-'.join(a[1:3])}" for i, a in enumerate(COMMANDS)]
)
def test_readme_command_runs(ran: tuple[Path, list[Any]], index: int) -> None:
    work, results = ran
    res = results[index]
    line = shlex.join(COMMANDS[index])
    ran_as = shlex.join(["deconvviz", *shrink(COMMANDS[index][1:])])
    detail = f"README command failed: {line}\nran as: {ran_as}\n--- output ---\n{res.output}"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        detail += f"\n--- exception ---\n{res.exception!r}"
    assert res.exit_code == 0, detail
    out = out_dir(COMMANDS[index])
    if out is not None:  # it wrote what it says it wrote
        written = work / out
        assert written.is_dir() and any(written.iterdir()), f"{line}: nothing in {out}\n{detail}"
