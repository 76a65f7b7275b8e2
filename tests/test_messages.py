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


def _unreadable_files(folder):
    """A downloaded .pth cut short, an empty one, a PNG and text under a .pth name, and a
    legacy-format checkpoint cut short: what each is, as the message must say."""
    torch.manual_seed(0)
    whole = folder / "whole.pth"
    torch.save(FunctionalNet().state_dict(), whole)
    data = whole.read_bytes()
    (folder / "cut.pth").write_bytes(data[: len(data) * 9 // 10])
    (folder / "empty.pth").write_bytes(b"")
    Image.new("RGB", (4, 4)).save(folder / "picture.pth", format="PNG")
    (folder / "notes.pth").write_text("not weights\n")
    torch.save(
        FunctionalNet().state_dict(), folder / "old.pth", _use_new_zipfile_serialization=False
    )
    old = (folder / "old.pth").read_bytes()
    (folder / "old.pth").write_bytes(old[: len(old) - 20])
    return {
        "cut.pth": "is truncated",
        "empty.pth": "is empty",
        "picture.pth": "is not a PyTorch checkpoint",
        "notes.pth": "is not a PyTorch checkpoint",
        "old.pth": "is a damaged PyTorch checkpoint",
    }


def test_an_unreadable_checkpoint_is_one_plain_line_without_torchs_internals(tmp_path, monkeypatch):
    monkeypatch.delenv("DECONVVIZ_TRACEBACK", raising=False)
    for name, what in _unreadable_files(tmp_path).items():
        res = CliRunner().invoke(
            cli, ["inspect", "-c", str(tmp_path / name), "--model", "zoo:FunctionalNet"]
        )
        assert res.exit_code == 1, res.output
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith(f"Error: {tmp_path / name} {what}"), line
        assert "pass the" in line, line  # the right file
        for torch_words in ("PytorchStreamReader", "central directory", "miniz", "Unpickl"):
            assert torch_words not in line, line
        assert "train again" not in line, line  # nobody trained a downloaded file
        if what != "is not a PyTorch checkpoint":
            assert "download or save it again" in line, line


def test_the_traceback_switch_shows_torchs_own_words_on_an_unreadable_checkpoint(
    tmp_path, monkeypatch
):
    _unreadable_files(tmp_path)
    monkeypatch.setenv("DECONVVIZ_TRACEBACK", "1")
    res = CliRunner().invoke(
        cli, ["inspect", "-c", str(tmp_path / "cut.pth"), "--model", "zoo:FunctionalNet"]
    )
    assert res.exit_code != 0 and "truncated" in str(res.exception)  # raised, not one line
    cause = res.exception.__cause__  # what torch.load said, kept for the traceback
    assert isinstance(cause, (RuntimeError, OSError)) and not isinstance(cause, DataError)


def test_an_unnamed_class_reads_as_a_class_in_occlude_and_its_figure(tmp_path):
    from deconvviz.analyses.occlusion import occlusion
    from deconvviz.render.occlusion import occlusion_figure

    torch.manual_seed(0)
    net = FunctionalNet().eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        t = int(net(x).argmax())  # the predicted class, the default target
    res = CliRunner().invoke(
        cli,
        ["occlude", "-c", str(tmp_path / "net.pt"), "--model", "zoo:FunctionalNet"]
        + ["--image", str(tmp_path / "x.png"), "--image-size", "16", "--size", "8"]
        + ["--stride", "8"]
        + ["--out", str(tmp_path / "o")],
    )
    assert res.exit_code == 0, res.output
    assert f": p(class {t}) = " in res.stdout, res.stdout  # not p(3), which reads as a number
    result = occlusion(net, x, size=8, stride=8, progress=False)

    def titles(names):
        fig = occlusion_figure(result, x, 0, class_names=names)
        return " ".join(ax.get_title() for ax in fig.axes)

    assert f"p(class {t})" in titles(None) and f"p({t})" not in titles(None)
    names = ["ant", "bee", "cat", "dog", "eel"]
    assert f"p({names[t]})" in titles(names)
