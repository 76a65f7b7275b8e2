"""--model names code: a name that cannot be a model factory is refused before it is called."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from deconvviz.base.errors import CheckpointError
from deconvviz.sources.loading import resolve_factory
from deconvviz_cli.main import cli

FACTORIES = """
from pathlib import Path
from torch import nn

MARK = Path(__file__).with_name("called")


def not_a_model() -> dict:
    MARK.write_text("called")
    return {}


def a_number():
    MARK.write_text("called")
    return 3


def model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 2, 3))
"""


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("os:system", "built-in or standard-library function"),
        ("subprocess:run", "built-in or standard-library function"),
        ("builtins:eval", "built-in or standard-library function"),
        ("collections:OrderedDict", "not an nn.Module"),
    ],
)
def test_names_that_cannot_build_a_model_are_refused_uncalled(spec, why):
    with pytest.raises(CheckpointError, match=why):
        resolve_factory(spec)


def test_a_file_factory_is_checked_before_and_after_the_call(tmp_path):
    (tmp_path / "f.py").write_text(FACTORIES)
    with pytest.raises(CheckpointError, match="declared to return dict.*not called"):
        resolve_factory(f"{tmp_path / 'f.py'}:not_a_model")
    assert not (tmp_path / "called").exists()
    assert callable(resolve_factory(f"{tmp_path / 'f.py'}:model"))
    got = CliRunner().invoke(
        cli, ["inspect", "--model", f"{tmp_path / 'f.py'}:a_number", "--image-size", "8"]
    )
    assert got.exit_code == 1
    assert "returned a int, not an nn.Module" in got.output
    assert len(got.output.strip().splitlines()) == 1


def test_cli_model_os_system_runs_no_command(tmp_path):
    mark = tmp_path / "pwned"
    got = CliRunner().invoke(
        cli,
        ["inspect", "--model", "os:system", "--model-arg", f"command=touch {mark}"],
    )
    assert got.exit_code == 1, got.output
    assert "it was not called" in got.output and len(got.output.strip().splitlines()) == 1
    assert not mark.exists()
