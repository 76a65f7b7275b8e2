"""Correspondence scores against a brute-force numpy loop, and cases whose answer is known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from deconvviz.analyses import correspondence, occlude
from deconvviz.base.errors import InputError, LayerError


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(4 * 6 * 6, 10)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(x)))
        return self.fc2(self.relu2(self.fc1(self.flatten(x))))


class Pixels(nn.Module):
    """Features = the pixels themselves (a flatten layer), then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(144, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(x))


def model_of(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().double().eval()


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 12, 12, generator=g, dtype=torch.float64) + 0.1  # all positive


def brute_force(
    model: nn.Module, x: torch.Tensor, boxes: list[list[int]], layer: str, fill: float
) -> tuple[float, float]:
    """The definition: per image eps = f(x) - f(occluded x); mean/std over pairs of the fraction
    of elements whose signs differ."""
    feats = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, a, out: feats.__setitem__("f", out))
    signs = []
    try:
        with torch.no_grad():
            for i in range(len(x)):
                model(x[i : i + 1])
                f0 = feats["f"].flatten().numpy().copy()
                occ = x[i : i + 1].clone()
                y0, x0, y1, x1 = boxes[i]
                occ[..., y0:y1, x0:x1] = fill
                model(occ)
                f1 = feats["f"].flatten().numpy().copy()
                signs.append(np.sign(f0 - f1))
    finally:
        handle.remove()
    fractions = [np.mean(signs[i] != signs[j]) for i, j in itertools.combinations(range(len(x)), 2)]
    return float(np.mean(fractions)), float(np.std(fractions, ddof=1))


def test_scores_match_the_brute_force_definition() -> None:
    model = model_of(SmallCNN)
    x = images(4)
    boxes = [[2, 3, 6, 7], [1, 1, 5, 5], [6, 6, 10, 10], [3, 2, 7, 6]]
    res = correspondence(
        model, x, boxes, ["conv1", "fc1"], n_random=3, seed=1, fill=0.5, progress=False
    )
    assert res.score.shape == (1, 2) and res.random_score.shape == (1, 3, 2)
    for li, layer in enumerate(["conv1", "fc1"]):
        mean, std = brute_force(model, x, boxes, layer, 0.5)
        assert res.score[0, li].item() == pytest.approx(mean)
        assert res.score_std[0, li].item() == pytest.approx(std)
        for r in range(3):
            rand_boxes = res.random_boxes[0, r].tolist()
            mean, _ = brute_force(model, x, rand_boxes, layer, 0.5)
            assert res.random_score[0, r, li].item() == pytest.approx(mean)


def test_same_part_is_perfectly_consistent_and_random_parts_are_not() -> None:
    # Features are the pixels, all positive; occluding the same box with 0 changes exactly the
    # same elements, all with sign +1, in every image: the score is 0. Random boxes differ.
    res = correspondence(
        model_of(Pixels),
        images(5),
        [3, 3, 7, 7],
        ["flatten"],
        n_random=8,
        seed=0,
        parts=["square"],
        progress=False,
    )
    assert res.parts == ("square",)
    assert res.score[0, 0].item() == 0.0
    assert bool((res.random_score > 0).all())
    assert res.random_mean[0, 0].item() > 0.05
    info = res.to_dict()
    assert info["score"]["square"]["flatten"] == 0.0
    assert info["n_images"] == 5 and info["n_random"] == 8


def test_random_boxes_keep_the_size_stay_inside_and_follow_the_seed() -> None:
    model = model_of(SmallCNN)
    x = images(3)
    parts = torch.tensor([[[0, 0, 4, 5]] * 3, [[2, 2, 10, 5]] * 3])  # two parts
    a = correspondence(model, x, parts, ["fc1"], n_random=6, seed=3, progress=False)
    b = correspondence(model, x, parts, ["fc1"], n_random=6, seed=3, progress=False)
    c = correspondence(model, x, parts, ["fc1"], n_random=6, seed=4, progress=False)
    assert a.random_boxes.shape == (2, 6, 3, 4)
    assert torch.equal(a.random_boxes, b.random_boxes) and torch.equal(
        a.random_score, b.random_score
    )
    assert not torch.equal(a.random_boxes, c.random_boxes)
    rb = a.random_boxes
    assert bool(((rb[..., 2] - rb[..., 0]) == parts[:, None, :, 2] - parts[:, None, :, 0]).all())
    assert bool(((rb[..., 3] - rb[..., 1]) == parts[:, None, :, 3] - parts[:, None, :, 1]).all())
    assert bool((rb[..., :2] >= 0).all()) and bool((rb[..., 2] <= 12).all())
    assert bool((rb[..., 3] <= 12).all())


def test_occlude_sets_only_the_box() -> None:
    x = torch.ones(2, 3, 5, 5)
    out = occlude(x, torch.tensor([[0, 0, 2, 3], [4, 4, 5, 5]]), fill=-1.0)
    assert out[0, :, :2, :3].eq(-1).all() and out[0].eq(-1).sum() == 3 * 6
    assert out[1, :, 4, 4].eq(-1).all() and out[1].eq(-1).sum() == 3
    assert x.eq(1).all()  # not in place


def test_box_errors_name_the_fix() -> None:
    model = model_of(SmallCNN)
    x = images(3)
    with pytest.raises(InputError, match="inside the 12x12 image"):
        correspondence(model, x, [0, 0, 13, 4], progress=False)
    with pytest.raises(InputError, match="non-empty"):
        correspondence(model, x, [4, 4, 4, 8], progress=False)
    with pytest.raises(InputError, match="give one each"):
        correspondence(model, x, [[0, 0, 2, 2]] * 2, progress=False)
    with pytest.raises(InputError, match="at least two images"):
        correspondence(model, x[:1], [0, 0, 2, 2], progress=False)
    with pytest.raises(InputError, match="n_random"):
        correspondence(model, x, [0, 0, 2, 2], n_random=0, progress=False)
    with pytest.raises(LayerError, match="did you mean"):
        correspondence(model, x, [0, 0, 2, 2], ["conv"], progress=False)
