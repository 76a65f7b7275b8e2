"""Per-layer reconstructions (dataset and image modes), image loading, writing and rendering.

Oracles: a brute-force scan of every image's layer output (top-k), and the explicit
layer-by-layer deconvnet of ``zoo.chain_oracle`` (float64, full image).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from deconvviz.analyses.reconstruct import (
    LayerReconstructions,
    expected_input,
    reconstruct_dataset,
    reconstruct_images,
)
from deconvviz.analyses.topk import FewImagesWarning
from deconvviz.base._util import safe_name
from deconvviz.base.checks import conv_layer_names
from deconvviz.base.errors import DataError, InputError, LayerError
from deconvviz.base.images import load_images
from deconvviz.export.reconstructions import (
    write_dataset_reconstructions,
    write_image_reconstructions,
)
from deconvviz.render.images import to_display
from deconvviz.render.reconstruct import (
    OUTSIDE,
    fig2_block,
    image_projections_figure,
    input_display,
    outside_mask,
    top_projections_figure,
)
from zoo import chain_oracle


class SmallNet(nn.Module):
    """conv-relu-pool-conv-relu-pool-fc, with no input check (receptive-field crops work)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        for m in self.children():
            x = m(x)
        return x


class CheckedNet(SmallNet):
    """The same network refusing inputs of another size, as deconvviz.sources.models.LeNet5 does."""

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != (16, 16):
            raise InputError(f"CheckedNet expects 16x16 images, got {tuple(x.shape)}")
        return super().forward(x)


def _data(n: int = 11, seed: int = 1) -> list[tuple[Tensor, int]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=gen, dtype=torch.float64)
    return [(x[i], i % 3) for i in range(n)]


def _model(cls: type[SmallNet] = SmallNet) -> SmallNet:
    torch.manual_seed(0)
    return cls().double().eval()


def _brute_top(model: nn.Module, data: list, layer: str, k: int):
    """Per channel: the k images with the strongest activation (each image's own maximum)."""
    x = torch.stack([d[0] for d in data])
    h = x
    for name, m in model.named_children():
        h = m(h)
        if name == layer:
            break
    n, c, _, w = h.shape
    flat = h.detach().flatten(2)
    best, where = flat.max(dim=2)  # [N, C]
    out = []
    for ch in range(c):
        order = sorted(range(n), key=lambda i: -float(best[i, ch]))[:k]
        out.append(
            [(i, float(best[i, ch]), int(where[i, ch]) // w, int(where[i, ch]) % w) for i in order]
        )
    return out


@pytest.mark.parametrize("cls", [SmallNet, CheckedNet], ids=["crops", "full-image"])
def test_reconstruct_dataset_matches_brute_force_and_oracle(cls):
    model = _model(cls)
    data = _data()
    k = 3
    res = reconstruct_dataset(model, data, ["conv2"], k=k, progress=False)
    rec = res["conv2"]
    assert isinstance(rec, LayerReconstructions)
    assert rec.channels.tolist() == list(range(5))
    rf = rec.receptive_field
    # conv1 3x3 pad 1: [-1, 1]; pool 2: jump 2, [-1, 2]; conv2 3x3 pad 1: [-3, 4] -> 8 pixels
    assert rf is not None and rf.size == (8, 8) and rf.jump == (2, 2) and rf.start == (-3, -3)
    assert rec.reconstructions.shape == (5, k, 3, 8, 8) == rec.patches.shape
    x = torch.stack([d[0] for d in data])
    for ch, expected in enumerate(_brute_top(_model(SmallNet), data, "conv2", k)):
        for j, (img, value, row, col) in enumerate(expected):
            assert int(rec.indices[ch, j]) == img
            assert float(rec.values[ch, j]) == pytest.approx(value, rel=1e-12)
            assert rec.positions[ch, j].tolist() == [row, col]
            # the projection, cut to the receptive field, against the explicit deconvnet
            full = chain_oracle(_model(SmallNet), x, "conv2", [(img, ch, row, col)])[0]
            y0, x0 = row * 2 - 3, col * 2 - 3
            want = torch.zeros(3, 8, 8, dtype=torch.float64)
            patch = torch.zeros_like(want)
            ys, xs = slice(max(y0, 0), min(y0 + 8, 16)), slice(max(x0, 0), min(x0 + 8, 16))
            ty = slice(ys.start - y0, ys.stop - y0)
            tx = slice(xs.start - x0, xs.stop - x0)
            want[:, ty, tx] = full[:, ys, xs]
            patch[:, ty, tx] = x[img, :, ys, xs]
            torch.testing.assert_close(rec.reconstructions[ch, j], want, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(rec.patches[ch, j], patch, rtol=0, atol=0)
            # nothing of the projection lies outside its receptive field
            outside = full.clone()
            outside[:, ys, xs] = 0
            assert float(outside.abs().max()) == 0.0


def test_channel_subset_keeps_channel_numbers_and_k_larger_than_dataset():
    model = _model()
    data = _data(n=2)
    with pytest.warns(FewImagesWarning, match="only 2 images"):
        res = reconstruct_dataset(model, data, "conv1", k=4, channels=[3, 1], progress=False)
    rec = res["conv1"]
    assert rec.channels.tolist() == [3, 1]
    with pytest.warns(FewImagesWarning):
        full = reconstruct_dataset(model, data, "conv1", k=4, progress=False)["conv1"]
    torch.testing.assert_close(rec.values, full.values[[3, 1]])
    torch.testing.assert_close(rec.reconstructions, full.reconstructions[[3, 1]])
    # two images for k=4: the missing entries say so and stay zero
    assert rec.indices[:, 2:].eq(-1).all() and torch.isinf(rec.values[:, 2:]).all()
    assert rec.reconstructions[:, 2:].abs().max() == 0


def _pixels(fig) -> np.ndarray:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def test_fewer_images_than_k_warns_once_and_padding_is_never_drawn_or_written(tmp_path):
    model = _model()
    data = _data(n=3)
    with pytest.warns(FewImagesWarning) as caught:
        padded = reconstruct_dataset(model, data, ["conv1", "conv2"], k=9, progress=False)
    assert len(caught) == 1  # once for the call, not once per layer
    message = str(caught[0].message)
    assert "top-9" in message and "only 3 images" in message and "--top 3" in message
    assert "\n" not in message
    exact = reconstruct_dataset(model, data, ["conv1", "conv2"], k=3, progress=False)
    for layer in ("conv1", "conv2"):
        rec, ref = padded[layer], exact[layer]
        assert rec.k == 9 and rec.found == 3 and rec.valid.sum(dim=1).eq(3).all()
        # the figure of the padded result is the figure of top-3, tile for tile
        title = "same title"
        np.testing.assert_array_equal(
            _pixels(top_projections_figure(rec, title=title)),
            _pixels(top_projections_figure(ref, title=title)),
        )
        assert "top-3 activations" in top_projections_figure(rec)._suptitle.get_text()
    write_dataset_reconstructions(padded, tmp_path / "padded")
    write_dataset_reconstructions(exact, tmp_path / "exact")
    got = json.loads((tmp_path / "padded" / "conv2.json").read_text())
    want = json.loads((tmp_path / "exact" / "conv2.json").read_text())
    assert got["k"] == 3 and got["k_asked"] == 9
    assert -1 not in sum(got["indices"], [])
    for key in ("indices", "values", "positions", "boxes"):
        assert got[key] == want[key]


def test_default_layers_are_the_conv_layers_in_order():
    model = _model()
    assert conv_layer_names(model) == ["conv1", "conv2"]
    res = reconstruct_dataset(model, _data(n=3), k=1, progress=False)
    assert list(res) == ["conv1", "conv2"]


def test_reconstruct_dataset_errors_name_the_fix():
    model = _model()
    with pytest.raises(LayerError, match="did you mean 'conv2'"):
        reconstruct_dataset(model, _data(n=2), ["conv22"], progress=False)
    with pytest.raises(InputError, match="rule"):
        reconstruct_dataset(model, _data(n=2), ["conv1"], rule="lrp", progress=False)
    with pytest.raises(InputError, match="k"):
        reconstruct_dataset(model, _data(n=2), ["conv1"], k=0, progress=False)
    with pytest.raises(InputError, match="out of range.*5 channels"):
        reconstruct_dataset(model, _data(n=2), ["conv2"], channels=[5], k=2, progress=False)
    with pytest.raises(LayerError, match="no Conv2d"):
        reconstruct_dataset(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), [torch.zeros(1, 2, 2)])


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_reconstruct_images_strongest_activation_against_oracle(rule):
    model = _model()
    x = torch.stack([d[0] for d in _data(n=3)])
    res = reconstruct_images(model, x, ["conv1", "fc"], channels=[0, 2], rule=rule, progress=False)
    r = res["conv1"]
    assert r.reconstructions.shape == (3, 2, 3, 16, 16)
    acts = model.conv1(x).detach()
    for i in range(3):
        for j, ch in enumerate([0, 2]):
            a = acts[i, ch]
            flat = int(a.flatten().argmax())
            assert r.positions[i, j].tolist() == [flat // 16, flat % 16]
            assert float(r.values[i, j]) == pytest.approx(float(a.max()), rel=1e-12)
            want = chain_oracle(model, x, "conv1", [(i, ch, flat // 16, flat % 16)], rule)[0]
            torch.testing.assert_close(r.reconstructions[i, j], want)
    v = res["fc"]  # vector layer: the unit's value, no position
    logits = model(x).detach()
    torch.testing.assert_close(v.values, logits[:, [0, 2]])
    assert v.positions.abs().max() == 0
    want = chain_oracle(model, x, "fc", [(1, 2, 0, 0)], rule)[0]
    torch.testing.assert_close(v.reconstructions[1, 1], want)


def test_reconstruct_images_errors():
    model = _model()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(InputError, match="out of range"):
        reconstruct_images(model, x, ["conv1"], channels=[4], progress=False)
    with pytest.raises(InputError, match="floating point"):
        reconstruct_images(model, (x * 255).to(torch.uint8), ["conv1"], progress=False)
    with pytest.raises(LayerError, match="did you mean"):
        reconstruct_images(model, x, ["conv3"], progress=False)


# ------------------------------------------------------------------------------ loading images


def test_load_images_converts_channels_and_size(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)  # wide: cropped to a square
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(grey).save(tmp_path / "b.png")
    same = load_images([tmp_path / "b.png"])
    assert same.shape == (1, 1, 8, 8) and same.dtype == torch.float32
    torch.testing.assert_close(same[0, 0], torch.from_numpy(grey).float() / 255)
    three = load_images([tmp_path / "b.png"], channels=3)
    assert three.shape == (1, 3, 8, 8) and torch.equal(three[0, 0], three[0, 2])
    luma = load_images([tmp_path / "a.png"], channels=1)
    want = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    torch.testing.assert_close(luma[0, 0], torch.from_numpy(want))
    both = load_images([tmp_path / "a.png", tmp_path / "b.png"], channels=3, size=6)
    assert both.shape == (2, 3, 6, 6)
    assert float(both.min()) >= 0 and float(both.max()) <= 1
    # the centre crop of the wide image, resized, as PIL does it
    crop = Image.fromarray(rgb).crop((5, 0, 15, 10)).resize((6, 6), Image.Resampling.BICUBIC)
    torch.testing.assert_close(
        both[0], torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1)
    )


def test_load_images_errors(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "other.png")
    with pytest.raises(DataError, match="cannot read .*notes.png"):
        load_images([tmp_path / "notes.png"])
    with pytest.raises(DataError, match="does not exist"):
        load_images([tmp_path / "missing.png"])
    with pytest.raises(InputError, match="different sizes"):
        load_images([tmp_path / "small.png", tmp_path / "other.png"])
    with pytest.raises(InputError, match="4-channel"):
        load_images([tmp_path / "small.png"], channels=4)


def test_expected_input_from_config_or_first_conv():
    from deconvviz.sources.models import LeNet5

    assert expected_input(LeNet5(3, 8, init="pytorch")) == (3, 8)
    run_config = {"model": {"model": "lenet5", "in_channels": 1, "image_size": 28}}
    assert expected_input(LeNet5(3, 8, init="pytorch"), run_config) == (1, 28)
    assert expected_input(SmallNet(in_channels=1)) == (1, None)


# ------------------------------------------------------------------------------ rendering, writing


def test_fig2_block_shows_stretched_projections_beside_patches():
    gen = torch.Generator().manual_seed(0)
    recs = torch.randn(9, 3, 5, 5, generator=gen)
    patches = torch.rand(9, 3, 5, 5, generator=gen)
    block = fig2_block(recs, patches)
    assert block.mode == "RGB" and block.size == (19 + 3 + 19, 19)
    arr = np.asarray(block).astype(np.float64) / 255
    # tile 4 (middle of the 3x3) of the left half is recs[4] stretched around grey
    left = arr[7:12, 7:12].transpose(2, 0, 1)
    np.testing.assert_allclose(left, to_display(recs[4]).numpy(), atol=0.5 / 255 + 1e-9)
    right = arr[7:12, 22 + 7 : 22 + 12].transpose(2, 0, 1)
    np.testing.assert_allclose(right, patches[4].numpy(), atol=0.5 / 255 + 1e-9)
    with pytest.raises(InputError, match="shape"):
        fig2_block(recs, patches[:4])


def test_input_display_stretches_only_out_of_range_images():
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(input_display(x), x.double())
    y = x * 4 - 2  # normalised input
    d = input_display(y)
    assert float(d[0].min()) == 0.0 and float(d[0].max()) == pytest.approx(1.0)


def test_figures_label_channel_and_value(tmp_path):
    model = _model()
    data = _data(n=4)
    rec = reconstruct_dataset(model, data, ["conv2"], k=2, channels=[4, 0], progress=False)
    fig = top_projections_figure(rec["conv2"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    want = []
    for i, c in enumerate([4, 0]):
        v = float(rec["conv2"].values[i, 0])
        want.append(f"ch {c}: max act {v:.3g}" if v > 0 else f"ch {c}: dead")
    assert [t.split("\n")[0] for t in titles] == want
    assert "conv2" in fig._suptitle.get_text()
    x = torch.stack([d[0] for d in data])
    res = reconstruct_images(model, x, ["conv1"], progress=False)["conv1"]
    fig = image_projections_figure(res, 1, max_channels=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    order = torch.argsort(res.values[1], descending=True)[:3].tolist()
    assert titles[0] == "input"
    assert titles[1:] == [
        f"ch {c}: max act {float(res.values[1, c]):.3g}"
        if float(res.values[1, c]) > 0
        else f"ch {c}: inactive"
        for c in order
    ]


def test_writers_write_pngs_and_json(tmp_path):
    model = _model()
    data = _data(n=5)
    res = reconstruct_dataset(model, data, ["conv1", "conv2"], k=2, progress=False)
    pngs = write_dataset_reconstructions(
        res, tmp_path / "ds", channels_per_page=3, save_tensors=True
    )
    names = sorted(p.name for p in pngs)
    assert names == ["conv1.png", "conv1_p2.png", "conv2.png", "conv2_p2.png"]
    for p in pngs:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 100
    summary = json.loads((tmp_path / "ds" / "conv2.json").read_text())
    assert summary["k"] == 2 and summary["receptive_field"]["size"] == [8, 8]
    assert summary["figures"] == ["conv2.png", "conv2_p2.png"]
    assert summary["indices"] == res["conv2"].indices.tolist()
    np.testing.assert_allclose(summary["values"][1], res["conv2"].values[1].numpy())
    saved = torch.load(tmp_path / "ds" / "conv1.pt", weights_only=True)
    assert torch.equal(saved["reconstructions"], res["conv1"].reconstructions)
    assert not list((tmp_path / "ds").glob(".*tmp"))  # no temporary file left behind

    x = torch.stack([d[0] for d in data[:2]])
    ires = reconstruct_images(model, x, ["conv1"], progress=False)
    pngs = write_image_reconstructions(ires, tmp_path / "im", ["cat", "dog/1"])
    assert [p.name for p in pngs] == ["cat_conv1.png", "dog_1_conv1.png"]
    same = write_image_reconstructions(ires, tmp_path / "same", ["cat", "cat"])
    assert [p.name for p in same] == ["cat_conv1.png", "cat_2_conv1.png"]
    info = json.loads((tmp_path / "im" / "projections.json").read_text())
    assert info["conv1"]["images"][1]["values"] == ires["conv1"].values[1].tolist()
    assert safe_name("layer2.0/conv 1") == "layer2.0_conv_1"


def test_patch_pixels_outside_the_image_are_marked():
    model = _model()
    data = _data(n=6)
    with pytest.warns(FewImagesWarning):
        rec = reconstruct_dataset(model, data, ["conv2"], k=8, progress=False)["conv2"]
    x = torch.stack([d[0] for d in data])
    seen_outside = False
    for r in range(5):
        mask = outside_mask(rec, r)
        assert mask is not None and mask.shape == (8, 8, 8)
        assert mask[6:].all()  # k=8 > 6 images: the last two entries are empty
        for j in range(6):
            y0 = int(rec.positions[r, j, 0]) * 2 - 3
            x0 = int(rec.positions[r, j, 1]) * 2 - 3
            for a in range(8):
                for b in range(8):
                    inside = 0 <= y0 + a < 16 and 0 <= x0 + b < 16
                    assert bool(mask[j, a, b]) == (not inside)
                    if inside:
                        img = int(rec.indices[r, j])
                        assert torch.equal(rec.patches[r, j, :, a, b], x[img, :, y0 + a, x0 + b])
                    else:
                        seen_outside = True
                        assert rec.patches[r, j, :, a, b].abs().max() == 0
    assert seen_outside
    block = fig2_block(rec.reconstructions[0], rec.patches[0], outside=outside_mask(rec, 0))
    assert block.mode == "RGB"


def test_fig2_block_paints_outside_pixels():
    recs = torch.zeros(1, 1, 2, 2)
    patches = torch.zeros(1, 1, 2, 2)
    outside = torch.tensor([[[True, False], [False, False]]])
    block = np.asarray(fig2_block(recs, patches, outside=outside, padding=0))
    right = block[:, 2 + 3 :]
    assert right[0, 0] == round(OUTSIDE * 255) and right[0, 1] == 0 and right[1, 1] == 0
    assert (block[:, :2] == 128).all()  # zero reconstruction: grey


class _CountingData:
    """A dataset that counts how often each image is read."""

    def __init__(self, data: list) -> None:
        self.data = data
        self.reads = [0] * len(data)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        self.reads[i] += 1
        return self.data[i]


class _FiveConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 5, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(5, 5, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(5, 3, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def test_reconstruct_dataset_reads_the_dataset_once_for_all_layers():
    """One scan for every layer: an image that is no layer's top-k is read exactly once (the
    old per-layer loop read it once per layer); the result equals the per-layer path."""
    from deconvviz import project_top, top_activations

    torch.manual_seed(0)
    model = _FiveConvNet().double().eval()
    layers = conv_layer_names(model)
    assert len(layers) == 5
    data = _CountingData(_data(n=20, seed=3))
    k = 2
    res = reconstruct_dataset(model, data, layers, k=k, batch_size=6, progress=False)
    in_top = {int(i) for rec in res.values() for i in rec.indices.flatten().tolist()}
    others = [i for i in range(len(data)) if i not in in_top]
    assert others, "every image was someone's top-k: the test needs more images"
    # image 0 is also read once up front, to check the items' form before the scan starts
    assert all(data.reads[i] == 1 + (i == 0) for i in others), data.reads
    # the projections of the top-k read only those images again
    assert all(data.reads[i] >= 2 for i in in_top)
    # the same answer as scanning each layer on its own
    loader = torch.utils.data.DataLoader(data.data, batch_size=6)
    for layer in layers:
        top = top_activations(model, loader, layer, k=k, progress=False)
        proj = project_top(model, data.data, top, progress=False)
        rec = res[layer]
        assert torch.equal(rec.indices, top.indices) and torch.equal(rec.values, top.values)
        torch.testing.assert_close(rec.reconstructions, proj.reconstructions, rtol=0, atol=0)


def test_reconstruct_dataset_max_images_spreads_them_in_one_place():
    model = _model()
    data = _data(n=12)
    picked = [0, 2, 4, 7, 9]  # 5 of 12, spread evenly (p * 12 // 5)
    cut = reconstruct_dataset(model, data, ["conv2"], k=2, max_images=5, progress=False)
    ref = reconstruct_dataset(model, [data[i] for i in picked], ["conv2"], k=2, progress=False)
    assert cut["conv2"].images == 5
    assert cut["conv2"].indices.tolist() == [
        [picked[i] for i in r] for r in ref["conv2"].indices.tolist()
    ]
    torch.testing.assert_close(cut["conv2"].values, ref["conv2"].values, rtol=0, atol=0)
    torch.testing.assert_close(
        cut["conv2"].reconstructions, ref["conv2"].reconstructions, rtol=0, atol=0
    )
    with pytest.raises(InputError, match="max_images"):
        reconstruct_dataset(model, data, ["conv2"], max_images=0, progress=False)


class _WideNet(nn.Module):
    """Receptive field of conv3 (18 px) larger than the 8 px images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(torch.relu(self.conv2(self.pool(torch.relu(self.conv1(x))))))


def test_patch_mask_lines_up_with_the_pasted_pixels_when_the_field_is_larger_than_the_image():
    """outside_mask (the figures' grey) must mark exactly the canvas pixels that are not image:
    every pixel it calls inside is the image's own pixel at the field's clipped position, and
    the inside pixels of an entry are the whole image part of its field (hand-computed)."""
    torch.manual_seed(0)
    model = _WideNet().double().eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(5, 3, 8, 8, generator=gen, dtype=torch.float64) + 0.1  # no zero pixel
    data = [(x[i], 0) for i in range(5)]
    rec = reconstruct_dataset(model, data, ["conv3"], k=2, progress=False)["conv3"]
    rf = rec.receptive_field
    assert rf is not None and rf.size[0] > 8
    assert rec.patches.shape[-2:] == (8, 8)  # the canvas is the image's size
    for r in range(len(rec.channels)):
        mask = outside_mask(rec, r)
        assert mask is not None
        for j in range(rec.k):
            img = int(rec.indices[r, j])
            pr, pc = rec.positions[r, j].tolist()
            y0, x0 = pr * rf.jump[0] + rf.start[0], pc * rf.jump[1] + rf.start[1]
            y1, x1 = y0 + rf.size[0], x0 + rf.size[1]
            cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, 8), min(x1, 8)
            inside = ~mask[j]
            assert int(inside.sum()) == (cy1 - cy0) * (cx1 - cx0)
            want = x[img, :, cy0:cy1, cx0:cx1]
            got = rec.patches[r, j][:, inside].reshape(3, cy1 - cy0, cx1 - cx0)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            assert float(rec.patches[r, j][:, ~inside].abs().sum()) == 0.0


def test_the_names_reconstruct_passed_through_still_import_with_a_warning():
    import deconvviz.analyses.reconstruct as rec

    for name, home in [
        ("load_images", load_images),
        ("conv_layer_names", conv_layer_names),
        ("safe_name", safe_name),
    ]:
        with pytest.warns(DeprecationWarning, match=f"reconstruct.{name} is deconvviz.base"):
            assert getattr(rec, name) is home
    with pytest.raises(AttributeError):
        rec.no_such_name  # noqa: B018
