"""The shipped ZF-style CIFAR-10 network: loads safely, has learned, its pictures mean something."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deconvviz.analyses.evidence import class_selectivity, filter_structure
from deconvviz.base.errors import CheckpointError, InputError
from deconvviz.export.demo import ZF_LAYERS, load_sample
from deconvviz.sources.models import ZFNetCifar
from deconvviz.sources.pretrained import load_pretrained, pretrained_path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NPZ = SHARED / "cifar10" / "cifar10.npz"


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained()


def test_shipped_weights_load_safely_and_are_small(shipped) -> None:
    model, info = shipped
    assert isinstance(model, ZFNetCifar) and not model.training
    assert pretrained_path().stat().st_size < 8 * 2**20
    blob = torch.load(pretrained_path(), weights_only=True)  # no code runs on load
    assert all(v.dtype in (torch.float16, torch.int64) for v in blob["state_dict"].values())
    assert info["config"]["model"]["model"] == "zfnet-cifar" and info["config"]["seed"] == 0
    assert info["metrics"]["finished"] is True
    assert set(info["per_class_accuracy"]) == set(load_sample().classes)
    with pytest.raises(InputError, match="unknown shipped model"):
        load_pretrained("zfnet-imagenet")


def test_a_damaged_weights_file_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    bad = tmp_path / "zfnet_cifar.pt"
    bad.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(
        "deconvviz.sources.pretrained.pretrained_path", lambda name="zfnet-cifar": bad
    )
    with pytest.raises(CheckpointError, match="damaged.*reinstall") as err:
        load_pretrained()
    assert "\n" not in str(err.value)


def test_the_shipped_sample_is_classified_as_the_card_says(shipped) -> None:
    model, info = shipped
    ds = load_sample()
    with torch.no_grad():
        pred = model(ds.batch(torch.arange(len(ds)))[0]).argmax(1)
    acc = float((pred == ds.targets).float().mean())
    assert acc >= 0.8, acc  # exact official test images 0-499
    assert info["test_accuracy"] >= 0.85


@pytest.mark.skipif(not NPZ.is_file(), reason="shared CIFAR-10 not present")
def test_accuracy_on_the_exact_test_images_meets_the_goal(shipped) -> None:
    from deconvviz.sources.data import load_dataset

    model, _ = shipped
    test = load_dataset(SHARED, "cifar10", "test")
    idx = torch.arange(1000)  # the 1,000 test images with exact pixels
    x, y = test.batch(idx)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc >= 0.85, acc


def test_class_selectivity_rises_with_depth_and_conv1_is_structured(shipped) -> None:
    model, info = shipped
    sel = class_selectivity(model, load_sample(), list(ZF_LAYERS), k=9)
    vals = [sel.selectivity[n] for n in ZF_LAYERS]
    assert vals[-1] > vals[0] + 0.2, vals  # the deepest layer is far more class-specific
    assert vals[-1] > 0.5 and vals[0] < 0.4, vals
    assert sum(b > a for a, b in zip(vals, vals[1:], strict=False)) >= 3, vals
    fs = filter_structure(model.conv1)
    assert fs.trained > fs.init + 0.2, (fs.trained, fs.init)
    # the card's numbers are the ones measured on the shipped weights
    card = info["selectivity"]["selectivity"]
    assert [round(card[n], 4) for n in ZF_LAYERS] == [round(v, 4) for v in vals]
