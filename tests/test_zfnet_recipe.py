"""The ZF-style CIFAR model and the modern training recipe (schedule, augmentation, bf16...)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deconvviz.analyses.filters import filter_rms
from deconvviz.base.errors import InputError
from deconvviz.sources.checkpoint import load_run
from deconvviz.sources.models import ZFNetCifar, build_model
from deconvviz.training.train import TrainConfig, crop_flip, train

TINY_ZF = {"model": "zfnet-cifar", "width": 4, "hidden": 8, "in_channels": 1, "image_size": 8}


def test_zfnet_forward_equals_its_functional_definition() -> None:
    torch.manual_seed(0)
    net = ZFNetCifar(width=4, hidden=8).double().eval()
    for i in range(1, 6):  # non-trivial BN statistics
        bn = getattr(net, f"bn{i}")
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    h = x
    for i in range(1, 6):
        conv, bn = getattr(net, f"conv{i}"), getattr(net, f"bn{i}")
        h = F.conv2d(h, conv.weight, conv.bias, padding=conv.padding)
        h = (h - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var + bn.eps)[
            :, None, None
        ] * bn.weight[:, None, None] + bn.bias[:, None, None]
        h = h.clamp_min(0)
        if i in (1, 2, 5):  # overlapping 3x3/2 pooling, as in the paper
            h = F.max_pool2d(h, 3, 2, padding=1)
    assert h.shape == (3, 16, 4, 4)
    h = F.linear(h.flatten(1), net.fc6.weight, net.fc6.bias).clamp_min(0)
    ref = F.linear(h, net.fc7.weight, net.fc7.bias)
    torch.testing.assert_close(net(x), ref, rtol=1e-10, atol=1e-12)


def test_zfnet_config_rebuilds_and_bad_shapes_say_the_fix() -> None:
    net = ZFNetCifar(width=8, hidden=16)
    again = build_model(net.config)
    assert again.config == net.config
    assert [n for n, _ in again.named_children()][:4] == ["conv1", "bn1", "relu1", "pool1"]
    with pytest.raises(InputError, match=r"expects images \[N, 3, 32, 32\]"):
        net(torch.rand(2, 3, 20, 20))
    with pytest.raises(InputError, match="multiple of 8"):
        ZFNetCifar(image_size=30)
    # the conv stack runs on crops (the deconvnet engine projects on receptive-field crops)
    assert net.features(torch.rand(1, 3, 24, 24)).shape == (1, 32, 3, 3)


def test_onecycle_schedule_warms_up_then_decays_to_zero() -> None:
    cfg = TrainConfig(model=TINY_ZF, lr=0.2, schedule="onecycle", iterations=100)
    lrs = [cfg.lr_at(i, 100) for i in range(1, 101)]
    peak = max(range(100), key=lambda i: lrs[i])
    assert lrs[0] == pytest.approx(0.2 * (0.1 + 0.9 / 15))
    assert lrs[peak] == pytest.approx(0.2) and peak == 14
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))
    assert lrs[-1] == 0.0
    assert TrainConfig(model=TINY_ZF, lr=0.3).lr_at(57, 100) == 0.3


def test_crop_flip_returns_shifted_or_mirrored_crops_of_the_padded_image() -> None:
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float64).reshape(2, 3, 6, 6)
    out = crop_flip(x, pad=2)
    assert out.shape == x.shape
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    for n in range(2):
        found = [
            (dy, dx, flip)
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
            if torch.equal(
                out[n],
                padded[n, :, dy : dy + 6, dx : dx + 6].flip(-1)
                if flip
                else padded[n, :, dy : dy + 6, dx : dx + 6],
            )
        ]
        assert len(found) >= 1
    # over many draws every offset and both flips occur
    seen = set()
    torch.manual_seed(1)
    ramp = torch.arange(6, dtype=torch.float64).expand(400, 1, 6, 6)
    for row in crop_flip(ramp, pad=2)[:, 0, 0]:
        seen.add(tuple(row.tolist()))
    assert len(seen) >= 8


def test_recipe_options_are_checked() -> None:
    with pytest.raises(InputError, match="nesterov needs"):
        TrainConfig(model=TINY_ZF, optimizer="adam", nesterov=True)
    with pytest.raises(InputError, match="unknown schedule"):
        TrainConfig(model=TINY_ZF, schedule="cosine-ish")
    with pytest.raises(InputError, match="label_smoothing"):
        TrainConfig(model=TINY_ZF, label_smoothing=1.5)
    with pytest.raises(InputError, match="renormalise"):
        TrainConfig(model=TINY_ZF, renormalise=-1.0)


def test_recipe_trains_resumes_exactly_and_renormalises(quadrant_dataset, tmp_path: Path) -> None:
    train_set, test_set = quadrant_dataset(8, seed=0), quadrant_dataset(4, seed=1)
    cfg = TrainConfig(
        model=TINY_ZF,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="onecycle",
        label_smoothing=0.1,
        augment="crop-flip",
        precision="bf16",
        renormalise=0.1,
        batch_size=8,
        iterations=12,
        eval_every=6,
    )
    straight = train(cfg, train_set, test_set, progress=False)
    convs = [m for m in straight.model.modules() if isinstance(m, nn.Conv2d)]
    assert all(float(filter_rms(m).max()) <= 0.1 + 1e-6 for m in convs)

    def stop_at_6(iteration: int, model: nn.Module) -> None:
        if iteration == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            cfg,
            train_set,
            test_set,
            out_dir=tmp_path / "run",
            progress=False,
            callbacks=[stop_at_6],
        )
    resumed = train(
        cfg, train_set, test_set, out_dir=tmp_path / "run", progress=False, resume=tmp_path / "run"
    )
    # stopped at 6 and resumed: same schedule position, same augmentation draws, same numbers
    assert resumed.history == straight.history
    sa, sb = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    saved = load_run(tmp_path / "run")
    assert saved.config["augment"] == "crop-flip" and saved.config["precision"] == "bf16"


def test_normalize_is_trained_with_stored_and_applied_on_load(quadrant_dataset, tmp_path) -> None:
    from deconvviz.sources.loading import Normalized, load_model

    train_set, test_set = quadrant_dataset(8, seed=0), quadrant_dataset(4, seed=1)
    cfg = TrainConfig(
        model={"model": "lenet5", "image_size": 8, "num_classes": 4},
        batch_size=8,
        iterations=4,
        eval_every=4,
        normalize="0.5,0.25",
    )
    result = train(cfg, train_set, test_set, out_dir=tmp_path / "run", progress=False)
    assert isinstance(result.model, Normalized)
    saved = load_run(tmp_path / "run")
    assert saved.config["normalize"] == "0.5,0.25"
    assert set(saved.model.state_dict()) == set(result.model.state_dict())  # the user's keys
    loaded = load_model(checkpoint=tmp_path / "run")
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        want = saved.model.eval()((x - 0.5) / 0.25)
        got = loaded.model(x)
    torch.testing.assert_close(got, want)
    with pytest.raises(InputError, match="--normalize"):
        TrainConfig(model=TINY_ZF, normalize="0.5")
