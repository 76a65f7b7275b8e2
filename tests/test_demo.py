"""The one-command demo and the real CIFAR-10 sample shipped for it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deconvviz.base.errors import InputError
from deconvviz.export.demo import SAMPLE_SPLIT, load_sample, sample_path
from deconvviz.sources.checkpoint import load_run
from deconvviz_cli.main import cli

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_sample_is_the_first_official_test_images():
    ds = load_sample()
    assert len(ds) == 500 and ds.image_shape == (3, 32, 32) and ds.data.dtype == torch.uint8
    assert sample_path().stat().st_size <= 2 * 2**20
    assert ds.classes[:3] == ["airplane", "automobile", "bird"] and len(ds.classes) == 10
    # published facts of the official test_batch: image 0 is a cat whose first red row starts
    # 158, 159, 165, 166, 160, 156, 162, 159, 158; images 1 and 2 are ships
    assert ds.targets[:3].tolist() == [3, 8, 8]
    assert ds.data[0, 0, 0, :9].tolist() == [158, 159, 165, 166, 160, 156, 162, 159, 158]
    image, label = ds[0]
    assert image.dtype == torch.float32 and float(image.max()) <= 1.0 and label == 3
    assert np.bincount(ds.targets.numpy(), minlength=10).min() >= 30  # every class present
    train, test = load_sample("train"), load_sample("test")
    assert (len(train), len(test)) == (SAMPLE_SPLIT, 500 - SAMPLE_SPLIT)
    assert torch.equal(test.data[0], ds.data[SAMPLE_SPLIT])
    with pytest.raises(InputError, match="did you mean 'test'"):
        load_sample("tests")


@pytest.mark.skipif(
    not (SHARED / "cifar10" / "cifar10.npz").is_file(), reason="shared CIFAR-10 not present"
)
def test_sample_matches_the_exact_part_of_the_shared_cifar10():
    with np.load(SHARED / "cifar10" / "cifar10.npz") as d:
        assert d["test_exact"][:500].all()
        x, y = d["x_test"][:500], d["y_test"][:500]
    ds = load_sample()
    np.testing.assert_array_equal(ds.data.permute(0, 2, 3, 1).numpy(), x)
    np.testing.assert_array_equal(ds.targets.numpy(), y)


def test_demo_train_end_to_end(tmp_path, monkeypatch):
    # a relative --out with a space, as a user types it: every link must still resolve
    monkeypatch.chdir(tmp_path)
    out = Path("my demo")
    res = CliRunner().invoke(
        cli,
        [
            "demo",
            "--train",
            "--out",
            str(out),
            "--iterations",
            "3",
            "--batch-size",
            "20",
            "--images",
            "1",
            "--top",
            "2",
            "--max-images",
            "40",
            "--no-progress",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    line = res.stdout.strip()
    assert line.startswith(
        f"wrote {out / 'index.html'} (LeNet5 trained 3 iterations on the "
        "shipped CIFAR-10 sample, test accuracy "
    )
    run = load_run(out / "run")
    assert run.config["model"]["in_channels"] == 3 and run.config["dataset"] == "cifar10-sample"
    assert run.iteration == 3 and run.metrics["status"] == "ok"
    acc = run.metrics["final_test_acc"]
    assert f"test accuracy {acc:.3f}" in line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["config"]["iterations"] == 3
    assert manifest["dataset"]["name"] == "cifar10-sample" and manifest["dataset"]["scanned"] == 40
    keys = {s["key"]: s["skipped"] for s in manifest["sections"]}
    assert all(reason is None for reason in keys.values()), keys
    page = (out / "index.html").read_text()
    for fig in manifest["figures"]:
        # shown (src), or linked (href) where the page shows the figure as tiles (Fig. 2)
        assert (out / fig["path"]).is_file()
        assert f'src="{fig["path"]}"' in page or f'href="{fig["path"]}"' in page
        assert (out / fig["path"]).resolve().is_relative_to((tmp_path / out).resolve())
    assert {f["section"] for f in manifest["figures"]} >= {"analyses", "reconstructions"}
    # the reconstructions were made by the trained model, over the sample
    rec = json.loads((out / "figures" / "reconstructions" / "conv2.json").read_text())
    assert rec["k"] == 2 and len(rec["indices"]) == 64 and max(map(max, rec["indices"])) < 40


def test_demo_shows_the_shipped_model_without_training(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--images", "1", "--top", "3", "--max-images", "60"]
    res = CliRunner().invoke(cli, [*args, "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "the shipped ZF-style network on the shipped CIFAR-10 sample" in res.stdout
    assert not (out / "run").exists()  # nothing was trained
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["config"]["model"] == "zfnet-cifar"
    assert manifest["config"]["model"]["model"] == "zfnet-cifar"  # the shipped recipe
    keys = {s["key"]: s for s in manifest["sections"]}
    assert keys["reconstructions"]["layers"] == ["relu1", "relu2", "relu3", "relu4", "relu5"]
    assert keys["training"]["skipped"] is None  # the shipped run's own curves
    sel = keys["evidence"]["selectivity"]
    assert sel["layers"] == keys["reconstructions"]["layers"] and sel["k"] == 3
    assert keys["evidence"]["filter_structure"]["layer"] == "conv1"
    for fig in manifest["figures"]:
        assert (out / fig["path"]).is_file()


@pytest.mark.slow
def test_demo_train_with_defaults(tmp_path):
    res = CliRunner().invoke(
        cli, ["demo", "--train", "--out", str(tmp_path), "--no-progress"], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    run = load_run(tmp_path / "run")
    assert run.metrics["final_test_acc"] > 0.2  # well above chance (0.1) after 300 iterations


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED / "cifar10" / "cifar10.npz").is_file(), reason="shared CIFAR-10 not present"
)
def test_demo_on_the_full_cifar10(tmp_path):
    res = CliRunner().invoke(
        cli,
        [
            "demo",
            "--train",
            "--out",
            str(tmp_path),
            "--data-dir",
            str(SHARED),
            "--iterations",
            "20",
            "--images",
            "1",
            "--top",
            "2",
            "--max-images",
            "200",
            "--no-progress",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    run = load_run(tmp_path / "run")
    assert run.config["dataset"] == "cifar10"
    assert run.metrics["train_size"] == 50000 and run.metrics["test_size"] == 1000
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["dataset"]["size"] == 1000 and manifest["dataset"]["scanned"] == 200
