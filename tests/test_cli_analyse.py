"""``deconvviz occlude``, ``filters`` and ``stats`` on tiny runs and datasets built in tmp_path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch.utils.data import DataLoader

from deconvviz.analyses.filters import filter_rms
from deconvviz.analyses.occlusion import occlusion
from deconvviz.analyses.stats import activation_stats, hidden_state_stats, report_lines
from deconvviz.base.images import load_images
from deconvviz.render.filters import filter_grid
from deconvviz.sources.checkpoint import load_run, save_run
from deconvviz.sources.data import dataset_for_config
from deconvviz.sources.models import LeNet5, RNNClassifier
from deconvviz_cli.main import cli


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = LeNet5(in_channels=1, image_size=28, init="pytorch")
    with torch.no_grad():
        model.conv1.weight[3] = 0.0  # a dead filter
    run = tmp_path_factory.mktemp("runs") / "lenet"
    save_run(run, model, {"model": model.config}, {"final_test_acc": 0.1})
    return run


@pytest.fixture(scope="module")
def course_data(tmp_path_factory) -> Path:
    """The course's layout: Train/<label>/*.png and Test/<label>/*.png, 28x28 greyscale."""
    root = tmp_path_factory.mktemp("course")
    rng = np.random.default_rng(0)
    for split, n in (("Train", 1), ("Test", 2)):
        for label in range(10):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"Image{i:05d}.png")
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 4), ("t10k", 6)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    return root


def invoke(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def test_occlude_writes_the_figure_and_the_same_result_as_the_library(lenet_run, tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "cat.png")
    out = tmp_path / "occ"
    res = invoke(
        "occlude",
        "--checkpoint",
        lenet_run,
        "--image",
        tmp_path / "cat.png",
        "--size",
        8,
        "--stride",
        4,
        "--layer",
        "conv2",
        "--out",
        out,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    assert res.output.count("\n") == 1 and res.output.startswith(f"wrote {out / 'occlusion.png'}")
    with Image.open(out / "occlusion.png") as im:
        assert im.size[0] > 4 * im.size[1]  # a row of panels
    saved = torch.load(out / "occlusion.pt", weights_only=True)
    # the same computation through the library: the one image loader every command uses
    # (greyscale, centre crop to square, bicubic resize to 28x28, [0, 1])
    x = load_images([tmp_path / "cat.png"], 1, 28)
    model = load_run(lenet_run).model
    want = occlusion(model, x, size=8, stride=4, layer="conv2", progress=False)
    torch.testing.assert_close(saved["prob"], want.prob)
    torch.testing.assert_close(saved["feature"], want.feature)
    assert saved["layer"] == "conv2" and saved["prob"].shape == (1, 6, 6)
    low = float(want.prob.min())
    assert f"lowest {low:.3f}" in res.output


def test_occlude_errors_are_one_line(lenet_run, tmp_path):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    res = invoke(
        "occlude",
        "--checkpoint",
        lenet_run,
        "--image",
        tmp_path / "x.png",
        "--layer",
        "conv_2",
        "--out",
        tmp_path / "o",
        "--no-progress",
    )
    assert res.exit_code == 1 and "did you mean 'conv2'" in res.output
    (tmp_path / "bad.png").write_bytes(b"not a png")
    res = invoke(
        "occlude",
        "--checkpoint",
        lenet_run,
        "--image",
        tmp_path / "bad.png",
        "--out",
        tmp_path / "o",
        "--no-progress",
    )
    assert res.exit_code == 1 and "cannot read" in res.output
    res = invoke(
        "occlude",
        "--checkpoint",
        lenet_run,
        "--image",
        tmp_path / "x.png",
        "--size",
        40,
        "--out",
        tmp_path / "o",
        "--no-progress",
    )
    assert res.exit_code == 1 and "larger than the images" in res.output
    assert not (tmp_path / "o").exists()


def test_filters_command(lenet_run, tmp_path):
    out = tmp_path / "f"
    res = invoke("filters", "--checkpoint", lenet_run, "--out", out, "--scale", 3)
    assert res.exit_code == 0, res.output
    assert "conv1 1/32" in res.output and "conv2 0/64" in res.output
    summary = json.loads((out / "filters.json").read_text())
    model = load_run(lenet_run).model
    np.testing.assert_allclose(
        summary["layers"]["conv1"]["rms"], filter_rms(model.conv1).numpy(), rtol=1e-6
    )
    assert summary["layers"]["conv1"]["dead"] == [3]
    for name in ("conv1", "conv2"):
        with Image.open(out / f"filters_{name}.png") as im:
            assert im.size == filter_grid(getattr(model, name), scale=3, title=name).size
        assert (out / f"rms_{name}.png").is_file()
    res = invoke("filters", "--checkpoint", lenet_run, "--layer", "fc1", "--out", out)
    assert res.exit_code == 1 and "not a Conv2d" in res.output


def test_stats_command_reports_the_same_numbers(lenet_run, course_data, tmp_path):
    out = tmp_path / "s"
    res = invoke(
        "stats",
        "--checkpoint",
        lenet_run,
        "--data-dir",
        course_data,
        "--out",
        out,
        "--batch-size",
        7,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    run = load_run(lenet_run)
    ds = dataset_for_config(run.config, course_data, split="test")
    assert len(ds) == 20
    want = activation_stats(run.model, DataLoader(ds, batch_size=7), progress=False)
    lines = res.output.strip().splitlines()
    assert lines[:2] == report_lines(want)
    assert re.fullmatch(r"h_conv1_stats: mean = \S+; var = \S+", lines[0])
    data = json.loads((out / "stats.json").read_text())
    assert data["layers"]["relu1"]["mean"] == pytest.approx(want["relu1"].mean, rel=1e-9)
    assert data["layers"]["relu2"]["var"] == pytest.approx(want["relu2"].var, rel=1e-9)
    md = (out / "stats.md").read_text()
    assert lines[0] in md and "| relu2 | h_conv2 |" in md
    assert (out / "hist_relu1.png").is_file() and (out / "hist_relu2.png").is_file()


def test_stats_command_rnn_hidden_states(mnist_data, tmp_path):
    torch.manual_seed(3)
    model = RNNClassifier(cell="rnn", hidden=6)
    run = tmp_path / "rnn"
    save_run(run, model, {"model": model.config}, {})
    out = tmp_path / "s"
    res = invoke(
        "stats",
        "--checkpoint",
        run,
        "--data-dir",
        mnist_data,
        "--out",
        out,
        "--batch-size",
        4,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    ds = dataset_for_config({"model": model.config}, mnist_data, split="test")
    want = hidden_state_stats(load_run(run).model, DataLoader(ds, batch_size=4), progress=False)
    data = json.loads((out / "stats.json").read_text())["hidden_states"]
    np.testing.assert_allclose(data["mean"], want.mean.numpy(), rtol=1e-9, atol=1e-12)
    assert len(data["var"]) == 28 and (out / "hidden_states.png").is_file()
    assert f"mean = {want.overall_mean:.4g}" in res.output


def test_stats_command_missing_data(lenet_run, tmp_path):
    res = invoke(
        "stats",
        "--checkpoint",
        lenet_run,
        "--data-dir",
        tmp_path / "nowhere",
        "--out",
        tmp_path / "s",
        "--no-progress",
    )
    assert res.exit_code == 1 and "does not exist" in res.output
    assert not (tmp_path / "s").exists()
