"""Invariance curves: the transformations against pixel oracles, distances against a brute-force
loop, and flat curves for a model built to be translation invariant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deconvviz.analyses import invariance, transform_images
from deconvviz.analyses.invariance import default_values
from deconvviz.base.errors import InputError, LayerError


class MaxPoolNet(nn.Module):
    """conv -> ReLU -> global max pool -> linear: invariant to shifts that keep the content
    inside the image (zero background, zero padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.relu(self.conv(x)))))


class DenseNet(nn.Module):
    """flatten -> linear -> ReLU -> linear: every pixel has its own weight, not invariant."""

    def __init__(self, side: int = 16) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(side * side, 12)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


def blobs(n: int = 3, side: int = 16, seed: int = 0) -> torch.Tensor:
    """Random 4x4 blobs in the middle of a zero background (room to move 5 pixels each way)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, side, side, dtype=torch.float64)
    x[:, :, 6:10, 6:10] = torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) + 0.5
    return x


def seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls().double().eval()


# ------------------------------------------------------------------ transformations


def test_translate_matches_a_pixel_loop() -> None:
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64)
    for dy in (-3, -1, 0, 2, 7, 9):
        got = transform_images(x, "translate", dy, fill=-1.0)
        want = torch.full_like(x, -1.0)
        for i in range(7):
            if 0 <= i - dy < 7:
                want[:, :, i, :] = x[:, :, i - dy, :]
        assert torch.equal(got, want), dy
    got = transform_images(x, "htranslate", -2)
    assert torch.equal(got[..., :7], x[..., 2:]) and bool((got[..., 7:] == 0).all())


def test_rotation_of_a_square_image_by_90_degrees_is_rot90() -> None:
    x = torch.rand(2, 3, 9, 9, dtype=torch.float64)
    assert torch.allclose(transform_images(x, "rotate", 90), torch.rot90(x, 1, (-2, -1)), atol=1e-9)
    assert torch.allclose(
        transform_images(x, "rotate", -90), torch.rot90(x, -1, (-2, -1)), atol=1e-9
    )
    assert torch.equal(transform_images(x, "rotate", 360), x)  # the identity is exact


def test_rotation_of_a_non_square_image_moves_a_point_correctly() -> None:
    # a point 2 rows below the centre of a 7x11 image goes, turned 90 degrees counter-clockwise,
    # to 2 columns right of the centre (row offset dy -> column offset dy, as rot90 does)
    x = torch.zeros(1, 1, 7, 11, dtype=torch.float64)
    x[0, 0, 3 + 2, 5] = 1.0
    got = transform_images(x, "rotate", 90)[0, 0]
    assert got[3, 5 + 2].item() == pytest.approx(1.0, abs=1e-9)
    assert got.sum().item() == pytest.approx(1.0, abs=1e-9)


def test_scale_zooms_about_the_centre() -> None:
    x = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    x[..., 6:10, 6:10] = 1.0
    big = transform_images(x, "scale", 2.0)
    assert int((big > 0.5).sum()) == 64  # side 4 -> 8
    assert big[0, 0, 5:11, 5:11].min().item() == pytest.approx(1.0)
    assert big[0, 0, :3].abs().max().item() == 0.0
    small = transform_images(x, "scale", 0.5, fill=0.25)
    assert int((small > 0.5).sum()) == 4  # side 4 -> 2
    assert small[0, 0, 0, 0].item() == pytest.approx(0.25)  # outside the image: the fill
    assert torch.equal(transform_images(x, "scale", 1.0), x)


def test_transform_errors() -> None:
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(InputError, match="whole pixels"):
        transform_images(x, "translate", 1.5)
    with pytest.raises(InputError, match="positive"):
        transform_images(x, "scale", 0.0)
    with pytest.raises(InputError, match="did you mean 'rotate'"):
        transform_images(x, "rotat", 10)


def test_default_values_include_the_identity() -> None:
    for transform in ("translate", "htranslate", "scale", "rotate"):
        vals = default_values(transform, (28, 28))
        identity = 1.0 if transform == "scale" else 0.0
        assert identity in vals.tolist(), transform
        assert len(vals) >= 5


# ------------------------------------------------------------------ invariance


def test_distances_and_probabilities_match_a_brute_force_loop() -> None:
    model = seeded(DenseNet)
    x = blobs(3)
    y = torch.tensor([0, 1, 3])
    shifts = [-4, -1, 0, 2, 5]
    res = invariance(
        model, x, y, "translate", shifts, layers=["fc1", "relu"], fill=0.1, progress=False
    )
    assert res.distance.shape == (2, 3, 5) and res.prob.shape == (3, 5)
    with torch.no_grad():
        for i in range(3):
            f0 = model.fc1(model.flatten(x[i : i + 1]))
            for v, dy in enumerate(shifts):
                moved = torch.full_like(x[i : i + 1], 0.1)
                for r in range(16):
                    if 0 <= r - dy < 16:
                        moved[..., r, :] = x[i : i + 1, :, r - dy, :]
                f1 = model.fc1(model.flatten(moved))
                assert res.distance[0, i, v].item() == pytest.approx((f1 - f0).norm().item())
                assert res.distance[1, i, v].item() == pytest.approx(
                    (f1.relu() - f0.relu()).norm().item()
                )
                p = torch.softmax(model(moved), 1)[0]
                assert res.prob[i, v].item() == pytest.approx(p[y[i]].item())
                assert res.predicted[i, v].item() == int(p.argmax())
                assert res.relative[0, i, v].item() == pytest.approx(
                    ((f1 - f0).norm() / f0.norm()).item()
                )


def test_translation_invariant_model_gives_flat_curves_and_a_dense_one_does_not() -> None:
    x = blobs(3)
    y = torch.tensor([0, 1, 2])
    shifts = list(range(-5, 6))
    inv = invariance(
        seeded(MaxPoolNet), x, y, "translate", shifts, layers=["conv", "pool"], progress=False
    )
    dense = invariance(seeded(DenseNet), x, y, "translate", shifts, layers=["fc1"], progress=False)
    zero = shifts.index(0)
    # the conv map moves with the content, the global max does not
    assert inv.distance[0, :, zero].abs().max().item() == 0.0
    assert bool((inv.distance[0][:, [i for i in range(11) if i != zero]] > 0.1).all())
    assert inv.distance[1].abs().max().item() < 1e-9
    assert (inv.prob - inv.prob[:, zero : zero + 1]).abs().max().item() < 1e-9
    # a dense layer is not invariant: every shift moves it
    off = [i for i in range(11) if i != zero]
    assert bool((dense.distance[0][:, off] > 1e-3).all())
    assert dense.distance[0, :, zero].abs().max().item() == 0.0


def test_default_layers_are_first_and_last_hidden() -> None:
    res = invariance(seeded(DenseNet), blobs(2), [0, 1], "scale", [0.8, 1.0], progress=False)
    assert res.layers == ("fc1",)  # fc1 and fc2 are the parametric layers: first = top = fc1
    res = invariance(seeded(MaxPoolNet), blobs(2), [0, 1], "rotate", [0, 90], progress=False)
    assert res.layers == ("conv",)  # conv and fc are the only parametric layers: first = top
    info = res.to_dict()
    assert info["values"] == [0.0, 90.0] and set(info["mean_distance"]) == {"conv"}
    assert len(info["accuracy"]) == 2


def test_model_is_left_as_it_was() -> None:
    model = seeded(DenseNet).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    invariance(model, blobs(2), [0, 1], "translate", [0, 1], progress=False)
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_input_errors_name_the_fix() -> None:
    model = seeded(DenseNet)
    x = blobs(2)
    with pytest.raises(InputError, match="labels range"):
        invariance(model, x, [0, 9], progress=False)
    with pytest.raises(InputError, match=r"\[N\] = \[2\]"):
        invariance(model, x, [0], progress=False)
    with pytest.raises(InputError, match="unsqueeze"):
        invariance(model, x[0], [0], progress=False)
    with pytest.raises(LayerError, match="did you mean 'fc1'"):
        invariance(model, x, [0, 1], layers=["fc_1"], progress=False)
    with pytest.raises(InputError, match="empty"):
        invariance(model, x, [0, 1], values=[], progress=False)
