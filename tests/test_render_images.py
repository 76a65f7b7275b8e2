"""Display helpers: contrast stretching around grey, tensor -> PIL, image grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from deconvviz.base.errors import InputError
from deconvviz.render.images import make_grid, to_display, to_image


def test_to_display_hand_computed():
    t = torch.tensor([[[-2.0, 0.0, 1.0], [0.5, -1.0, 2.0]]])
    expected = 0.5 + t.numpy() / 4.0  # max |t| = 2
    out = to_display(t)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-7)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_to_display_is_per_image_in_a_batch():
    torch.manual_seed(0)
    batch = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    batch[1] *= 1000.0  # a loud image must not flatten the others
    batch[2] = 0.0
    out = to_display(batch)
    for i in range(4):
        img = batch[i].numpy()
        m = np.abs(img).max()
        want = np.full_like(img, 0.5) if m == 0 else 0.5 + img / (2 * m)
        np.testing.assert_allclose(out[i].numpy(), want, atol=1e-12)
    assert out.min() >= 0 and out.max() <= 1
    # signs survive: negative -> darker than grey
    assert torch.equal(out[0] < 0.5, batch[0] < 0)


def test_to_display_leading_dims_and_ints():
    t = torch.randn(2, 3, 1, 4, 4)  # [N, K, C, H, W] as project(channel=[...]) returns
    out = to_display(t)
    for n in range(2):
        for k in range(3):
            np.testing.assert_allclose(out[n, k].numpy(), to_display(t[n, k]).numpy())
    ints = to_display(torch.tensor([[-4, 0, 4]]))
    assert ints.dtype.is_floating_point
    np.testing.assert_allclose(ints.numpy(), [[0.0, 0.5, 1.0]])


def test_to_display_rejects_nan_and_vectors():
    with pytest.raises(InputError, match="NaN"):
        to_display(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(InputError, match=r"\[H, W\]"):
        to_display(torch.ones(5))


def test_to_image_grey_round_trip_exact():
    levels = torch.arange(256, dtype=torch.float64).view(1, 16, 16) / 255
    img = to_image(levels)
    assert img.mode == "L" and img.size == (16, 16)
    np.testing.assert_array_equal(np.asarray(img), np.arange(256).reshape(16, 16))
    assert to_image(levels[0]).mode == "L"  # [H, W] accepted


def test_to_image_rgb_layout():
    t = torch.zeros(3, 2, 4)
    t[0, 1, 3] = 1.0  # red at row 1, col 3
    t[2, 0, 0] = 0.5  # half blue at row 0, col 0
    arr = np.asarray(to_image(t))
    assert arr.shape == (2, 4, 3)
    assert tuple(arr[1, 3]) == (255, 0, 0)
    assert tuple(arr[0, 0]) == (0, 0, 128)  # 127.5 rounds half to even -> 128
    assert arr.sum() == 255 + 128


def test_to_image_errors_name_the_fix():
    with pytest.raises(InputError, match="to_display"):
        to_image(torch.tensor([[[-0.5, 1.0]]]))
    with pytest.raises(InputError, match="t\\[i\\]"):
        to_image(torch.rand(2, 3, 4, 4))
    with pytest.raises(InputError):
        to_image(torch.rand(2, 4, 4))  # 2 channels


def test_make_grid_geometry_and_placement():
    torch.manual_seed(1)
    batch = torch.rand(5, 3, 4, 6)
    grid = make_grid(batch, nrow=2, padding=1, pad_value=0.0)
    assert isinstance(grid, Image.Image) and grid.mode == "RGB"
    rows, cols = 3, 2
    assert grid.size == (cols * (6 + 1) + 1, rows * (4 + 1) + 1)
    arr = np.asarray(grid)
    for k in range(5):
        r, c = divmod(k, 2)
        y, x = 1 + r * 5, 1 + c * 7
        want = np.asarray(to_image(batch[k]))
        np.testing.assert_array_equal(arr[y : y + 4, x : x + 6], want)
    # padding and the empty sixth tile are pad_value
    assert arr[0].sum() == 0 and arr[:, 0].sum() == 0
    assert arr[11:15, 8:14].sum() == 0


def test_make_grid_scale_and_mixed_channels():
    grey = torch.tensor([[[0.0, 1.0]]])  # [1, 1, 2]
    rgb = torch.zeros(3, 1, 2)
    rgb[1] = 1.0
    grid = make_grid([grey, rgb], nrow=2, padding=0, scale=3)
    arr = np.asarray(grid)
    assert grid.mode == "RGB" and arr.shape == (3, 12, 3)
    # grey tile repeated as grey; each source pixel becomes a 3x3 block
    np.testing.assert_array_equal(arr[:, 0:3], 0)
    np.testing.assert_array_equal(arr[:, 3:6], 255)
    np.testing.assert_array_equal(arr[:, 6:12, 1], 255)
    np.testing.assert_array_equal(arr[:, 6:12, 0], 0)


def test_make_grid_greyscale_batch_stays_L():
    grid = make_grid(torch.rand(4, 5, 5), nrow=4, padding=2)
    assert grid.mode == "L" and grid.size == (4 * 7 + 2, 7 + 2)


def test_make_grid_labels_give_a_figure():
    fig = make_grid(torch.rand(5, 1, 5, 5), nrow=3, labels=list("abcde"))
    assert isinstance(fig, Figure)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == list("abcde")
    assert len(fig.axes) == 6  # 2 rows x 3, the last one blank


def test_make_grid_errors():
    with pytest.raises(InputError, match="one each"):
        make_grid(torch.rand(3, 1, 4, 4), labels=["a"])
    with pytest.raises(InputError, match="to_display"):
        make_grid(torch.randn(2, 1, 4, 4) * 5)
    with pytest.raises(InputError, match="nrow"):
        make_grid(torch.rand(2, 1, 4, 4), nrow=0)
    with pytest.raises(InputError, match="no images"):
        make_grid([])
