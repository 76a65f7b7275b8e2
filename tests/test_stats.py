"""Activation and hidden-state statistics against numpy on the concatenated data (float64)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deconvviz.analyses.stats import activation_stats, hidden_state_stats, report_lines
from deconvviz.base.errors import InputError, LayerError
from deconvviz.render.stats import (
    hidden_state_figure,
    hidden_state_table,
    histogram_figure,
    stats_table,
)
from deconvviz.sources.models import LeNet5, RNNClassifier

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def lenet() -> LeNet5:
    """One float64 LeNet5 for the module (activation_stats never changes the model)."""
    torch.manual_seed(0)
    return LeNet5(in_channels=1, image_size=28, init="pytorch").double()


def tiny() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten())


def loader(x: torch.Tensor, batch_size: int = 7) -> DataLoader:
    y = torch.zeros(len(x), dtype=torch.long)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)  # last batch is smaller


def relu_outputs(model: LeNet5, x: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        h1 = torch.relu(model.conv1(x))
        h2 = torch.relu(model.conv2(model.pool1(h1)))
    return {"relu1": h1.double().numpy(), "relu2": h2.double().numpy()}


def check_against_numpy(s, a: np.ndarray) -> None:
    assert s.count == a.size
    np.testing.assert_allclose(s.mean, a.mean(), rtol=1e-10)
    np.testing.assert_allclose(s.var, a.var(), rtol=1e-10)
    assert s.min == a.min() and s.max == a.max()
    assert s.zero_fraction == pytest.approx((a == 0).mean(), abs=0)
    per_c = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)
    np.testing.assert_allclose(s.channel_mean.numpy(), per_c.mean(1), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(s.channel_var.numpy(), per_c.var(1), rtol=1e-9, atol=1e-15)
    np.testing.assert_array_equal(s.channel_zero_fraction.numpy(), (per_c == 0).mean(1))
    edges = s.hist_edges.numpy()
    inside = a[(a >= edges[0]) & (a <= edges[-1])]
    want, _ = np.histogram(inside, bins=edges)
    np.testing.assert_array_equal(s.hist_counts.numpy(), want)
    assert s.underflow == int((a < edges[0]).sum()) and s.overflow == int((a > edges[-1]).sum())
    assert int(s.hist_counts.sum()) + s.underflow + s.overflow == a.size


def test_lenet5_default_layers_match_numpy(lenet):
    model = lenet
    x = torch.rand(11, 1, 28, 28, dtype=torch.float64)
    stats = activation_stats(model, loader(x, 4), progress=False, bins=30)
    assert list(stats) == ["relu1", "relu2"]
    assert [s.source for s in stats.values()] == ["conv1", "conv2"]
    ref = relu_outputs(model, x)
    for name, s in stats.items():
        check_against_numpy(s, ref[name])
        assert len(s.hist_counts) == 30
    # the report's lines, exactly in its format
    lines = report_lines(stats)
    assert (
        lines[0]
        == f"h_conv1_stats: mean = {stats['relu1'].mean:.4g}; var = {stats['relu1'].var:.4g}"
    )
    assert all(re.fullmatch(r"h_conv[12]_stats: mean = \S+; var = \S+", line) for line in lines)


def test_given_hist_range_and_explicit_layers(lenet):
    model = lenet
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    stats = activation_stats(
        model, loader(x, 4), layers=["relu2", "conv1"], hist_range=(0.0, 0.2), progress=False
    )
    assert list(stats) == ["conv1", "relu2"]  # in the order they run
    assert stats["conv1"].source is None and stats["relu2"].source == "conv2"
    with torch.no_grad():
        c1 = model.conv1(x).double().numpy()
    check_against_numpy(stats["conv1"], c1)
    assert stats["conv1"].underflow > 0 and stats["relu2"].overflow > 0
    np.testing.assert_allclose(stats["relu2"].hist_edges[[0, -1]].numpy(), [0.0, 0.2])
    check_against_numpy(stats["relu2"], relu_outputs(model, x)["relu2"])


def test_merging_is_numerically_stable():
    # values 1e9 + N(0, 1): a one-pass sum of squares loses everything; Chan's update does not
    torch.manual_seed(2)
    x = 1e9 + torch.randn(300, 2, 3, 3, dtype=torch.float64)
    model = nn.Sequential()
    model.add_module("ident", nn.Identity())
    stats = activation_stats(model, loader(x, 11), layers=["ident"], progress=False)
    a = x.numpy()
    s = stats["ident"]
    naive = (a**2).mean() - a.mean() ** 2
    assert abs(naive - a.var()) > 1.0  # the naive formula is far off here
    # each value carries ~1e-7 of rounding at 1e9, so 1e-7 is as close as any method gets
    np.testing.assert_allclose(s.var, a.var(), rtol=1e-7)
    np.testing.assert_allclose(s.mean, a.mean(), rtol=1e-15)
    per_c = np.moveaxis(a, 1, 0).reshape(2, -1)
    np.testing.assert_allclose(s.channel_var.numpy(), per_c.var(1), rtol=1e-7)


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 2, 3)
        self.calls_after = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.c1(x)))
        h = self.c2(h).relu()
        self.calls_after += 1
        return h.flatten(1).sum(1, keepdim=True)


def test_functional_relu_and_batchnorm_are_found():
    torch.manual_seed(3)
    model = Functional().double()
    model.bn.running_mean.uniform_(-0.2, 0.2)
    model.train()
    x = torch.rand(9, 1, 8, 8)  # float32 batches are cast to the model's float64
    stats = activation_stats(model, loader(x, 4), progress=False)
    assert list(stats) == ["c1:relu", "c2:relu"]
    assert [s.report_name for s in stats.values()] == ["h_c1", "h_c2"]
    model.eval()
    with torch.no_grad():
        h1 = F.relu(model.bn(model.c1(x.double())))
        h2 = model.c2(h1).relu()
    check_against_numpy(stats["c1:relu"], h1.double().numpy())
    check_against_numpy(stats["c2:relu"], h2.double().numpy())


def test_forward_stops_after_the_last_layer_and_model_is_restored():
    model = Functional()
    model.train()
    x = torch.rand(12, 1, 8, 8)
    activation_stats(model, loader(x, 4), progress=False)  # 3 batches
    # only the first batch (which discovers the layers) runs past the last ReLU
    assert model.calls_after == 1
    assert model.training and model.bn.training
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_fallback_to_conv_outputs_and_errors():
    # float64 throughout: float32 conv outputs differ in the last bits between batch sizes
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten()).double()
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    stats = activation_stats(model, loader(x, 2), progress=False)
    assert list(stats) == ["0"]
    with torch.no_grad():
        check_against_numpy(stats["0"], model[0](x).double().numpy())
    with pytest.raises(LayerError, match="hidden_state_stats"):
        activation_stats(nn.Sequential(nn.Flatten(), nn.Linear(36, 2)), loader(x), progress=False)
    with pytest.raises(LayerError, match="'1'"):
        activation_stats(tiny(), loader(torch.rand(2, 1, 6, 6)), layers=["l"])
    with pytest.raises(InputError, match="no batches"):
        activation_stats(tiny(), [], progress=False)
    with pytest.raises(InputError, match="image tensors"):
        activation_stats(tiny(), [{"pixels": 1}], progress=False)
    with pytest.raises(InputError, match="bins"):
        activation_stats(tiny(), [], bins=0)


def test_loader_of_plain_tensors_and_dicts():
    model = tiny().double()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    a = activation_stats(model, [x[:4], x[4:]], progress=False)
    b = activation_stats(model, [{"image": x[:3]}, {"image": x[3:]}], progress=False)
    assert list(a) == ["1"]
    for name in a:
        assert a[name].mean == pytest.approx(b[name].mean, rel=1e-12)
        assert a[name].var == pytest.approx(b[name].var, rel=1e-12)


def test_hidden_state_stats_match_numpy():
    torch.manual_seed(5)
    model = RNNClassifier(cell="rnn", hidden=16, init="pytorch").double()
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(4)  # push some units into saturation
    x = torch.rand(13, 1, 28, 28, dtype=torch.float64)
    hs = hidden_state_stats(model, loader(x, 5), progress=False)
    with torch.no_grad():
        h = model.hidden_states(x).double().numpy()  # [N, T, H]
    per_t = np.moveaxis(h, 1, 0).reshape(28, -1)
    np.testing.assert_allclose(hs.mean.numpy(), per_t.mean(1), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(hs.var.numpy(), per_t.var(1), rtol=1e-9, atol=1e-14)
    sat = (np.abs(per_t) > 0.99).mean(1)
    np.testing.assert_array_equal(hs.saturated_fraction.numpy(), sat)
    assert sat.max() > 0  # the test exercises saturation
    assert hs.count == 13 * 16 and hs.steps == 28
    np.testing.assert_allclose(hs.overall_mean, h.mean(), rtol=1e-10)
    np.testing.assert_allclose(hs.overall_var, h.var(), rtol=1e-9)
    lower = hidden_state_stats(model, loader(x, 5), progress=False, threshold=0.5)
    assert bool((lower.saturated_fraction >= hs.saturated_fraction).all())
    with pytest.raises(InputError, match="hidden_states"):
        hidden_state_stats(tiny(), loader(x), progress=False)


def test_renderers(lenet):
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    stats = activation_stats(lenet, [x], progress=False)
    table = stats_table(stats)
    rows = table.strip().splitlines()
    assert len(rows) == 2 + len(stats)
    assert rows[2].startswith("| relu1 | h_conv1 | ")
    assert f"{stats['relu2'].var:.4g}" in rows[3]
    fig = histogram_figure(stats["relu1"])
    assert fig.axes[0].get_title().startswith("relu1: ")  # the module name, as everywhere
    hs = hidden_state_stats(RNNClassifier(hidden=4), [torch.rand(3, 1, 28, 28)], progress=False)
    assert len(hidden_state_table(hs).strip().splitlines()) == 2 + 28 + 1
    assert len(hidden_state_figure(hs).axes) == 2


@pytest.mark.skipif(not (DATA / "cifar10-course").is_dir(), reason="shared data not present")
def test_real_course_data_matches_numpy(lenet):
    from deconvviz.sources.data import dataset_for_config

    model = lenet
    ds = dataset_for_config(model.config, DATA, split="test", per_class=3)
    assert len(ds) == 30
    stats = activation_stats(model, DataLoader(ds, batch_size=8), progress=False)
    x = torch.stack([ds[i][0] for i in range(len(ds))]).double()
    ref = relu_outputs(model, x)
    for name, s in stats.items():
        check_against_numpy(s, ref[name])
