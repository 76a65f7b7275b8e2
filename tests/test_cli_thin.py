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
