"""``deconvviz invariance``, ``correspondence``, ``sanity``, ``sensitivity`` and
``train --evolution`` on a tiny run trained here on a dataset in the course's on-disk layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from deconvviz.analyses import invariance
from deconvviz.sources.checkpoint import load_run
from deconvviz.sources.data import load_dataset
from deconvviz_cli.main import cli


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Train/<label>/*.png and Test/<label>/*.png, 8x8 greyscale, 4 classes."""
    root = tmp_path_factory.mktemp("course")
    rng = np.random.default_rng(0)
    for split, n in (("Train", 3), ("Test", 3)):
        for label in range(4):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"Image{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "lenet"
    res = invoke(
        "train",
        "lenet5",
        "--data-dir",
        data,
        "--out",
        out,
        "--iterations",
        2,
        "--batch-size",
        4,
        "--eval-every",
        2,
        "--evolution",
        "conv2",
        "--evolution-channels",
        "0,5",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    assert "feature evolution in" in res.output and len(res.output.strip().splitlines()) == 1
    return out


def test_train_evolution_writes_the_figure_into_the_run(run) -> None:
    info = json.loads((run / "evolution.json").read_text())
    assert info["layer"] == "conv2" and info["channels"] == [0, 5]
    assert info["iterations"] == [0, 2]  # every evaluation point
    assert len(info["values"]) == 2 and len(info["values"][0]) == 2
    with Image.open(run / "evolution.png") as im:
        assert im.format == "PNG"
    assert (run / "checkpoint.pt").is_file()


def test_train_evolution_with_a_wrong_layer_fails_before_training(data, tmp_path) -> None:
    out = tmp_path / "bad"
    res = invoke(
        "train",
        "lenet5",
        "--data-dir",
        data,
        "--out",
        out,
        "--iterations",
        1,
        "--batch-size",
        4,
        "--evolution",
        "conv7",
        "--no-progress",
    )
    assert res.exit_code == 1
    assert "unknown layer 'conv7'" in res.output and "conv1" in res.output
    assert not (out / "checkpoint.pt").exists()


def test_invariance_command_matches_the_library(run, data, tmp_path) -> None:
    out = tmp_path / "inv"
    res = invoke(
        "invariance",
        "--checkpoint",
        run,
        "--data-dir",
        data,
        "--out",
        out,
        "--index",
        0,
        "--index",
        5,
        "--transform",
        "rotate",
        "--values",
        "0,90,180",
        "--layers",
        "conv1,fc1",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    assert len(res.output.strip().splitlines()) == 1 and "invariance_rotate.png" in res.output
    info = json.loads((out / "invariance_rotate.json").read_text())
    ds = load_dataset(data, "cifar10-course", "test")
    x = torch.stack([ds[0][0], ds[5][0]])
    want = invariance(
        load_run(run).model,
        x,
        [ds[0][1], ds[5][1]],
        "rotate",
        [0, 90, 180],
        ["conv1", "fc1"],
        progress=False,
    )
    assert info["dataset_indices"] == [0, 5] and info["values"] == [0.0, 90.0, 180.0]
    assert info["mean_distance"]["fc1"] == pytest.approx(want.distance[1].mean(0).tolist())
    assert (out / "invariance_rotate.png").is_file()


def test_correspondence_command_with_a_box_and_a_boxes_file(run, data, tmp_path) -> None:
    out = tmp_path / "corr"
    res = invoke(
        "correspondence",
        "--checkpoint",
        run,
        "--data-dir",
        data,
        "--out",
        out,
        "--images",
        3,
        "--box",
        "2,2,5,5",
        "--part",
        "centre",
        "--random",
        3,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    info = json.loads((out / "correspondence.json").read_text())
    assert info["parts"] == ["centre"] and info["n_images"] == 3 and info["n_random"] == 3
    assert info["boxes"] == [[[2, 2, 5, 5]] * 3]
    assert (out / "correspondence.md").read_text().startswith("| occlusion |")
    spec = {
        "indices": [1, 2],
        "parts": {"left": [[0, 0, 3, 3], [1, 0, 4, 3]], "right": [[0, 5, 3, 8], [0, 4, 3, 7]]},
    }
    (tmp_path / "boxes.json").write_text(json.dumps(spec))
    out2 = tmp_path / "corr2"
    res = invoke(
        "correspondence",
        "--checkpoint",
        run,
        "--data-dir",
        data,
        "--out",
        out2,
        "--boxes",
        tmp_path / "boxes.json",
        "--random",
        2,
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    info = json.loads((out2 / "correspondence.json").read_text())
    assert info["parts"] == ["left", "right"] and info["dataset_indices"] == [1, 2]


def test_correspondence_defaults_to_a_centred_part_and_bad_boxes_are_one_line(
    run, data, tmp_path
) -> None:
    # without --box, the part is a centred square a quarter of the image side (as --help says)
    res = invoke("correspondence", "--checkpoint", run, "--data-dir", data, "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "c" / "correspondence.json").read_text())
    assert info["parts"] == ["centre"]
    boxes = np.asarray(info["boxes"]).reshape(-1, 4)
    assert (boxes == [3, 3, 5, 5]).all()  # 8x8 images: side 2, centred
    help_text = invoke("correspondence", "--help").output
    assert "centred square" in help_text and "--box" in help_text
    res = invoke(
        "correspondence",
        "--checkpoint",
        run,
        "--data-dir",
        data,
        "--out",
        tmp_path,
        "--box",
        "0,0,30,3",
    )
    assert res.exit_code == 1 and "inside the 8x8 image" in res.output


def test_sanity_and_sensitivity_commands(run, data, tmp_path) -> None:
    res = invoke(
        "sanity",
        "--checkpoint",
        run,
        "--data-dir",
        data,
        "--out",
        tmp_path,
        "--images",
        2,
        "--rules",
        "deconvnet,gradient",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "randomisation.json").read_text())
    assert info["steps"] == ["trained", "fc2", "fc1", "conv2", "conv1"]
    assert info["rules"] == ["deconvnet", "gradient"]
    assert "| gradient | 1.000 / 1.000 |" in (tmp_path / "randomisation.md").read_text()
    res = invoke(
        "sensitivity",
        "--checkpoint",
        run,
        "--data-dir",
        data,
        "--out",
        tmp_path,
        "--images",
        1,
        "--channels",
        "0,1,2",
        "--rules",
        "deconvnet,gradient",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "sensitivity.json").read_text())
    assert info["channels"] == [0, 1, 2] and set(info["mean_spearman"]) == {"deconvnet", "gradient"}
    assert (tmp_path / "sensitivity.png").is_file()


def test_unknown_layer_and_rule_are_one_line_errors(run, data, tmp_path) -> None:
    res = invoke(
        "sanity", "--checkpoint", run, "--data-dir", data, "--out", tmp_path, "--layer", "fc3"
    )
    assert res.exit_code == 1 and "did you mean" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = invoke(
        "sensitivity",
        "--checkpoint",
        run,
        "--data-dir",
        data,
        "--out",
        tmp_path,
        "--rules",
        "deconvnet,gradiant",
    )
    assert res.exit_code == 1 and "did you mean 'gradient'" in res.output
    res = invoke(
        "invariance", "--checkpoint", run, "--data-dir", data, "--out", tmp_path, "--index", 99
    )
    assert res.exit_code == 1 and "out of range" in res.output
