"""Messages that lead somewhere: the model's errors are the model's, Ctrl-C names --resume where
a command has it, a resumed job says where it resumes, no option that does not exist is
suggested, and progress bars stay out of logs."""

from __future__ import annotations

import importlib
import re

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import deconvviz.export.measures
from deconvviz.analyses.scan import scan
from deconvviz.base.errors import DataError
from deconvviz.sources.data import load_dataset
from deconvviz_cli.main import cli
from deconvviz_cli.options import _progress
from scan_models import scan_data, scan_model
from zoo import FunctionalNet


@pytest.fixture
def big_image_and_model(tmp_path):
    torch.manual_seed(0)
    torch.save(FunctionalNet().state_dict(), tmp_path / "net.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "big.jpg")
    return tmp_path


@pytest.mark.parametrize("command", ["occlude", "compare", "reconstruct"])
def test_an_error_in_the_users_forward_is_the_models_and_suggests_image_size(
    big_image_and_model, command
):
    # FunctionalNet takes 16x16 images: on 60x80 its own fc layer fails
    d = big_image_and_model
    res = CliRunner().invoke(
        cli,
        [command, "-c", str(d / "net.pt"), "--model", "zoo:FunctionalNet"]
        + ["--image", str(d / "big.jpg"), "--out", str(d / command)],
    )
    assert res.exit_code == 1
    (line,) = res.stderr.strip().splitlines()
    assert "a bug in deconvviz" not in line
    assert "forward pass" in line and "--image-size" in line
    assert "mat1 and mat2 shapes cannot be multiplied" in line


def test_a_bug_in_deconvviz_is_still_called_one(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("deconvviz's own mistake")

    monkeypatch.setattr(deconvviz.export.measures, "layer_table", broken)
    res = CliRunner().invoke(cli, ["inspect", "--model", "zoo:FunctionalNet"])
    assert res.exit_code == 1 and "a bug in deconvviz" in res.stderr


def test_ctrl_c_names_resume_only_where_the_command_has_it(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(
        importlib.import_module("deconvviz.export.measures"), "layer_table", interrupted
    )
    res = CliRunner().invoke(cli, ["inspect", "--model", "zoo:FunctionalNet"])
    assert res.exit_code == 130 and "Interrupted" in res.stderr and "--resume" not in res.stderr
    monkeypatch.setattr(importlib.import_module("deconvviz.export.atlas"), "scan", interrupted)
    torch.save(FunctionalNet().state_dict(), tmp_path / "net.pt")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.savez_compressed(
        data / "cifar10.npz",
        x_train=rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
        y_train=np.arange(4, dtype=np.uint8),
        x_test=rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
        y_test=np.arange(4, dtype=np.uint8),
    )
    res = CliRunner().invoke(
        cli,
        ["atlas", "-c", str(tmp_path / "net.pt"), "--model", "zoo:FunctionalNet"]
        + ["--data-dir", str(data), "--dataset", "cifar10", "--out", str(tmp_path / "site")],
    )
    assert res.exit_code == 130, res.output
    assert "--resume to continue" in res.stderr


def test_a_resumed_scan_says_where_it_resumes(tmp_path, capfd):
    model, data = scan_model(), scan_data(12)
    state = tmp_path / "scan.pt"
    scan(model, data, "conv", k=3, batch_size=4, progress=False, state=state)
    assert "resuming" not in capfd.readouterr().err
    scan(model, data, "conv", k=3, batch_size=4, progress=False, state=state, resume=True)
    assert "resuming from 12 of 12 images" in capfd.readouterr().err


def test_no_message_suggests_a_download_option_that_command_lacks(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path, "auto", "test")
    text = str(err.value)
    # every --download suggested is named with a command that has it
    found = re.findall(r"deconvviz ([\w -]+?) --download", text)
    assert found and len(found) == text.count("--download")
    for words in found:
        command = cli
        for word in words.split():
            command = command.commands[word]  # type: ignore[attr-defined]
        assert any("--download" in p.opts for p in command.params), words


def test_progress_bars_only_on_a_terminal(monkeypatch):
    ctx = click.Context(cli)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert _progress(ctx, None, None) is False  # type: ignore[arg-type]
    assert _progress(ctx, None, True) is True  # type: ignore[arg-type]
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert _progress(ctx, None, None) is True  # type: ignore[arg-type]
    assert _progress(ctx, None, False) is False  # type: ignore[arg-type]
