"""Every command and option of the click app has help, short help is never cut mid-sentence,
and the options several commands share look the same on all of them."""

from __future__ import annotations

import re

import click
import pytest

from deconvviz_cli.main import cli


def _commands(group: click.Group = cli, path: str = "deconvviz"):
    for name, command in group.commands.items():
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} {name}")


COMMANDS = list(_commands())
LEAVES = [(p, c) for p, c in COMMANDS if not isinstance(c, click.Group)]
TRUNCATED = re.compile(r"(et al|e\.g|i\.e|etc|vs|cf|Fig|Sec|\.\.\.)\.?$")


def _options(command: click.Command) -> dict[str, click.Option]:
    return {
        p.opts[0]: p
        for p in command.params
        if isinstance(p, click.Option) and not p.hidden and p.opts[0].startswith("--")
    }


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_a_whole_short_help(path, command):
    # click cuts the short help at the first sentence ("Adebayo et al." ...) unless it is given
    assert command.help or command.short_help, path
    for limit in (70, 200):  # what --help's command list gives at 80 columns, and more
        short = command.get_short_help_str(limit=limit)
        assert short and not TRUNCATED.search(short), (path, limit, short)
        assert short.count("(") == short.count(")"), (path, short)


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=[p for p, _ in LEAVES])
def test_every_option_has_help(path, command):
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help and param.help.strip(), f"{path} {param.opts[0]} has no help"


@pytest.mark.parametrize("width", [80, 120])
def test_command_lists_show_whole_summaries(width):
    for path, group in [("deconvviz", cli)] + [
        (p, c) for p, c in COMMANDS if isinstance(c, click.Group)
    ]:
        text = group.get_help(click.Context(group, info_name=path, terminal_width=width))
        listing = text.split("Commands:", 1)[1]
        assert "et al." not in listing and "..." not in listing, listing


SHARED = {
    "--checkpoint": ("-c", "PATH"),
    "--model": (None, "SPEC"),
    "--device": (None, "NAME"),
    "--out": ("-o", "DIR"),
    "--data-dir": (None, "DIR"),
    "--layer": (None, "NAME"),
}


@pytest.mark.parametrize("flag", sorted(SHARED))
def test_shared_options_look_the_same_on_every_command(flag):
    short, metavar = SHARED[flag]
    seen = [(path, _options(c)[flag]) for path, c in LEAVES if flag in _options(c)]
    assert len(seen) >= 2, flag
    for path, opt in seen:
        assert opt.metavar == metavar, (path, flag, opt.metavar)
        if short is not None:
            assert short in opt.opts + opt.secondary_opts, (path, flag, opt.opts)
    if flag in ("--checkpoint", "--model"):
        assert len({opt.help for _, opt in seen}) == 1, flag  # one definition, one text


def test_progress_and_device_are_on_every_command_that_runs_a_model():
    for path, command in LEAVES:
        opts = _options(command)
        # filters runs no model; inspect runs one forward pass of zeros on the CPU
        if "--checkpoint" in opts and path not in ("deconvviz filters", "deconvviz inspect"):
            assert "--device" in opts and "--model" in opts, path
            assert "--progress" in opts, path
        if "--progress" in opts:
            assert opts["--progress"].secondary_opts == ["--no-progress"], path
            assert opts["--progress"].help.startswith("Show progress bars on stderr"), path
            assert opts["--progress"].default is None, path  # on only when stderr is a tty


def test_train_download_names_the_dataset_each_command_fetches():
    train = cli.commands["train"]
    assert isinstance(train, click.Group)
    rnn = _options(train.commands["rnn"])["--download"].help
    lenet = _options(train.commands["lenet5"])["--download"].help
    assert "MNIST" in rnn and "CIFAR" not in rnn
    assert "CIFAR-10" in lenet and "MNIST" not in lenet


def test_layer_is_repeatable_where_several_layers_make_sense():
    for name in ("reconstruct", "report", "stats", "filters", "invariance", "correspondence"):
        assert _options(cli.commands[name])["--layer"].multiple, name
    for name in ("occlude", "sanity", "sensitivity"):  # one layer's maps by definition
        assert not _options(cli.commands[name])["--layer"].multiple, name


def test_messages_name_only_options_that_exist():
    # every --flag written in a string of the library or the CLI (error messages, help) is one
    # the app has: no '--model-factory' when the option is '--model'
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    known = {"--help", "--version"}
    known |= {"--nproc_per_node", "--nnodes"}  # torchrun's own, in the atlas's help
    for _, command in COMMANDS:
        for p in command.params:
            known.update(o for o in [*p.opts, *getattr(p, "secondary_opts", [])])
    unknown = []
    for folder in ("src/deconvviz", "cli/deconvviz_cli"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", node.value):
                        if flag not in known:
                            unknown.append(f"{path.relative_to(root)}:{node.lineno} {flag}")
    assert unknown == []
