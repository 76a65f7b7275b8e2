"""The CLI is parse -> one library call -> one line: it reaches the library only through public
names. No module of ``deconvviz_cli`` imports ``deconvviz.base._io`` (or any other ``_``-prefixed
module of ``deconvviz``) or a ``_``-prefixed name from a ``deconvviz`` module; the CLI's own
private helpers (``deconvviz_cli._datasets``, ``deconvviz_cli._output``) are its business."""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[1] / "cli" / "deconvviz_cli"


def private_imports(source: str) -> list[str]:
    """Every ``deconvviz`` import in ``source`` (function-level ones included) that names a
    private module or a private name, as ``module:name``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "deconvviz" and any(p.startswith("_") for p in parts[1:]):
                    found.append(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "deconvviz":
                continue
            if any(p.startswith("_") for p in parts[1:]):
                found.append(node.module)
                continue
            found += [
                f"{node.module}:{a.name}"
                for a in node.names
                if a.name.startswith("_") and a.name != "__version__"
            ]
    return found


def test_the_checker_sees_private_imports() -> None:
    src = (
        "from deconvviz.base._io import save_figure\n"
        "def f():\n    from deconvviz.export.atlas import _about\n    import deconvviz.base._util\n"
        "from deconvviz import __version__\nfrom deconvviz_cli._output import write_result\n"
        "from deconvviz.export.report import SECTIONS\n"
    )
    assert private_imports(src) == [
        "deconvviz.base._io",
        "deconvviz.export.atlas:_about",
        "deconvviz.base._util",
    ]


def test_no_cli_module_imports_a_private_library_name() -> None:
    files = sorted(CLI.rglob("*.py"))
    assert len(files) > 10
    bad = {
        str(f.relative_to(CLI)): hits
        for f in files
        if (hits := private_imports(f.read_text(encoding="utf-8")))
    }
    assert bad == {}


# ------------------------------------------------------------------ parse -> one library call

#: what a command may call besides its one call: reading its inputs (the model and data
#: sources, errors, option parsers that live with what they parse)
INPUTS = (
    "deconvviz.sources.",
    "deconvviz.base.errors:",
    "deconvviz.serve.explorer:",
    "deconvviz.training.train:TrainConfig",
    "deconvviz.analyses.correspondence:read_boxes",
)
#: the calls that do a command's work: compute, draw, write (or serve)
WORK = ("deconvviz.export.", "deconvviz.training.", "deconvviz.serve.app:")
#: commands with more than one mode, each mode one call
MODES = {"reconstruct_cmd": 2}


def library_calls(source: str) -> dict[str, set[str]]:
    """For each click command of a command module: the ``deconvviz`` callables it calls,
    following the module's own helper functions, as ``module:name``."""
    tree = ast.parse(source)
    top = {
        a.asname or a.name: n.module
        for n in tree.body
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("deconvviz.")
        for a in n.names
    }
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    out: dict[str, set[str]] = {}
    for name, fn in funcs.items():
        if not any("command" in ast.unparse(d) for d in fn.decorator_list):
            continue
        seen: set[str] = set()
        stack, calls = [fn], set()
        while stack:
            g = stack.pop()
            if g.name in seen:
                continue
            seen.add(g.name)
            imports = dict(top)
            for n in ast.walk(g):
                if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("deconvviz."):
                    imports.update({a.asname or a.name: n.module for a in n.names})
            for n in ast.walk(g):
                if not isinstance(n, ast.Call):
                    continue
                f = n.func
                head = f.value if isinstance(f, ast.Attribute) else f
                if isinstance(head, ast.Name) and head.id in imports:
                    tail = f".{f.attr}" if isinstance(f, ast.Attribute) else ""
                    calls.add(f"{imports[head.id]}:{head.id}{tail}")
                elif isinstance(head, ast.Name) and head.id in funcs:
                    stack.append(funcs[head.id])
        out[name] = calls
    return out


def test_every_command_makes_one_library_call() -> None:
    found = {}
    for path in sorted((CLI / "commands").glob("[!_]*.py")):
        for command, calls in library_calls(path.read_text(encoding="utf-8")).items():
            work = {c for c in calls if c.startswith(WORK) and not c.startswith(INPUTS)}
            other = {c for c in calls if not c.startswith(WORK + INPUTS)}
            found[command] = work
            assert not other, f"{path.name}:{command} also calls {sorted(other)}"
            if command not in ("train", "sweep"):  # click groups: their subcommands work
                assert 1 <= len(work) <= MODES.get(command, 1), (command, sorted(work))
    assert len(found) > 15


def test_the_call_counter_sees_a_second_call() -> None:
    src = (
        "import click\nfrom deconvviz.export.measures import write_stats\n"
        "from deconvviz.analyses.stats import activation_stats\n"
        "@click.command()\ndef cmd():\n    helper()\n    write_stats(1)\n"
        "def helper():\n    activation_stats(2)\n"
    )
    assert library_calls(src) == {
        "cmd": {
            "deconvviz.export.measures:write_stats",
            "deconvviz.analyses.stats:activation_stats",
        }
    }
