"""One vocabulary: a layer has one name (its ``named_modules()`` name) and one dead-unit count
(never above 0 on the scanned images) in stats, filters, reconstruct, the report and the atlas;
class names instead of indices where the classes are known."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deconvviz.base._util import dead_units
from deconvviz.export.report import write_report
from deconvviz_cli.main import cli

MODEL_PY = """
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(6 * 8 * 8, 10)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        return self.fc(self.relu2(self.conv2(x)).flatten(1))


def make():
    return Net()
"""


def _model(root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("vocab_net", root / "net.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.make().eval()
    with torch.no_grad():
        net.bn1.bias[0] = -100.0  # relu1 unit 0: dead on every image
        net.conv1.weight[1].abs_()  # conv1 unit 1 positive on positive images ...
        net.conv1.bias[1] = 1.0
        net.bn1.weight[1] = -1.0  # ... but BN flips it: relu1 unit 1 dead too
        net.bn1.bias[1] = -0.1
    return net


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    (root / "net.py").write_text(MODEL_PY)
    net = _model(root)
    torch.save(net.state_dict(), root / "net.pt")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.savez_compressed(
        data / "cifar10.npz",
        x_train=rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
        y_train=np.arange(4, dtype=np.uint8),
        x_test=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8),
        y_test=(np.arange(12) % 10).astype(np.uint8),
    )
    return root, net, data


def _cli(root, data, *args):
    base = ["-c", str(root / "net.pt"), "--model", f"{root / 'net.py'}:make"]
    if data is not None:
        base += ["--data-dir", str(data), "--dataset", "cifar10"]
    res = CliRunner().invoke(cli, [args[0], *base, *args[1:]], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def test_the_one_definition_of_a_dead_unit():
    v = torch.tensor([0.5, 0.0, -1.0, float("nan"), 1e-30])
    assert dead_units(v) == [1, 2, 3]


def test_stats_and_reconstruct_agree_on_a_pre_relu_layer(setup):
    # conv1 (before BN and ReLU) has negative values: "zero everywhere" and "never above 0"
    # differ there; both commands now count the second
    from deconvviz.analyses.reconstruct import reconstruct_dataset
    from deconvviz.analyses.stats import activation_stats

    _, net, data = setup
    x = torch.tensor(np.load(data / "cifar10.npz")["x_test"]).permute(0, 3, 1, 2) / 255.0
    with torch.no_grad():
        old = float(net.conv1.bias[2])
        net.conv1.bias[2] = -50.0  # conv1 unit 2: negative everywhere, never exactly 0
        try:
            want = dead_units(net.conv1(x).amax(dim=(0, 2, 3)))
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=5)
            stats = activation_stats(net, loader, layers=["conv1"], progress=False)
            rec = reconstruct_dataset(net, list(x), ["conv1"], k=2, progress=False)
        finally:
            net.conv1.bias[2] = old
    assert want == [2]
    assert stats["conv1"].dead_channels.tolist() == want == rec["conv1"].dead


@pytest.mark.slow  # four commands and a report: ~15 s on a shared 2-core machine
def test_one_name_and_one_dead_count_across_commands(setup, tmp_path):
    root, net, data = setup
    # the oracle: relu1's largest value per channel over the 12 test images, by hand
    x = torch.tensor(np.load(data / "cifar10.npz")["x_test"]).permute(0, 3, 1, 2) / 255.0
    with torch.no_grad():
        want = dead_units(net.relu1(net.bn1(net.conv1(x))).amax(dim=(0, 2, 3)))
    assert want == [0, 1]

    _cli(root, data, "stats", "--layer", "relu1", "--out", str(tmp_path / "stats"))
    stats = json.loads((tmp_path / "stats" / "stats.json").read_text())["layers"]
    assert list(stats) == ["relu1"] and stats["relu1"]["dead_channels"] == want

    _cli(
        root, data, "reconstruct", "--layer", "relu1", "--top", "2", "--out", str(tmp_path / "rec")
    )
    rec = json.loads((tmp_path / "rec" / "relu1.json").read_text())
    assert rec["layer"] == "relu1" and rec["dead"] == want

    _cli(root, data, "atlas", "--layer", "relu1", "--top", "2", "--out", str(tmp_path / "site"))
    (layer,) = json.loads((tmp_path / "site" / "atlas.json").read_text())["layers"]
    assert layer["layer"] == "relu1" and layer["dead"] == want

    # the filters command counts zero filters, a different thing, and does not call them dead
    res = _cli(root, None, "filters", "--out", str(tmp_path / "filters"))
    assert "dead" not in res.stdout.replace(str(tmp_path), "") and "zero filters" in res.stdout

    from deconvviz.sources.datasets import dataset_for_model

    ds = dataset_for_model(net, None, data, "cifar10", "test")
    rep = write_report(
        tmp_path / "report",
        net,
        ds,
        layers=["relu1"],
        k=2,
        sections=["stats", "reconstructions"],
        progress=False,
    )
    tables = _tables(rep.index.read_text())
    stats_table = next(t for t in tables if t[0][0] == "layer" and "elements" in t[0])
    head = stats_table[0]
    row = next(r for r in stats_table[1:] if r[0] == "relu1")
    assert row[head.index("origin report's name")] == "h_conv1"  # the alias, beside the name
    assert row[head.index("dead units (never > 0)")] == f"{len(want)} / 4"
    fig2 = next(t for t in tables if t[0][:2] == ["layer", "dead units (never > 0)"])
    assert fig2[1][:2] == ["relu1", f"{len(want)} / 4"]
    # every layer the page names is a module name (no h_conv1 outside the alias column)
    page = rep.index.read_text()
    assert page.count("h_conv1") == page.count("h_conv1_stats") + 1


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None and self.tables:
            self.tables[-1][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def _tables(page: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return [t for t in parser.tables if t]


def test_occlude_names_the_class_of_the_shipped_network(tmp_path):
    from deconvviz.sources.pretrained import pretrained_path

    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    res = CliRunner().invoke(
        cli,
        ["occlude", "-c", str(pretrained_path()), "--image", str(tmp_path / "a.png")]
        + ["--target", "3", "--out", str(tmp_path / "occ"), "--no-progress"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert "p(cat) = " in res.stdout and "p(3)" not in res.stdout
