"""Filter RMS, dead filters, the paper's renormalisation, and the filter grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from deconvviz.analyses.filters import RenormaliseHook, dead_filters, filter_rms, renormalise_
from deconvviz.base.errors import InputError, LayerError
from deconvviz.render.filters import filter_grid, rms_figure
from deconvviz.render.images import to_display
from deconvviz.sources.models import LeNet5


def net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(2),
    ).double()
    model(torch.zeros(1, 3, 8, 8, dtype=torch.float64))
    return model


def test_filter_rms_matches_numpy():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    want = np.sqrt((w.numpy().reshape(6, -1) ** 2).mean(axis=1))
    np.testing.assert_allclose(filter_rms(w).numpy(), want, rtol=1e-14)
    conv = nn.Conv2d(3, 6, 5).double()
    np.testing.assert_allclose(
        filter_rms(conv).numpy(),
        np.sqrt((conv.weight.detach().numpy().reshape(6, -1) ** 2).mean(axis=1)),
        rtol=1e-14,
    )


def test_dead_filters():
    w = torch.randn(5, 2, 3, 3)
    w[1] = 0.0
    w[4] = 1e-9
    assert dead_filters(w).tolist() == [1, 4]
    assert dead_filters(w, tol=0.0).tolist() == [1]
    with pytest.raises(InputError, match="tol"):
        dead_filters(w, tol=-1)


def test_renormalise_scales_only_big_filters():
    model = net()
    conv = model[0]
    with torch.no_grad():
        conv.weight[:4] *= 10.0  # these exceed the radius, the rest do not
        conv.weight[4:] *= 0.1
    w0 = conv.weight.detach().clone()
    b0 = conv.bias.detach().clone()
    rms0 = filter_rms(w0)
    radius = 0.2
    assert bool((rms0[:4] > radius).all()) and bool((rms0[4:] <= radius).all())
    over2 = int((filter_rms(model[2]) > radius).sum())
    counts = renormalise_(model, radius=radius)
    assert counts == {"0": 4, "2": over2}
    w1 = conv.weight.detach()
    # scaled back exactly to the radius, direction kept
    np.testing.assert_allclose(filter_rms(w1[:4]).numpy(), radius, rtol=1e-12)
    expected = w0[:4] * (radius / rms0[:4]).view(-1, 1, 1, 1)
    torch.testing.assert_close(w1[:4], expected, rtol=1e-14, atol=0)
    assert torch.equal(w1[4:], w0[4:])  # untouched, bit for bit
    assert torch.equal(conv.bias, b0)
    assert conv.weight.grad is None


def test_renormalise_layers_and_errors():
    model = LeNet5()
    with torch.no_grad():
        model.conv1.weight.mul_(5)
        model.conv2.weight.mul_(5)
    counts = renormalise_(model, radius=0.1, layers=["conv2"])
    assert list(counts) == ["conv2"] and counts["conv2"] > 0
    assert float(filter_rms(model.conv2).max()) <= 0.1 * (1 + 1e-6)
    assert float(filter_rms(model.conv1).max()) > 0.1  # not chosen, not changed
    assert renormalise_(model.conv1, radius=0.1) == {"": 32}
    with pytest.raises(LayerError, match="not a convolution"):
        renormalise_(model, layers=["fc1"])
    with pytest.raises(LayerError, match="conv1"):
        renormalise_(model, layers=["conv_1"])
    with pytest.raises(LayerError, match="no Conv"):
        renormalise_(nn.Linear(3, 3))
    with pytest.raises(InputError, match="radius"):
        renormalise_(model, radius=0)


def test_hook_as_training_callback_every_k():
    model = net()
    cb = RenormaliseHook(radius=0.05, every=2)
    with torch.no_grad():
        model[0].weight.mul_(10)
    assert cb(1, model) == {}  # not due: nothing changes
    assert float(filter_rms(model[0]).max()) > 0.05
    counts = cb(2, model)
    assert counts["0"] > 0 and cb.calls == 1 and cb.scaled["0"] == counts["0"]
    assert float(filter_rms(model[0]).max()) <= 0.05 * (1 + 1e-12)
    with pytest.raises(InputError, match="every"):
        RenormaliseHook(every=0)


def test_hook_registered_on_optimizer_keeps_filters_inside_radius():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=5.0)  # big steps push filters out
    hook = RenormaliseHook(radius=0.1)
    handle = hook.register(opt, model)
    x = torch.randn(16, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        for conv in (model[0], model[2]):
            assert float(filter_rms(conv).max()) <= 0.1 * (1 + 1e-12)
    assert hook.calls == 5 and sum(hook.scaled.values()) > 0
    handle.remove()
    with torch.no_grad():
        model[0].weight.mul_(100)
    opt.zero_grad()
    opt.step()  # no gradients: the step changes nothing, and the hook is gone
    assert hook.calls == 5 and float(filter_rms(model[0]).max()) > 0.1


def test_filter_grid_first_layer_is_rgb_tiles():
    torch.manual_seed(1)
    w = torch.randn(5, 3, 3, 3)
    img = filter_grid(w, nrow=3, scale=1, padding=1)
    assert img.mode == "RGB" and img.size == (3 * 4 + 1, 2 * 4 + 1)
    arr = np.asarray(img).astype(int)
    disp = to_display(w.double())
    for k in range(5):
        r, c = divmod(k, 3)
        tile = arr[1 + 4 * r : 4 + 4 * r, 1 + 4 * c : 4 + 4 * c]
        want = (disp[k].permute(1, 2, 0).numpy() * 255).round()
        np.testing.assert_array_equal(tile, want)
    grey = filter_grid(LeNet5().conv1, scale=2)
    assert grey.mode == "L"


def test_filter_grid_deeper_layer_per_input_channel():
    torch.manual_seed(2)
    w = torch.randn(4, 6, 2, 3)
    img = filter_grid(w, scale=1, padding=1, max_channels=5)
    assert img.mode == "L" and img.size == (5 * 4 + 1, 4 * 3 + 1)
    arr = np.asarray(img).astype(int)
    disp = to_display(w.double())  # one scale per filter, shared by its input channels
    for o in range(4):
        for i in range(5):
            tile = arr[1 + 3 * o : 3 + 3 * o, 1 + 4 * i : 4 + 4 * i]
            np.testing.assert_array_equal(tile, (disp[o, i].numpy() * 255).round())
    assert filter_grid(w, max_filters=2, scale=1, padding=1).size == (6 * 4 + 1, 2 * 3 + 1)


@pytest.mark.parametrize(
    ("shape", "kwargs", "says"),
    [
        ((16, 6, 5, 5), {}, "conv2: 16 filters (rows) x 6 input channels (columns), 5x5 each"),
        ((16, 6, 5, 5), {"max_channels": 4}, "first 4 of 6 input channels (columns)"),
        ((8, 3, 5, 5), {}, "conv2: 8 filters, 5x5 RGB"),
    ],
)
def test_a_titled_filter_grid_heads_the_same_grid_with_what_it_shows(
    monkeypatch, shape, kwargs, says
):
    import deconvviz.render.filters as filters

    torch.manual_seed(3)
    w = torch.randn(*shape)
    plain = np.asarray(filter_grid(w, scale=2, **kwargs))
    headed = filter_grid(w, scale=2, title="conv2", **kwargs)
    arr = np.asarray(headed)
    strip = arr.shape[0] - plain.shape[0]
    assert strip > 10  # room for a line of text above the grid
    np.testing.assert_array_equal(arr[strip:, : plain.shape[1]], plain)  # the grid, unchanged
    assert arr[:strip].min() < 100  # dark text on the white strip
    said: list[str] = []
    real = filters._headed
    monkeypatch.setattr(filters, "_headed", lambda g, text: said.append(text) or real(g, text))
    filter_grid(w, scale=2, title="conv2", **kwargs)
    assert says in said[0].replace("\u00a0", " ") and "grey" in said[0]


def test_filter_grid_errors():
    with pytest.raises(InputError, match="per_channel=True"):
        filter_grid(torch.randn(4, 5, 3, 3), per_channel=False)
    with pytest.raises(InputError, match="Linear"):
        filter_grid(nn.Linear(3, 3))
    with pytest.raises(InputError, match="Conv2d"):
        filter_grid(torch.randn(4, 3, 5))


def test_rms_figure_bars():
    w = torch.randn(6, 2, 3, 3)
    fig = rms_figure(w, radius=0.5)
    assert isinstance(fig, Figure)
    heights = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(heights, filter_rms(w).numpy(), rtol=1e-6)
