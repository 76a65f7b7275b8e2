"""``deconvviz inspect`` and :func:`deconvviz.engine.summary.layer_table` against hand-computed
fields."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from click.testing import CliRunner
from torch import nn

from deconvviz.base.errors import LayerError
from deconvviz.engine.summary import layer_table
from deconvviz.sources.loading import Normalized
from deconvviz_cli.main import cli


def _rf(layers: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(size, jump) after each (kernel, stride) step: size += (k - 1) * jump; jump *= s."""
    size, jump, out = 1, 1, []
    for k, s in layers:
        size += (k - 1) * jump
        jump *= s
        out.append((size, jump))
    return out


def test_alexnet_receptive_fields_by_hand():
    table = layer_table(torchvision.models.alexnet(), (3, 224, 224))
    # conv11/4, pool3/2, conv5, pool3/2, conv3, conv3, conv3, pool3/2
    want = _rf([(11, 4), (3, 2), (5, 1), (3, 2), (3, 1), (3, 1), (3, 1), (3, 2)])
    names = [f"features.{i}" for i in (0, 2, 3, 5, 6, 8, 10, 12)]
    assert want[-1] == (195, 32) and want[-2] == (163, 16)  # the textbook values
    for name, (size, jump) in zip(names, want, strict=True):
        row = table.row(name)
        assert row.rf_size == (size, size) and row.rf_stride == (jump, jump), name
    assert table.row("features.0").out_shape == (64, 55, 55)
    assert table.row("features.12").out_shape == (256, 6, 6)
    assert table.row("classifier.1").rf_size is None  # after flatten: no spatial field
    assert table.row("features.2").step.startswith("unpool")
    assert table.no_rule == ()


def test_resnet18_receptive_fields_per_call_names_and_normalisation():
    net = torchvision.models.resnet18()
    table = layer_table(net, (3, 224, 224))
    steps = [(7, 2), (3, 2)]  # conv1, maxpool
    steps += [(3, 1)] * 4  # layer1: two blocks of two 3x3 convs
    for _ in range(3):  # layer2..4: a stride-2 3x3 conv, then three 3x3 convs
        steps += [(3, 2), (3, 1), (3, 1), (3, 1)]
    want = _rf(steps)
    convs = ["conv1", "maxpool"]
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        convs += [f"{layer}.{b}.conv{c}" for b in (0, 1) for c in (1, 2)]
    assert want[-1] == (435, 32)  # ResNet-18's well-known receptive field
    for name, (size, jump) in zip(convs, want, strict=True):
        row = table.row(name)
        assert row.rf_size == (size, size) and row.rf_stride == (jump, jump), name
    # the block's ReLU module is called twice: one row per call, its own field each
    first, second = table.row("layer1.0.relu:0"), table.row("layer1.0.relu:1")
    assert first.rf_size == table.row("layer1.0.conv1").rf_size
    assert second.rf_size == table.row("layer1.0.conv2").rf_size
    with pytest.raises(LayerError):
        table.row("layer1.0.relu")
    assert table.row("layer4.1.conv2").out_shape == (512, 7, 7)
    # a normalised model has the same layers, fields and shapes
    wrapped = layer_table(Normalized(net, (0.5,) * 3, (0.25,) * 3), (3, 224, 224))
    assert wrapped.rows == table.rows and wrapped.model == "ResNet"


class _Adds(nn.Module):  # a residual block: two branches meet in an add
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        out += x
        return out + 1.0  # a constant added: no second branch


class _Cats(nn.Module):  # a dense block: two branches meet in a concatenation
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(x)], 1)


class _Plain(nn.Module):  # nothing meets: a bias-like add of a constant, a cat of one tensor
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x) + torch.ones(1)], 1)


def test_a_containers_step_names_only_the_merges_its_forward_makes():
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU()), _Adds(), _Cats(), _Plain(), nn.ReLU()
    )
    table = layer_table(net, (2, 6, 6))
    adds, cats = "residual adds", "concatenations"
    assert table.row("0").step == "its submodules' steps"
    assert adds in table.row("1").step and cats not in table.row("1").step
    assert cats in table.row("2").step and adds not in table.row("2").step
    assert table.row("3").step == "its submodules' steps"
    # torchvision's ResNet adds (skip connections) and never concatenates
    resnet = layer_table(torchvision.models.resnet18(), (3, 32, 32))
    blocks = [r for r in resnet.rows if r.type == "BasicBlock" or r.name.startswith("layer")]
    blocks = [r for r in blocks if r.type in ("BasicBlock", "Sequential")]
    for r in blocks:  # a block, or a stage of blocks, adds; a downsample (conv, bn) does not
        assert (adds in r.step) == ("downsample" not in r.name) and cats not in r.step, r
    assert cats not in str(resnet)


def test_activations_without_a_rule_are_listed():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.act = nn.GELU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.act(self.conv(x)))

    table = layer_table(Net(), (1, 8, 8))
    assert any(n.startswith("gelu in 'act'") for n in table.no_rule)
    assert any(n.startswith("tanh in 'the forward'") for n in table.no_rule)
    assert "NO deconvnet rule" in table.row("act").step
    assert "<table>" in table._repr_html_() and "gelu" in table._repr_html_()


def test_inspect_cli_prints_the_table_and_writes_json(tmp_path):
    res = CliRunner().invoke(
        cli,
        ["inspect", "--model", "torchvision.models:resnet18", "--model-arg", "num_classes=10"]
        + ["--image-size", "32", "--json", str(tmp_path / "t.json")],
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == "ResNet on 3x32x32 input, rule 'deconvnet'"
    row = next(line.split() for line in lines if line.startswith("layer1.0.relu:1 "))
    assert row[1:5] == ["ReLU", "64x8x8", "27x27", "4x4"]
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["layers"][-1] == {
        "name": "fc",
        "type": "Linear",
        "out_shape": [10],
        "rf_size": None,
        "rf_stride": None,
        "step": "W^T (own weights, no bias)",
    }
    res = CliRunner().invoke(cli, ["inspect"])
    # neither -c nor --model: a usage error naming both, as on every command
    assert res.exit_code == 2 and "-c/--checkpoint" in res.stderr and "--model" in res.stderr
