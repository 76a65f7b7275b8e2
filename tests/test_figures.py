"""Every figure the project draws can be trusted at a glance (issue 13, item 4).

Dead units are drawn and listed as dead, numbers say what they are, colour maps are perceptually
uniform with labelled colour bars, occlusion panel (b) is the rectified activity, tiles are
enlarged to a readable size and no text runs off the canvas. ``figcheck.check_figure`` holds the
checks shared by every figure.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from deconvviz.analyses.compare import Comparison
from deconvviz.analyses.occlusion import occlusion
from deconvviz.analyses.reconstruct import reconstruct_dataset, reconstruct_images
from deconvviz.analyses.stats import activation_stats, hidden_state_stats
from deconvviz.export.reconstructions import write_dataset_reconstructions
from deconvviz.render.filters import rms_figure
from deconvviz.render.images import dead_tile, display_scale, make_grid
from deconvviz.render.occlusion import draw_map, occlusion_figure
from deconvviz.render.reconstruct import (
    comparison_figure,
    fig2_block,
    image_projections_figure,
    top_projections_figure,
)
from deconvviz.render.stats import hidden_state_figure, histogram_figure
from deconvviz.render.training import curves_figure, sweep_curves_figure
from deconvviz.sources.models import LeNet5, RNNClassifier
from figcheck import check_figure, draw, mappables


class Net(nn.Module):
    """conv-relu-pool-conv-relu-pool-fc on 3x16x16 images with hand-set weights.

    conv1 and conv2 have positive weights and zero bias, so a map fires exactly on the images
    that are not all zero; conv2's channel 1 is -1 everywhere, so it never fires (dead).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(2, 3, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(3 * 4 * 4, 3)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.rand(conv.weight.shape) + 0.1)
                conv.bias.zero_()
            self.conv2.weight[1] = 0.0
            self.conv2.bias[1] = -1.0

    def forward(self, x: Tensor) -> Tensor:
        for m in self.children():
            x = m(x)
        return x


FIRED = 3  # images that are not all zero
IMAGES = 8


@pytest.fixture(scope="module")
def net() -> Net:
    torch.manual_seed(0)
    return Net().double().eval()


@pytest.fixture(scope="module")
def data() -> list[tuple[Tensor, int]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.zeros(IMAGES, 3, 16, 16, dtype=torch.float64)
    x[:FIRED] = torch.rand(FIRED, 3, 16, 16, generator=gen, dtype=torch.float64)
    return [(x[i], i % 3) for i in range(IMAGES)]


@pytest.fixture(scope="module")
def recs(net, data):
    return reconstruct_dataset(net, data, ["relu2", "conv2"], k=5, progress=False)


def _cell(fig, title_start: str):
    hits = [ax for ax in fig.axes if ax.get_title().startswith(title_start)]
    assert len(hits) == 1, [ax.get_title() for ax in fig.axes]
    return hits[0]


def test_dead_units_are_exposed_and_partial_top_k_is_marked(recs) -> None:
    rec = recs["relu2"]
    assert rec.images == IMAGES
    assert rec.dead == [1]
    # channels 0 and 2 fired on the FIRED non-zero images only, channel 1 on none
    assert rec.fired.sum(dim=1).tolist() == [FIRED, 0, FIRED]
    assert recs["conv2"].dead == [1]
    assert float(recs["conv2"].values[1, 0]) < 0  # pre-ReLU: the conv output is negative


def test_written_json_lists_dead_maps(recs, tmp_path) -> None:
    write_dataset_reconstructions({"relu2": recs["relu2"]}, tmp_path)
    summary = json.loads((tmp_path / "relu2.json").read_text())
    assert summary["dead"] == [1] and summary["images"] == IMAGES


def test_fig2_dead_cell_is_the_marker_and_listed(recs) -> None:
    rec = recs["relu2"]
    fig = top_projections_figure(rec)
    check_figure(fig)
    dead = _cell(fig, "ch 1:")
    assert dead.get_title() == "ch 1: dead"
    arr = np.asarray(dead.images[0].get_array())
    np.testing.assert_array_equal(arr, dead_tile(*arr.shape))
    assert [t.get_text() for t in dead.texts] == [f"dead: never > 0\non {IMAGES} images"]
    footer = fig._supxlabel.get_text()  # type: ignore[attr-defined]
    assert f"dead feature maps (never > 0 on {IMAGES} images): 1" in footer.replace("\n", " ")
    # the live cells say what the number is, and how many of the k entries are real
    live = _cell(fig, "ch 0:")
    v = float(rec.values[0, 0])
    assert v > 0
    assert live.get_title() == f"ch 0: max act {v:.3g}\nonly {FIRED} of 5 images > 0"
    assert "pre-ReLU" not in fig._suptitle.get_text()  # type: ignore[union-attr]


def test_fig2_partial_top_k_leaves_the_missing_entries_blank(recs) -> None:
    rec = recs["relu2"]
    fig = top_projections_figure(rec, [0])
    block = np.asarray(_cell(fig, "ch 0:").images[0].get_array())
    h = rec.patches.shape[-1]
    scale = display_scale(h)
    assert block.shape[1] == 2 * (3 * (h * scale + 1) + 1) + 3 * scale
    th = h * scale
    half = 3 * (th + 1) + 1 + 3 * scale  # x where the patches (right half) begin

    def tile(entry: int, x0: int) -> np.ndarray:
        r, c = divmod(entry, 3)
        y, x = 1 + r * (th + 1), x0 + 1 + c * (th + 1)
        return block[y : y + th, x : x + th]

    for entry in range(5):
        for x0 in (0, half):
            blank = bool((tile(entry, x0) == 255).all())
            assert blank == (entry >= FIRED), (entry, x0)
    want = fig2_block(
        rec.reconstructions[0], rec.patches[0], keep=rec.fired[0], scale=scale, outside=None
    )
    assert block.shape[:2] == (want.height, want.width)


def test_fig2_pre_relu_values_are_said_to_be_pre_relu(recs) -> None:
    fig = top_projections_figure(recs["conv2"])
    check_figure(fig)
    dead = _cell(fig, "ch 1:")
    (note,) = [t.get_text() for t in dead.texts]
    v = float(recs["conv2"].values[1, 0])
    assert note.endswith(f"(max act {v:.3g}, pre-ReLU)")
    assert "pre-ReLU: can be negative" in fig._suptitle.get_text().replace("\n", " ")  # type: ignore[union-attr]


def test_fig2_tiles_are_drawn_at_a_readable_size(recs) -> None:
    rec = recs["relu2"]
    fig = top_projections_figure(rec)
    draw(fig)
    ax = _cell(fig, "ch 0:")
    cols = np.asarray(ax.images[0].get_array()).shape[1]
    px_per_pixel = ax.get_window_extent().width / cols
    side = rec.patches.shape[-1] * display_scale(rec.patches.shape[-1])
    assert side * px_per_pixel >= 0.9 * 48  # an 8x8 patch: at least ~48 screen pixels


def test_image_projections_figure_fits_its_text_and_enlarges_tiles() -> None:
    torch.manual_seed(0)
    net = LeNet5(in_channels=3, image_size=32).double().eval()
    with torch.no_grad():  # conv2's map 1 is -1 everywhere: it never fires
        net.conv2.weight[1] = 0.0
        net.conv2.bias[1] = -1.0
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res = reconstruct_images(net, x, ["conv2"], channels=[0, 1], progress=False)["conv2"]
    assert float(res.values[0, 0]) > 0
    fig = image_projections_figure(res, 0, title="a_rather_long_image_name_from_disk")
    check_figure(fig)  # the title of this 3-panel figure used to be cut at both ends
    draw(fig)
    inp = _cell(fig, "input")
    arr = np.asarray(inp.images[0].get_array())
    assert arr.shape[0] == 32 * display_scale(32, min_px=96) >= 96
    assert inp.get_window_extent().width >= 0.95 * 96  # a 32x32 image drawn at >= 96 px
    v0 = float(res.values[0, 0])
    assert _cell(fig, "ch 0:").get_title() == f"ch 0: max act {v0:.3g}"
    inactive = _cell(fig, "ch 1:")  # the conv output is -1 everywhere
    assert inactive.get_title() == "ch 1: inactive"
    dead = np.asarray(inactive.images[0].get_array())
    np.testing.assert_array_equal(dead, dead_tile(*dead.shape))
    assert "pre-ReLU" in inactive.texts[0].get_text()


class NegativeNet(nn.Module):
    """conv with bias -5 (pre-ReLU output negative everywhere but where the image is bright)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(-5.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def test_occlusion_panel_b_shows_the_rectified_activity() -> None:
    torch.manual_seed(0)
    model = NegativeNet().double().eval()
    x = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    x[0, 0, 2:5, 2:5] = 1.0  # one bright 3x3 square
    res = occlusion(model, x, size=3, stride=3, layer="conv", progress=False)
    assert res.feature is not None and res.feature_rectified is not None
    assert bool((res.feature < 0).all())  # the old, pre-ReLU total: negative everywhere
    # oracle: sum of max(conv(occluded), 0) of the chosen map, occluder at (0, 0) and (0, 3)
    conv = model.conv
    c = int(res.channel[0])
    for (i, j), (y, xx) in {(0, 0): (0, 0), (1, 1): (3, 3)}.items():
        occ = x.clone()
        occ[:, :, y : y + 3, xx : xx + 3] = 0.5
        want = conv(occ)[0, c].clamp(min=0).sum()
        torch.testing.assert_close(res.feature_rectified[0, i, j], want, rtol=0, atol=1e-10)
    # unoccluded: 9 - 5 = 4 at the square's centre, 6 - 5 = 1 at its 4 edge centres, < 0 else
    assert float(res.base_feature_rectified[0]) == pytest.approx(4.0 + 4 * 1.0)
    fig = occlusion_figure(res, x, 0, ["a", "b", "c"])
    check_figure(fig)
    panel = _cell(fig, "(b)")
    assert panel.get_title().startswith("(b) total rectified activation")
    (mesh,) = panel.collections
    values = np.asarray(mesh.get_array())
    assert values.min() >= 0
    np.testing.assert_allclose(values.ravel(), res.feature_rectified[0].numpy().ravel())
    assert mesh.get_cmap().name == "magma"
    assert mesh.colorbar.ax.get_ylabel() == "sum of ReLU(activation)"
    prob = _cell(fig, "(d)")
    assert prob.collections[0].colorbar.ax.get_ylabel() == f"p({'abc'[int(res.target[0])]})"


def test_occlusion_figure_rgb_with_projection_passes_the_checks() -> None:
    torch.manual_seed(0)
    model = LeNet5().double().eval()
    x = torch.rand(1, 1, 28, 28, dtype=torch.float64)
    res = occlusion(model, x, size=7, stride=7, layer="conv2", progress=False)
    check_figure(occlusion_figure(res, x, 0))
    fig = Figure_from_draw_map(res)
    assert all(m.get_cmap().name != "jet" for m in mappables(fig))


def Figure_from_draw_map(res):  # noqa: N802 - a small factory, named for what it returns
    from matplotlib.figure import Figure

    fig = Figure()
    draw_map(fig.subplots(), res, res.prob[0])
    return fig


def test_other_figures_pass_the_checks() -> None:
    torch.manual_seed(0)
    lenet = LeNet5().double().eval()
    check_figure(rms_figure(lenet.conv1, radius=0.1, title="conv1 filter RMS"))
    stats = activation_stats(lenet, [torch.rand(2, 1, 28, 28, dtype=torch.float64)], progress=False)
    check_figure(histogram_figure(stats["relu1"]))
    hs = hidden_state_stats(RNNClassifier(hidden=4), [torch.rand(3, 1, 28, 28)], progress=False)
    check_figure(hidden_state_figure(hs))
    history = {"train_loss": [(i, 100.0 / (i + 1)) for i in range(50)], "test_acc": [(49, 0.5)]}
    check_figure(curves_figure(history, title="LeNet5 adam 1e-3"))
    check_figure(sweep_curves_figure({"a": history, "b": history}, title="sweep"))
    check_figure(make_grid(torch.rand(2, 3, 32, 32), labels=["first", "second"]))
    comp = Comparison(
        images=torch.rand(2, 3, 32, 32),
        target=torch.tensor([0, 1]),
        probability=torch.tensor([0.9, 0.2]),
        methods=("saliency", "deconvnet"),
        attributions=torch.randn(2, 2, 3, 32, 32),
    )
    fig = comparison_figure(comp, ["cat", "dog"])
    check_figure(fig)
    assert fig.axes[0].get_ylabel() == "target cat\np(cat) = 0.90"  # the class, by name
    draw(fig)
    assert fig.axes[0].get_window_extent().width >= 0.95 * 96


def test_occlusion_maps_are_opaque_beside_the_image_and_legends_readable() -> None:
    # A map blended over the image shows colours that are not on its colour bar: every map panel
    # is opaque with nothing under it; the input panel (a) shows the image beside them.
    torch.manual_seed(0)
    model = LeNet5().double().eval()
    x = torch.rand(1, 1, 28, 28, dtype=torch.float64)
    res = occlusion(model, x, size=7, stride=7, layer="conv2", progress=False)
    fig = occlusion_figure(res, x, 0, [f"class {i}" for i in range(10)])
    for tag in ("(b)", "(d)", "(e)"):
        ax = _cell(fig, tag)
        assert len(ax.images) == 0, tag  # no image under the map
        assert all(m.get_alpha() in (None, 1.0) for m in ax.collections), tag
    assert len(_cell(fig, "(a)").images) == 1  # the image is shown beside
    legend = _cell(fig, "(e)").get_legend()
    assert min(t.get_fontsize() for t in legend.get_texts()) * 100 / 72 >= 11  # px at 100 dpi
    # asked for, the old overlay is still there
    blended = occlusion_figure(res, x, 0, alpha=0.5)
    assert len(_cell(blended, "(d)").images) == 1


def test_occlusion_notebook_picture_is_viridis_not_jet(monkeypatch) -> None:
    from deconvviz.base import _display
    from deconvviz.render.occlusion import probability_maps_figure

    torch.manual_seed(0)
    model = LeNet5().double().eval()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    res = occlusion(model, x, size=7, stride=7, progress=False)
    fig = probability_maps_figure(res)
    check_figure(fig)
    assert {m.get_cmap().name for m in mappables(fig)} == {"viridis"}
    drawn = []
    monkeypatch.setattr(_display, "figure_png", lambda f, dpi=90: drawn.append(f) or b"png")
    assert res._repr_png_() == b"png"
    assert {m.get_cmap().name for m in mappables(drawn[0])} == {"viridis"}
