"""The ``reconstruct``, ``compare`` and ``report`` commands through click's CliRunner, on tiny
runs and datasets written in their real on-disk formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from deconvviz.analyses.reconstruct import reconstruct_dataset, reconstruct_images
from deconvviz.sources.checkpoint import load_run, save_run
from deconvviz.sources.data import load_dataset
from deconvviz.sources.models import LeNet5
from deconvviz_cli.main import cli

CONFIG_MODEL = {
    "model": "lenet5",
    "in_channels": 3,
    "image_size": 16,
    "num_classes": 10,
    "init": "pytorch",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A run directory (LeNet5 3x16x16), a CIFAR-10 npz with 12 test images, and two PNGs."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    data = root / "data"
    data.mkdir()
    np.savez_compressed(
        data / "cifar10.npz",
        x_train=rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8),
        y_train=np.arange(10, dtype=np.uint8),
        x_test=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8),
        y_test=(np.arange(12) % 10).astype(np.uint8),
        label_names=np.array(
            [
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ]
        ),
    )
    torch.manual_seed(0)
    model = LeNet5(**{k: v for k, v in CONFIG_MODEL.items() if k != "model"})
    run = root / "run"
    save_run(
        run,
        model,
        {"model": CONFIG_MODEL, "dataset": "cifar10", "seed": 3},
        {"final_test_acc": 0.1, "history": {"train_loss": [[1, 2.3]], "test_acc": [[0, 0.1]]}},
    )
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / "cat.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / "grey.jpg")
    return root


def _run(*args: str):
    return CliRunner().invoke(cli, [*map(str, args), "--no-progress"], catch_exceptions=False)


def test_reconstruct_dataset_mode(files, tmp_path):
    out = tmp_path / "rec"
    res = _run(
        "reconstruct",
        "-c",
        files / "run",
        "--data-dir",
        files / "data",
        "--layer",
        "conv1",
        "--top",
        "3",
        "--channel",
        "2",
        "--channel",
        "0",
        "--rule",
        "guided",
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines() == [
        f"wrote 1 figure to {out} (top-3 of 12 images, layers conv1, rule guided)"
    ]
    summary = json.loads((out / "conv1.json").read_text())
    assert summary["rule"] == "guided" and summary["k"] == 3 and summary["channels"] == [2, 0]
    # the same numbers as the library gives for the same run and data
    run = load_run(files / "run")
    test = load_dataset(files / "data", "cifar10", "test")
    want = reconstruct_dataset(
        run.model, test, ["conv1"], 3, "guided", channels=[2, 0], progress=False
    )["conv1"]
    assert summary["indices"] == want.indices.tolist()
    np.testing.assert_allclose(summary["values"], want.values.numpy(), rtol=1e-6)
    with Image.open(out / "conv1.png") as im:
        assert im.format == "PNG"


def test_reconstruct_default_layers_and_max_images(files, tmp_path):
    res = _run(
        "reconstruct",
        "-c",
        files / "run",
        "--data-dir",
        files / "data",
        "--max-images",
        "5",
        "--top",
        "2",
        "--channel",
        "1",
        "--out",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    assert "top-2 of 5 images, layers conv1, conv2" in res.stdout
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["conv1.png", "conv2.png"]
    # the 5 images are spread over the 12 of the split (0, 2, 4, 7, 9), not its first 5
    seen = {i for r in json.loads((tmp_path / "conv2.json").read_text())["indices"] for i in r}
    assert seen <= {0, 2, 4, 7, 9} and max(seen) >= 5


def test_reconstruct_image_mode_with_compare(files, tmp_path):
    res = _run(
        "reconstruct",
        "-c",
        files / "run",
        "--image",
        files / "cat.png",
        "--image",
        files / "grey.jpg",
        "--layer",
        "conv2",
        "--channel",
        "5",
        "--channel",
        "1",
        "--compare",
        "--out",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    assert "2 images as 3x16x16" in res.stdout
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "cat_conv2.png",
        "compare.png",
        "grey_conv2.png",
    ]
    info = json.loads((tmp_path / "projections.json").read_text())
    assert info["conv2"]["channels"] == [5, 1]
    run = load_run(files / "run")
    from deconvviz.base.images import load_images

    x = load_images([files / "cat.png", files / "grey.jpg"], 3, 16)
    want = reconstruct_images(run.model, x, ["conv2"], [5, 1], progress=False)["conv2"]
    np.testing.assert_allclose(
        info["conv2"]["images"][1]["values"], want.values[1].numpy(), rtol=1e-6
    )


def test_reconstruct_user_model_from_a_state_dict(files, tmp_path):
    (tmp_path / "mynet.py").write_text(
        "import torch.nn as nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),\n"
        "                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10))\n"
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location("mynet_test", tmp_path / "mynet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    torch.manual_seed(1)
    torch.save(mod.make().state_dict(), tmp_path / "weights.pt")
    res = _run(
        "reconstruct",
        "-c",
        tmp_path / "weights.pt",
        "--model",
        f"{tmp_path / 'mynet.py'}:make",
        "--data-dir",
        files / "data",
        "--top",
        "2",
        "--out",
        tmp_path / "out",
    )
    assert res.exit_code == 0, res.output
    assert "layers 0" in res.stdout  # the Sequential's conv is named '0'
    assert (tmp_path / "out" / "0.png").is_file()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--layer", "conv9"], 1, "Error: unknown layer 'conv9'; did you mean"),
        (["--image", "nope.png"], 1, "Error: image nope.png does not exist"),
        (["--rule", "lrp"], 2, "Invalid value for '--rule'"),
        (["--top", "0"], 2, "Invalid value for '--top'"),
    ],
)
def test_reconstruct_errors_are_one_line(files, tmp_path, args, code, message):
    base = ["reconstruct", "-c", files / "run", "--data-dir", files / "data", "--out", tmp_path]
    res = _run(*base, *args)
    assert res.exit_code == code
    assert message in res.stderr
    if code == 1:
        assert len(res.stderr.strip().splitlines()) == 1


def test_reconstruct_needs_data_and_out(files, tmp_path):
    res = _run("reconstruct", "-c", files / "run", "--out", tmp_path)
    assert res.exit_code == 1 and "pass --data-dir" in res.stderr
    res = _run("reconstruct", "-c", files / "run", "--data-dir", files / "data")
    assert res.exit_code == 2 and "Missing option '--out'" in res.stderr
    res = _run(
        "reconstruct", "-c", tmp_path / "none", "--data-dir", files / "data", "--out", tmp_path
    )
    assert res.exit_code == 1 and "does not exist" in res.stderr


def test_interrupted_reconstruct_leaves_only_whole_files(files, tmp_path, monkeypatch):
    import deconvviz.render.reconstruct as render

    real = render.top_projections_figure
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(render, "top_projections_figure", interrupt_second)
    res = CliRunner().invoke(
        cli,
        [
            "reconstruct",
            "-c",
            str(files / "run"),
            "--data-dir",
            str(files / "data"),
            "--top",
            "2",
            "--out",
            str(tmp_path),
            "--no-progress",
        ],
    )
    assert res.exit_code == 130 and "Interrupted" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv1.json", "conv1.png"]
    with Image.open(tmp_path / "conv1.png") as im:
        im.load()


def test_compare_command(files, tmp_path):
    res = _run(
        "compare",
        "-c",
        files / "run",
        "--image",
        files / "cat.png",
        "--target",
        "3",
        "--occlusion-size",
        "4",
        "--out",
        tmp_path,
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"wrote {tmp_path / 'compare.png'} (1 images, 5 methods)"
    info = json.loads((tmp_path / "compare.json").read_text())
    assert info["target"] == [3] and info["methods"][0] == "deconvnet"
    assert 0 < info["probability"][0] < 1


def test_report_command(files, tmp_path, monkeypatch):
    # every section is covered by test_report.py; here the options reach the library, and a
    # relative --out gives a whole report
    monkeypatch.chdir(tmp_path)
    res = _run(
        "report",
        "-c",
        files / "run",
        "--data-dir",
        files / "data",
        "--images",
        "1",
        "--max-images",
        "6",
        "--top",
        "2",
        "--section",
        "training",
        "--section",
        "stats",
        "--section",
        "compare",
        "--out",
        "out/r",
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"wrote {Path('out/r/index.html')} (4 figures)"
    tmp_path = tmp_path / "out" / "r"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["run"].endswith("checkpoint.pt")
    assert manifest["dataset"]["scanned"] == 6 and manifest["dataset"]["name"] == "cifar10"
    assert [s["key"] for s in manifest["sections"]] == ["training", "stats", "compare"]
    assert [Path(f["path"]).name for f in manifest["figures"]] == [
        "training_curves.png",
        "stats_relu1.png",
        "stats_relu2.png",
        "compare.png",
    ]
    for fig in manifest["figures"]:
        assert (tmp_path / fig["path"]).is_file()
