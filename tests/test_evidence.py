"""Evidence measures: class selectivity of top-k images, and first-layer filter structure."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deconvviz.analyses.evidence import (
    class_selectivity,
    filter_structure,
    neighbour_correlation,
    selectivity_from_top,
)
from deconvviz.base.errors import InputError, LayerError
from deconvviz.sources.data import ImageDataset


def test_neighbour_correlation_hand_computed_cases() -> None:
    ramp = torch.arange(16.0).reshape(1, 1, 4, 4)  # each row and column a straight line
    checker = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 * 2.0 - 1
    # a 2x2 filter [[1, 2], [3, 5]]: horizontal pairs (1,2),(3,5), vertical (1,3),(2,5)
    w = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]])
    hx, hy = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 5.0])
    vx, vy = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0])

    def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.square().sum() * b.square().sum()).sqrt())

    got = neighbour_correlation(torch.cat([ramp, checker.view(1, 1, 4, 4)]))
    assert got[0] == pytest.approx(1.0) and got[1] == pytest.approx(-1.0)
    expected = (pearson(hx, hy) + pearson(vx, vy)) / 2
    assert float(neighbour_correlation(w)[0]) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(InputError, match="kh >= 2"):
        neighbour_correlation(torch.zeros(3, 1, 1, 1))


def test_filter_structure_tells_smooth_filters_from_fresh_ones() -> None:
    conv = nn.Conv2d(3, 16, 5)
    fresh = filter_structure(conv)
    assert abs(fresh.trained) < 0.15 and abs(fresh.init) < 0.1
    with torch.no_grad():  # blur every filter: neighbouring weights become alike
        k = torch.ones(1, 1, 3, 3) / 9
        w = conv.weight.reshape(-1, 1, 5, 5)
        conv.weight.copy_(nn.functional.conv2d(w, k, padding=1).reshape(16, 3, 5, 5))
    smooth = filter_structure(conv)
    assert smooth.trained > 0.5 and smooth.init == pytest.approx(fresh.init)
    assert smooth.structured and not fresh.structured
    assert smooth.per_filter.shape == (16,)
    with pytest.raises(InputError, match="Conv2d"):
        filter_structure(nn.Linear(3, 3))


def test_selectivity_from_top_hand_computed() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    values = torch.tensor(
        [
            [3.0, 2.0, 1.0, 0.5],  # images 0, 1, 2, 4: classes 0,0,1,2 -> 2/4
            [1.0, 1.0, 0.0, 0.0],  # images 2, 3 (>0 only): classes 1,1 -> 1
            [0.0, 0.0, 0.0, 0.0],  # never fired: dead
            [2.0, float("-inf"), float("-inf"), float("-inf")],  # one image, padding: 1
        ]
    )
    indices = torch.tensor([[0, 1, 2, 4], [2, 3, 0, 5], [0, 1, 2, 3], [5, -1, -1, -1]])
    res = selectivity_from_top({"a": (values, indices)}, labels)
    assert res.dead == {"a": (2,)}
    assert res.per_unit["a"][0] == pytest.approx(0.5) and math.isnan(res.per_unit["a"][2])
    assert res.selectivity["a"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert res.classes == 3 and res.to_dict()["live_units"] == {"a": 3}


class _Detectors(nn.Module):
    """conv 'early' sees mean brightness (class-blind); 'late' fires per quadrant (the class)."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Conv2d(1, 1, 1, bias=False)
        self.late = nn.Conv2d(1, 4, 8, bias=False)
        with torch.no_grad():
            self.early.weight.fill_(1.0)
            self.late.weight.zero_()
            for q, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
                self.late.weight[q, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 1.0
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.relu(self.early(x))
        return self.relu(self.late(e)).flatten(1)


def test_class_selectivity_scores_a_class_detector_above_a_class_blind_unit() -> None:
    torch.manual_seed(0)
    n = 40
    labels = torch.arange(n) % 4
    x = torch.randint(0, 25, (n, 1, 8, 8), dtype=torch.uint8)
    for i, q in enumerate(labels.tolist()):  # class q: bright quadrant q
        r, c = divmod(q, 2)
        x[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 200
    ds = ImageDataset(x, labels, ["a", "b", "c", "d"], name="quadrants")
    model = _Detectors()
    res = class_selectivity(model, ds, ["early", "late"], k=9, batch_size=16)
    # 'late' channel q sums quadrant q: its top-9 (of 10 per class) are all of class q
    assert res.per_unit["late"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert res.selectivity["late"] > res.selectivity["early"]
    assert res.rises_with_depth
    with pytest.raises(LayerError, match="unknown layer"):
        class_selectivity(model, ds, ["nope"])
