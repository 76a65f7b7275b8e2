"""The layer map in docs/architecture.md is the code's: imports go one way, and never in a circle.

The test reads the layer table of ``docs/architecture.md``, walks every import statement of every
module of ``deconvviz`` and ``deconvviz_cli`` -- function-level ones included, since those are
how cycles hide -- and fails on a module the map does not place, on an import from a lower layer
into a higher one, and on any cycle.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

from deconvviz._compat import MOVED

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "deconvviz": ROOT / "src" / "deconvviz",
    "deconvviz_cli": ROOT / "cli" / "deconvviz_cli",
}
DOC = ROOT / "docs" / "architecture.md"


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for top, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join((top, *parts))] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every deconvviz module ``name`` imports, wherever the import statement is."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


_MODULE_STRING = re.compile(r"^(deconvviz(?:\.[A-Za-z_]\w*)+)(?::\w+)?$")


def _lookups(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules ``name`` names in a string (``"deconvviz.render.stats:histogram_figure"``), to
    import by name at run time: dependencies that no import statement shows. The bare package
    name is not one: importing any of its modules has already run it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = _MODULE_STRING.match(node.value)
            if m and m.group(1) in known and m.group(1) != name:
                found.add(m.group(1))
    return found


def _named_lookups_allowed() -> list[tuple[str, str]]:
    """``(from, to)`` module patterns of the doc's "Looked up by name" table."""
    text = DOC.read_text(encoding="utf-8").split("## Looked up by name", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows.append((cells[0].strip("`"), cells[1].strip("`")))
    return rows


def _short(module: str) -> str:
    return module.removeprefix("deconvviz.") if module != "deconvviz" else "deconvviz"


def _layer_table() -> list[tuple[str, int, list[str]]]:
    """``(layer, rank, module patterns)`` rows of the doc's "Layers" table."""
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            rows.append((cells[1], int(cells[0]), re.findall(r"`([^`]+)`", cells[2])))
    return rows


def _rank_of(module: str, table: list[tuple[str, int, list[str]]]) -> list[tuple[str, int]]:
    short = module.removeprefix("deconvviz.") if module != "deconvviz" else "deconvviz"
    return [
        (layer, rank)
        for layer, rank, patterns in table
        for p in patterns
        if fnmatch.fnmatchcase(short, p) or fnmatch.fnmatchcase(module, p)
    ]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def test_the_doc_has_a_layer_table() -> None:
    table = _layer_table()
    assert [layer for layer, _, _ in table][:2] == ["base", "core"], table
    assert [rank for _, rank, _ in table] == sorted(rank for _, rank, _ in table)


def test_every_module_has_exactly_one_layer(graph: dict[str, set[str]]) -> None:
    table = _layer_table()
    unplaced = sorted(m for m in graph if not _rank_of(m, table))
    twice = sorted(m for m in graph if len({r for r in _rank_of(m, table)}) > 1)
    assert not unplaced, f"modules missing from docs/architecture.md's layer table: {unplaced}"
    assert not twice, f"modules placed in two layers: {twice}"


def test_every_name_in_the_table_is_a_module(graph: dict[str, set[str]]) -> None:
    for layer, _, patterns in _layer_table():
        for p in patterns:
            hits = [
                m
                for m in graph
                if fnmatch.fnmatchcase(m.removeprefix("deconvviz."), p) or fnmatch.fnmatchcase(m, p)
            ]
            assert hits, f"docs/architecture.md places {p!r} in {layer!r}, but no module matches"


def test_imports_never_go_up(graph: dict[str, set[str]]) -> None:
    table = _layer_table()
    upward = []
    for module, targets in graph.items():
        (layer, rank), *_ = _rank_of(module, table)
        for t in sorted(targets):
            (tlayer, trank), *_ = _rank_of(t, table)
            if trank > rank:
                upward.append(f"{module} ({layer}) imports {t} ({tlayer})")
    assert not upward, "imports from a lower layer into a higher one:\n" + "\n".join(upward)


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    # Tarjan's strongly connected components; a package's __init__ importing its own
    # submodules is how packages re-export, so those edges are not part of a cycle.
    paths = _modules()
    edges = {
        m: {t for t in ts if not (t.startswith(m + ".") and paths[m].name == "__init__.py")}
        for m, ts in graph.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_library_never_imports_the_cli(graph: dict[str, set[str]]) -> None:
    bad = [
        f"{m} -> {t}"
        for m, ts in graph.items()
        if m.startswith("deconvviz.") or m == "deconvviz"
        for t in ts
        if t.startswith("deconvviz_cli")
    ]
    assert not bad


def test_the_walker_sees_function_level_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "def f():\n    from deconvviz.export.report import write_report\n"
        "    import deconvviz.export.atlas\n"
    )
    got = _imports("deconvviz.x", src, {"deconvviz.export.report", "deconvviz.export.atlas"})
    assert got == {"deconvviz.export.report", "deconvviz.export.atlas"}


def test_upward_lookups_by_name_are_the_documented_ones() -> None:
    mods = _modules()
    table = _layer_table()
    allowed = _named_lookups_allowed()
    assert allowed, "docs/architecture.md lost its 'Looked up by name' table"
    used: set[tuple[str, str]] = set()
    hidden = []
    for module, path in mods.items():
        (_, rank), *_ = _rank_of(module, table)
        for target in sorted(_lookups(module, path, set(mods))):
            (_, trank), *_ = _rank_of(target, table)
            if trank <= rank:
                continue
            rows = [
                (f, t)
                for f, t in allowed
                if fnmatch.fnmatchcase(_short(module), f) and fnmatch.fnmatchcase(_short(target), t)
            ]
            used.update(rows)
            if not rows:
                hidden.append(f"{module} looks up {target} by name")
    assert not hidden, "upward run-time lookups missing from docs/architecture.md:\n" + "\n".join(
        hidden
    )
    assert used == set(allowed), f"documented lookups that the code no longer makes: {allowed}"


def test_the_notebook_figures_resolve_to_render_functions() -> None:
    import importlib

    from deconvviz.base._display import FIGURES

    for cls, target in FIGURES.items():
        module, func = target.split(":")
        assert module.startswith("deconvviz.render."), (cls, target)
        assert callable(getattr(importlib.import_module(module), func)), (cls, target)


def test_the_cli_families_in_the_doc_are_the_command_modules() -> None:
    import importlib

    import click

    text = DOC.read_text(encoding="utf-8").split("## The CLI", 1)[1].split("\n## ", 1)[0]
    doc: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`commands/"):
            doc[cells[0].strip("`")] = set(re.findall(r"`([^`]+)`", cells[1]))
    folder = PACKAGES["deconvviz_cli"] / "commands"
    code: dict[str, set[str]] = {}
    for path in sorted(folder.glob("[!_]*.py")):
        module = importlib.import_module(f"deconvviz_cli.commands.{path.stem}")
        mine = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, click.Command)
            and getattr(obj.callback, "__module__", None) == module.__name__
        ]
        sub = {c for g in mine if isinstance(g, click.Group) for c in g.commands.values()}
        code[f"commands/{path.name}"] = {c.name for c in mine if c not in sub and c.name}
    assert doc == code


def test_no_command_module_imports_another(graph: dict[str, set[str]]) -> None:
    bad = [
        f"{m} -> {t}"
        for m, ts in graph.items()
        if m.startswith("deconvviz_cli.commands.")
        for t in ts
        if t.startswith("deconvviz_cli.commands.")
    ]
    assert not bad, bad


def test_only_the_tracer_registers_hooks() -> None:
    hook_calls = re.compile(
        r"\.register_(forward|forward_pre|full_backward|full_backward_pre)_hook\("
    )
    owners = [
        str(path.relative_to(ROOT))
        for path in _modules().values()
        if hook_calls.search(path.read_text(encoding="utf-8"))
    ]
    assert owners == ["src/deconvviz/engine/tracer.py"], owners


# ----------------------------------------------------------------------------- one door per name

#: the old module paths (deconvviz._compat, kept one release): the library never imports them
SHIMS = set(MOVED)
#: package fronts: they gather their modules' names for users; the library imports the modules
FRONTS = {"deconvviz", "deconvviz.engine"}


def _through_a_shim(name: str, path: Path) -> list[str]:
    """``from X import n`` statements of module ``name`` that reach ``n`` through a module other
    than the one defining it (a shim, a package front, or another module's re-export)."""
    import importlib
    import inspect

    bad: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
            continue
        src = node.module
        if not src.startswith("deconvviz") or src.startswith("deconvviz_cli"):
            continue
        if src in SHIMS or (src in FRONTS and name not in FRONTS):
            bad.append(f"{name}: from {src} import ...")
            continue
        module = importlib.import_module(src)
        for alias in node.names:
            obj = getattr(module, alias.name, None)
            home = getattr(obj, "__module__", None)
            defined = inspect.isclass(obj) or inspect.isfunction(obj)
            elsewhere = bool(home) and home != src and str(home).startswith("deconvviz")
            if defined and elsewhere and not src.startswith(f"{name}."):
                bad.append(f"{name}: {alias.name} from {src} (defined in {home})")
    return bad


def test_the_library_imports_each_name_from_its_own_module() -> None:
    exempt = SHIMS | {"deconvviz", "deconvviz.engine"}
    bad = [
        line
        for name, path in sorted(_modules().items())
        if name.startswith("deconvviz.")
        and name not in exempt
        and not name.startswith("deconvviz.render")
        for line in _through_a_shim(name, path)
    ]
    assert not bad, "\n".join(bad)


def test_the_shim_test_sees_a_shim_import(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "from deconvviz.rules import get_rule\nfrom deconvviz.engine import attach\n"
        "from deconvviz.engine.tracer import split_call\n",
        encoding="utf-8",
    )
    got = _through_a_shim("deconvviz.fake", path)
    assert len(got) == 3, got


def test_no_engine_function_is_over_60_lines() -> None:
    """The engine stays in pieces one can read (issue 19: the split of ``Deconvnet``)."""
    long = []
    for path in sorted((PACKAGES["deconvviz"] / "engine").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > 60:
                    long.append(f"{path.name}:{node.name} ({size} lines)")
    assert not long, long


# ----------------------------------------------------------------------------- folders are layers

#: the layers that are not a folder of src/deconvviz: the front door and the CLI package
FRONT_DOOR = {"__init__", "_compat"}


def test_each_library_layer_is_one_folder() -> None:
    """A layer row of the library names one folder (``base`` ``base.*``), and that folder is a
    package; the top of ``src/deconvviz`` holds the front door and nothing else."""
    root = PACKAGES["deconvviz"]
    for layer, _, patterns in _layer_table():
        if layer in ("api", "cli"):
            continue
        folder = patterns[0]
        assert patterns == [folder, f"{folder}.*"], (layer, patterns)
        assert (root / folder / "__init__.py").is_file(), f"layer {layer!r}: no folder {folder}/"
    top = {p.stem for p in root.glob("*.py")}
    assert top == FRONT_DOOR, f"modules at the top of src/deconvviz: {sorted(top - FRONT_DOOR)}"
    folders = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    layered = {pats[0] for layer, _, pats in _layer_table() if layer not in ("api", "cli")}
    assert folders == layered, f"folders the layer table does not name: {folders ^ layered}"


def test_the_diagram_names_every_folder() -> None:
    diagram = DOC.read_text(encoding="utf-8").split("```", 2)[1]
    for layer, _, patterns in _layer_table():
        if layer not in ("api", "cli"):
            assert f"deconvviz/{patterns[0]}/" in diagram, (layer, patterns[0])


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_is_the_new_module_with_a_warning(old: str) -> None:
    import importlib
    import sys

    new = importlib.import_module(MOVED[old])
    parent, _, leaf = old.rpartition(".")
    saved = sys.modules.pop(old, None), vars(sys.modules[parent]).get(leaf)
    try:
        with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED[old]}") as rec:
            exec(compile(f"import {old}", __file__, "exec"), {})  # a user's import line
        assert sys.modules[old] is new and getattr(sys.modules[parent], leaf) is new
        assert rec[0].filename == __file__  # the warning points at the importing line
        assert not (PACKAGES["deconvviz"] / f"{leaf}.py").exists()
    finally:
        sys.modules.pop(old, None)
        if saved[0] is not None:
            sys.modules[old] = saved[0]
        if saved[1] is not None:
            setattr(sys.modules[parent], leaf, saved[1])
        else:  # the import set the package's attribute; the attribute test wants it unset
            vars(sys.modules[parent]).pop(leaf, None)


def test_a_pickle_naming_an_old_path_loads() -> None:
    import pickle

    from deconvviz.sources.models import LeNet5

    blob = pickle.dumps(LeNet5, protocol=0).replace(
        b"deconvviz.sources.models", b"deconvviz.models"
    )
    with pytest.warns(DeprecationWarning, match="deconvviz.models moved"):
        assert pickle.loads(blob) is LeNet5


def test_no_function_of_the_package_is_over_60_lines_of_code() -> None:
    """Beyond the engine (whole functions, above): no function anywhere in the library has
    more than 60 lines of code, its docstring aside."""
    long = []
    for path in sorted(PACKAGES["deconvviz"].rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    size -= (first.end_lineno or first.lineno) - first.lineno + 1
                if size > 60:
                    long.append(f"{path.relative_to(PACKAGES['deconvviz'])}:{node.name} ({size})")
    assert not long, long


def test_an_old_module_name_as_an_attribute_of_the_package_warns() -> None:
    import deconvviz
    from deconvviz.analyses import topk

    vars(deconvviz).pop("topk", None)  # as in a fresh process, where nothing imported it
    with pytest.warns(
        DeprecationWarning, match="deconvviz.topk moved to deconvviz.analyses.topk"
    ) as rec:
        assert deconvviz.topk is topk  # type: ignore[attr-defined]
    assert rec[0].filename == __file__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        deconvviz.nope  # type: ignore[attr-defined]  # noqa: B018
