"""Dataset-scale top-k activations and their projections, against brute force."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import deconvviz
from deconvviz.base.errors import InputError
from deconvviz.engine.receptive import ReceptiveField
from zoo import CASES, CourseLeNet5, build


@pytest.fixture(scope="module")
def lenet_data():
    torch.manual_seed(0)
    model = CourseLeNet5().double().eval()
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(23, 1, 28, 28, generator=gen, dtype=torch.float64)
    labels = torch.arange(23) % 10
    return model, TensorDataset(images, labels)


def test_receptive_field_hand_computed():
    torch.manual_seed(0)
    model = CourseLeNet5()
    # conv1 5x5 pad 2: [-2, 2]; pool 2: jump 2, [-2, 3]; conv2 5x5 pad 2: [-6, 7] -> 14 pixels
    rf = deconvviz.receptive_field(model, "conv2", (1, 28, 28))
    assert rf == ReceptiveField((2, 2), (-6, -6), (7, 7), (28, 28))
    assert rf.size == (14, 14)
    assert rf.box(0, 0) == (0, 0, 8, 8)
    assert rf.box(13, 13, clip=False) == (20, 20, 34, 34)
    assert deconvviz.receptive_field(model, "fc1", (1, 28, 28)) is None  # after flatten


def test_receptive_field_of_alexnet_and_resnet():
    alex, _ = build(CASES[3])
    rf = deconvviz.receptive_field(alex, "features.3", (1, 3, 224, 224))
    assert rf.size == (51, 51) and rf.jump == (8, 8)  # 11 + 2*4 + 4*8
    res, _ = build(CASES[5])
    # conv1 7/2, maxpool 3/2, layer1 four 3x3 convs at jump 4: 7 + 2*2 + 8*4 = 43
    assert deconvviz.receptive_field(res, "layer1", (1, 3, 64, 64)).size == (43, 43)


def _brute_force(model, images, layer, k):
    acts = deconvviz.layer_output(model, images, layer)
    per_image = acts.flatten(2).max(dim=2)  # [N, C] strongest of each map in each image
    vals, idx = per_image.values.t().sort(dim=1, descending=True)
    return acts, vals[:, :k], idx[:, :k]


@pytest.mark.parametrize("batch_size", [1, 5, 23])
def test_top_activations_match_brute_force(lenet_data, batch_size):
    model, data = lenet_data
    loader = DataLoader(data, batch_size=batch_size)
    top = deconvviz.top_activations(model, loader, "relu2", k=4, progress=False)
    acts, vals, idx = _brute_force(model, data.tensors[0], "relu2", 4)
    assert top.values.shape == (64, 4)
    torch.testing.assert_close(top.values, vals)
    live = vals[:, -1] > vals.new_zeros(()).add(1e-12)  # ties of zeros may pick other images
    assert torch.equal(top.indices[live], idx[live])
    for c in range(0, 64, 9):
        for j in range(4):
            i, (r, col) = int(top.indices[c, j]), top.positions[c, j].tolist()
            assert float(acts[i, c, r, col]) == pytest.approx(float(top.values[c, j]), rel=1e-12)
            assert len(set(top.indices[c].tolist())) == 4  # distinct images
    rf = top.receptive_field
    r, col = top.positions[5, 0].tolist()
    assert tuple(top.boxes[5, 0].tolist()) == rf.box(r, col)


def test_top_activations_of_a_linear_layer_and_small_datasets(lenet_data):
    model, data = lenet_data
    loader = DataLoader(data, batch_size=8)
    with pytest.warns(deconvviz.FewImagesWarning) as caught:
        top = deconvviz.top_activations(model, loader, "fc2", k=30, progress=False)
    assert len(caught) == 1  # once, not once per batch
    message = str(caught[0].message)
    assert "top-30" in message and "only 23 images" in message and "--top 23" in message
    assert top.values.shape == (10, 30)
    assert top.valid.sum(dim=1).tolist() == [23] * 10
    assert (top.indices[:, 23:] == -1).all() and torch.isinf(top.values[:, 23:]).all()
    assert tuple(top.boxes[0, 0].tolist()) == (0, 0, 28, 28)
    with pytest.raises(InputError, match="shuffle=False"):
        deconvviz.top_activations(model, DataLoader(data, shuffle=True), "fc2")
    with pytest.raises(InputError, match="positive integer"):
        deconvviz.top_activations(model, loader, "fc2", k=0)


def test_project_top_equals_single_projections_and_patches(lenet_data):
    model, data = lenet_data
    images = data.tensors[0]
    top = deconvviz.top_activations(
        model, DataLoader(data, batch_size=10), "relu2", k=3, progress=False
    )
    proj = deconvviz.project_top(
        model, data, top, channels=[0, 7, 63], batch_size=4, progress=False
    )
    assert proj.reconstructions.shape == (3, 3, 1, 14, 14)
    assert proj.reconstructions.abs().sum() > 0
    rf = top.receptive_field
    with deconvviz.attach(model) as dn:
        for ci, c in enumerate([0, 7, 63]):
            for j in range(3):
                i = int(top.indices[c, j])
                r, col = top.positions[c, j].tolist()
                full = dn.project(images[i : i + 1], "relu2", c, position=(r, col))[0]
                y0, x0, y1, x1 = rf.box(r, col, clip=False)
                canvas = torch.zeros(1, 14, 14, dtype=full.dtype)
                patch = torch.zeros(1, 14, 14, dtype=full.dtype)
                cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, 28), min(x1, 28)
                canvas[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = full[:, cy0:cy1, cx0:cx1]
                patch[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = images[i, :, cy0:cy1, cx0:cx1]
                # nothing of the projection lies outside the receptive field
                inside = float(canvas.abs().sum())
                assert float(full.abs().sum()) == pytest.approx(inside, rel=1e-12)
                torch.testing.assert_close(
                    proj.reconstructions[ci, j], canvas, rtol=1e-6, atol=1e-12
                )
                torch.testing.assert_close(proj.patches[ci, j], patch)


def test_receptive_field_is_given_up_where_positions_are_rearranged():
    """Indexing that touches the spatial dimensions (a flip here) is not local: no crops."""

    class Flipping(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 2, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            h = self.conv1(x)[:, :, :, torch.arange(x.shape[-1] - 1, -1, -1)]  # mirrored columns
            return self.conv2(torch.relu(h[:, 0:2]))  # a channel slice is fine

    torch.manual_seed(0)
    model = Flipping().double()
    assert deconvviz.receptive_field(model, "conv1", (1, 16, 16)).size == (3, 3)
    assert deconvviz.receptive_field(model, "conv2", (1, 16, 16)) is None
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    with deconvviz.attach(model) as fast, deconvviz.attach(model, crop=False) as dense:
        torch.testing.assert_close(
            fast.project(x, "conv2", [0, 1], position=(3, 2)),
            dense.project(x, "conv2", [0, 1], position=(3, 2)),
        )
