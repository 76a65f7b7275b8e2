"""docs/cli.md is generated from the click app (scripts/gen_cli_docs.py) and must match it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from deconvviz_cli.main import cli

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_cli_reference_is_up_to_date():
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == _generator().render(), (
        "docs/cli.md is out of date: run python scripts/gen_cli_docs.py"
    )


def test_cli_reference_documents_every_command_and_option():
    text = _generator().render()
    for name, command in cli.commands.items():
        assert f"### `deconvviz {name}`" in text
        subcommands = getattr(command, "commands", {})
        for sub, subcommand in subcommands.items():
            assert f"#### `deconvviz {name} {sub}`" in text
            for param in subcommand.params:
                if getattr(param, "hidden", False):  # an older spelling kept as an alias
                    continue
                for opt in getattr(param, "opts", []):
                    if opt.startswith("--"):
                        assert opt in text, f"{name} {sub} {opt}"
        for param in command.params:
            if getattr(param, "hidden", False):  # an older spelling kept as an alias
                continue
            for opt in getattr(param, "opts", []):
                if opt.startswith("--"):
                    assert opt in text, f"{name} {opt}"
    # help is wrapped at a fixed width, whatever the terminal the docs were generated in
    blocks = re.findall(r"```text\n(.*?)```", text, flags=re.S)
    assert blocks and max(len(line) for b in blocks for line in b.splitlines()) <= 88


def test_generator_check_mode_detects_drift(tmp_path, monkeypatch, capsys):
    gen = _generator()
    monkeypatch.setattr(gen, "DOC", tmp_path / "cli.md")
    (tmp_path / "cli.md").write_text("stale\n")
    assert gen.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
