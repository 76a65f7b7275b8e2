"""Rendering of every analysis result, the report's quick versions, and a run on real data."""

from __future__ import annotations

import json
import math

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from deconvviz.analyses import (
    FeatureEvolution,
    correspondence,
    invariance,
    randomisation_test,
    sensitivity_check,
)
from deconvviz.base.errors import InputError
from deconvviz.export.analyses import report_figures
from deconvviz.render.analyses import (
    correspondence_figure,
    correspondence_table,
    evolution_figure,
    invariance_figure,
    randomisation_figure,
    randomisation_table,
    sensitivity_figure,
    sensitivity_table,
)
from deconvviz.render.images import dead_tile
from deconvviz.sources.models import LeNet5, RNNClassifier
from figcheck import check_figure


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(4 * 4 * 4, 8)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.relu1(self.conv1(x))))
        return self.fc2(self.relu2(self.fc1(x)))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _strict_json(path) -> dict:
    def no_constants(name: str) -> None:
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=no_constants)


def test_invariance_figure(model, x) -> None:
    res = invariance(model, x, [0, 1, 2], "translate", [-1, 0, 1], progress=False)
    fig = invariance_figure(res)
    check_figure(fig)
    assert isinstance(fig, Figure) and len(fig.axes) == len(res.layers) + 1
    assert len(fig.axes[-1].lines) == 3 + 1  # one per image and the mean
    rel = invariance_figure(res, relative=True)
    assert rel.axes[0].get_ylabel() == "relative distance"


def test_correspondence_figure_and_table(model, x) -> None:
    res = correspondence(
        model,
        x,
        [[[0, 0, 3, 3]] * 3, [[4, 4, 8, 8]] * 3],
        ["conv1", "fc1"],
        n_random=2,
        parts=["corner", "other"],
        progress=False,
    )
    fig = correspondence_figure(res)
    check_figure(fig)
    assert len(fig.axes) == 2
    # each panel says what is occluded (the part and its box) and what it is compared with
    titles = [ax.get_title().replace("\n", " ") for ax in fig.axes]
    assert titles == [
        "occluding the corner (3x3 px) vs the same box at random places",
        "occluding the other (4x4 px) vs the same box at random places",
    ]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["corner occluded", "random, same size"]
    table = correspondence_table(res)
    lines = table.strip().splitlines()
    assert lines[0] == "| occlusion | conv1 | fc1 |" and len(lines) == 2 + 2 * 2
    assert f"{float(res.score[0, 1]):.3f}" in lines[2] and lines[3].startswith("| random")


def test_randomisation_figure_and_table(model, x) -> None:
    res = randomisation_test(model, x[:2], rules=["deconvnet", "gradient"], progress=False)
    fig = randomisation_figure(res, image=1)
    check_figure(fig)
    assert len(fig.axes) == 2 * len(res.steps) + 2
    table = randomisation_table(res)
    assert "| deconvnet | 1.000 / 1.000 |" in table
    assert table.splitlines()[0].startswith("| rule | trained | +fc2 |")
    with pytest.raises(InputError, match="out of range"):
        randomisation_figure(res, image=5)


def test_sensitivity_figure_and_table(model, x) -> None:
    res = sensitivity_check(model, x[:1], rules=["deconvnet", "gradient"], progress=False)
    fig = sensitivity_figure(res)
    check_figure(fig)
    assert len(fig.axes) == 2 * (len(res.channels) + 1) + 1  # projections, matrices, colorbar
    assert fig.axes[0].get_title() == f"ch {res.channels[0]}"
    (matrix,) = fig.axes[len(res.channels)].images
    assert matrix.get_cmap().name == "coolwarm" and matrix.get_clim() == (-1.0, 1.0)
    table = sensitivity_table(res)
    assert f"{float(res.mean_similarity[1]):.3f}" in table


def test_evolution_figure(model, x) -> None:
    evo = FeatureEvolution(x, "conv1", channels=[0, 2])
    evo.record(0, model)
    evo.record(10, model)
    fig = evolution_figure(evo.result())
    check_figure(fig)
    assert len(fig.axes) == 2 * 2
    assert fig.axes[1].get_title() == "iter 10"
    assert len(evolution_figure(evo.result(), patches=True).axes) == 4


def test_evolution_figure_marks_a_map_that_never_fired(model, x) -> None:
    dead = Net()
    dead.load_state_dict(model.state_dict())
    dead.eval()
    with torch.no_grad():  # conv1's map 2 is -1 everywhere at iteration 10
        dead.conv1.weight[2] = 0.0
        dead.conv1.bias[2] = -1.0
    evo = FeatureEvolution(x, "conv1", channels=[0, 2])
    evo.record(0, model)
    evo.record(10, dead)
    res = evo.result()
    assert float(res.values[0, 1]) > 0 and float(res.values[1, 1]) <= 0
    fig = evolution_figure(res)
    check_figure(fig)
    axes = fig.axes  # row-major: [ch 0 @ 0, ch 0 @ 10, ch 2 @ 0, ch 2 @ 10]
    arr = axes[3].images[0].get_array()
    assert arr.shape == tuple(res.projections.shape[-2:])
    assert (arr == dead_tile(*arr.shape)).all() and "not > 0" in axes[3].texts[0].get_text()
    assert not axes[2].texts  # iteration 0: the map fired, its projection is shown


def test_renderers_refuse_other_objects() -> None:
    with pytest.raises(InputError, match="expects a InvarianceResult"):
        invariance_figure(object())  # type: ignore[arg-type]
    with pytest.raises(InputError, match="SanityResult"):
        randomisation_table({})  # type: ignore[arg-type]


def test_report_figures_writes_png_and_json(tmp_path) -> None:
    torch.manual_seed(0)
    lenet = LeNet5(in_channels=1, image_size=8, num_classes=4).eval()
    g = torch.Generator().manual_seed(1)
    data = [(torch.rand(1, 8, 8, generator=g), i % 4) for i in range(12)]
    out = report_figures(lenet, data, tmp_path / "analyses", n_images=3, progress=False)
    stems = [
        "invariance_translate",
        "invariance_scale",
        "invariance_rotate",
        "correspondence",
        "randomisation",
        "sensitivity",
    ]
    assert [p.stem for _, p in out] == stems
    for title, png in out:
        assert title and png.is_file()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 100
        info = _strict_json(png.with_suffix(".json"))
        assert info["analysis"] in {"invariance", "correspondence", "randomisation", "sensitivity"}
    inv = _strict_json(tmp_path / "analyses" / "invariance_translate.json")
    assert inv["dataset_indices"] == [0, 6, 11]  # spread over the dataset
    assert inv["layers"] == ["conv1", "fc1"]
    rnd = _strict_json(tmp_path / "analyses" / "randomisation.json")
    assert rnd["steps"] == ["trained", "fc2", "fc1", "conv2", "conv1"]
    assert all(
        not any(isinstance(v, float) and math.isnan(v) for v in row)
        for row in rnd["mean"]["gradient"].values()
    )


def test_the_report_analyses_run_on_an_rnn() -> None:
    # what report_figures runs, on an RNN run (its recurrent cell has no deconvnet rule: the
    # engine warns and uses the plain gradient there; report_figures silences that warning)
    from deconvviz.engine import DeconvvizWarning

    torch.manual_seed(0)
    rnn = RNNClassifier(cell="gru", hidden=8, input_size=8, num_classes=3).eval()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    inv = invariance(rnn, x, [0, 1, 2], "rotate", [0, 90], progress=False)
    assert inv.layers == ("fc",)  # the GRU returns a tuple: not a feature layer
    corr = correspondence(rnn, x, [2, 2, 6, 6], n_random=2, progress=False)
    assert corr.layers == ("fc",)
    with pytest.warns(DeconvvizWarning, match="rnn"):
        res = randomisation_test(rnn, x[:2], rules=["deconvnet"], progress=False)
    assert res.steps == ("trained", "fc", "rnn")
    with pytest.warns(DeconvvizWarning, match="rnn"):
        sens = sensitivity_check(rnn, x[:1], rules=["gradient"], progress=False)
    assert sens.channels == (0, 1, 2)


def test_invariance_on_real_images(shared_data) -> None:
    from deconvviz.sources.data import load_dataset

    ds = load_dataset(shared_data, "cifar10-course", "test", per_class=1)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = [ds[i][1] for i in range(len(ds))]
    torch.manual_seed(0)
    lenet = LeNet5().eval()
    res = invariance(lenet, x, y, "translate", [-4, 0, 4], progress=False)
    assert res.distance.shape == (2, 10, 3)
    assert res.distance[:, :, 1].abs().max().item() == 0.0
    assert bool((res.distance[:, :, [0, 2]] > 0).all())  # real images change when moved


def test_old_report_figures_name_warns_and_still_works() -> None:
    import deconvviz.analyses as analyses

    with pytest.warns(DeprecationWarning, match="deconvviz.export.analyses"):
        old = analyses.report_figures
    assert old is report_figures
