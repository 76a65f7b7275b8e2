"""Occlusion sensitivity against a brute-force loop and against captum's Occlusion."""

from __future__ import annotations

import math

import pytest
import torch
from captum.attr import Occlusion
from torch import nn

import deconvviz
from deconvviz.analyses.occlusion import OcclusionResult, occluder_starts
from deconvviz.analyses.occlusion import occlusion as run_occlusion
from deconvviz.base.errors import InputError, LayerError
from deconvviz.sources.models import LeNet5, RNNClassifier


class TinyCNN(nn.Module):
    def __init__(self, channels: int = 3, classes: int = 5, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.LazyLinear(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        return self.head(self.relu2(self.conv2(x)))


def make_model(channels: int = 3, side: int = 10, inplace: bool = False, seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    model = TinyCNN(channels, inplace=inplace)
    model(torch.zeros(1, channels, side, side))  # materialise the lazy layer
    return model.double().eval()


def brute_force(model, x, target, size, stride, fill):
    """The definition, one occluded image at a time, in float64."""
    n, c, h, w = x.shape
    ys = list(range(0, h - size, stride)) + [math.ceil((h - size) / stride) * stride]
    xs = list(range(0, w - size, stride)) + [math.ceil((w - size) / stride) * stride]
    prob = torch.empty(n, len(ys), len(xs), dtype=torch.float64)
    top = torch.empty(n, len(ys), len(xs), dtype=torch.long)
    top_p = torch.empty(n, len(ys), len(xs), dtype=torch.float64)
    with torch.no_grad():
        for i in range(n):
            for a, y0 in enumerate(ys):
                for b, x0 in enumerate(xs):
                    img = x[i : i + 1].clone()
                    for ch in range(c):
                        value = fill[ch] if isinstance(fill, list) else fill
                        if value == "mean":
                            value = x[i, ch].mean()
                        img[0, ch, y0 : y0 + size, x0 : x0 + size] = value
                    p = torch.softmax(model(img), dim=1)[0]
                    prob[i, a, b] = p[target[i]]
                    top[i, a, b] = p.argmax()
                    top_p[i, a, b] = p.max()
    return prob, top, top_p


@pytest.mark.parametrize(
    ("size", "stride", "fill", "batch_size"),
    [
        (4, 2, "grey", None),  # (10 - 4) / 2: the last occluder ends at the edge
        (3, 2, 0.25, 7),  # 7 is no multiple of the 16 positions: batches mix images
        (4, 3, "mean", 1),  # (10 - 4) / 3 fits; mean colour of each image
        (5, 4, [0.0, 0.5, 1.0], 5),  # per-channel fill; the last occluder is cut by the edge
    ],
)
def test_probability_map_equals_brute_force(size, stride, fill, batch_size):
    model = make_model()
    torch.manual_seed(1)
    x = torch.rand(3, 3, 10, 10, dtype=torch.float64)
    res = run_occlusion(
        model, x, size=size, stride=stride, fill=fill, batch_size=batch_size, progress=False
    )
    target = res.target
    with torch.no_grad():
        assert torch.equal(target, model(x).argmax(1))  # target=None: the predicted class
    prob, top, top_p = brute_force(model, x, target, size, stride, 0.5 if fill == "grey" else fill)
    assert res.prob.shape == prob.shape
    torch.testing.assert_close(res.prob, prob, rtol=0, atol=1e-12)
    assert torch.equal(res.top_class, top)
    with torch.no_grad():
        p0 = torch.softmax(model(x), 1)
    torch.testing.assert_close(res.base_prob, p0.gather(1, target[:, None])[:, 0])
    torch.testing.assert_close(res.top_prob, top_p, rtol=0, atol=1e-12)


def test_given_targets_and_top_prob():
    model = make_model()
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    res = run_occlusion(model, x, target=[4, 1], size=4, stride=3, progress=False)
    prob, _, _ = brute_force(model, x, torch.tensor([4, 1]), 4, 3, 0.5)
    torch.testing.assert_close(res.prob, prob, rtol=0, atol=1e-12)
    assert res.target.tolist() == [4, 1]
    same = run_occlusion(model, x, target=2, size=4, stride=3, progress=False)
    assert same.target.tolist() == [2, 2]
    # top_prob is the probability of top_class: compare with the target map where they agree
    agree = same.top_class == 2
    torch.testing.assert_close(same.top_prob[agree], same.prob[agree], rtol=0, atol=0)


def _captum_from_map(res: OcclusionResult, channels: int) -> torch.Tensor:
    """captum's attribution rebuilt from our map: per pixel, the mean drop over its windows."""
    n = res.prob.shape[0]
    h, w = res.image_size
    total = torch.zeros(n, h, w, dtype=torch.float64)
    count = torch.zeros(h, w, dtype=torch.float64)
    drop = res.base_prob[:, None, None] - res.prob
    for i, y0 in enumerate(res.positions[:, 0, 0].tolist()):
        for j, x0 in enumerate(res.positions[0, :, 1].tolist()):
            total[:, y0 : y0 + res.size[0], x0 : x0 + res.size[1]] += drop[:, i, j, None, None]
            count[y0 : y0 + res.size[0], x0 : x0 + res.size[1]] += 1
    return (total / count).unsqueeze(1).expand(n, channels, h, w)


@pytest.mark.parametrize(("size", "stride", "fill"), [(4, 2, "grey"), (3, 2, 0.1), (5, 5, 0.0)])
def test_agrees_with_captum_occlusion(size, stride, fill):
    model = make_model()
    torch.manual_seed(2)
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    res = run_occlusion(model, x, size=size, stride=stride, fill=fill, progress=False)
    baseline = 0.5 if fill == "grey" else fill

    def probs(inp: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(inp), dim=1)

    attr = Occlusion(probs).attribute(
        x,
        sliding_window_shapes=(3, size, size),
        strides=(3, stride, stride),
        baselines=baseline,
        target=res.target,
        perturbations_per_eval=8,
    )
    # captum returns the drop f(x) - f(occluded), averaged over the windows covering a pixel.
    # It divides by the window count in float32 (FeatureAblation: `attrib.float() / weight`),
    # so the comparison is at float32 precision; the float64 oracle above is the brute force.
    assert attr.dtype == torch.float32
    want = _captum_from_map(res, 3)
    torch.testing.assert_close(attr.double(), want, rtol=0, atol=2e-7)
    if size == stride:  # windows tile the image: captum's value *is* our map, sign flipped
        up = res.prob.repeat_interleave(size, 1).repeat_interleave(size, 2)
        torch.testing.assert_close(
            attr[:, 0].double(), res.base_prob[:, None, None] - up, rtol=0, atol=2e-7
        )


def test_rnn_classifier_is_supported():
    torch.manual_seed(3)
    model = RNNClassifier(cell="gru", hidden=8, init="pytorch").double().eval()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    res = run_occlusion(model, x, size=10, stride=9, fill="mean", progress=False)
    prob, top, _ = brute_force(model, x, res.target, 10, 9, "mean")
    assert res.prob.shape == (2, 3, 3)
    torch.testing.assert_close(res.prob, prob, rtol=0, atol=1e-12)
    assert torch.equal(res.top_class, top)


def _conv2_totals(model, img, channel):
    """Total activation of conv2's output channel, computed by hand (pre-ReLU)."""
    with torch.no_grad():
        h = model.pool1(torch.relu(model.conv1(img)))
        return model.conv2(h)[:, channel].sum(dim=(1, 2))


@pytest.mark.parametrize("inplace", [False, True])
def test_layer_feature_map_and_projection(inplace):
    model = make_model(inplace=inplace)
    torch.manual_seed(4)
    x = torch.rand(3, 3, 10, 10, dtype=torch.float64)
    res = run_occlusion(model, x, size=4, stride=3, layer="conv2", batch_size=5, progress=False)
    with torch.no_grad():
        h = model.pool1(torch.relu(model.conv1(x)))
        acts = model.conv2(h)  # the layer's own output, before the (maybe in-place) ReLU
    channel = acts.flatten(2).amax(2).argmax(1)
    assert torch.equal(res.channel, channel)
    rows = torch.arange(3)
    torch.testing.assert_close(res.activation, acts[rows, channel])
    torch.testing.assert_close(res.base_feature, acts[rows, channel].sum(dim=(1, 2)))
    assert res.layer == "conv2"
    # occluded totals: build each occluded image by hand
    for i in range(3):
        for a, y0 in enumerate(res.positions[:, 0, 0].tolist()):
            for b, x0 in enumerate(res.positions[0, :, 1].tolist()):
                img = x[i : i + 1].clone()
                img[..., y0 : y0 + 4, x0 : x0 + 4] = 0.5
                want = _conv2_totals(model, img, int(channel[i]))[0]
                torch.testing.assert_close(res.feature[i, a, b], want, rtol=0, atol=1e-10)
    # the projection is the engine's deconvnet projection of that channel on the clean image
    with deconvviz.attach(model, rule="deconvnet", crop=False) as dn:
        for i in range(3):
            want = dn.project(x[i : i + 1], layer="conv2", channel=int(channel[i]))
            torch.testing.assert_close(res.projection[i : i + 1], want, rtol=0, atol=1e-12)
    assert res.projection.abs().sum() > 0


# the model is left in train() mode on purpose (its mode must come back); the warning that it
# is projected in eval mode is tested in tests/test_seams.py
@pytest.mark.filterwarnings("ignore:the model is in train:deconvviz.DeconvvizWarning")
def test_lenet5_layer_end_to_end():
    torch.manual_seed(5)
    model = LeNet5(in_channels=1, image_size=28)
    x = torch.rand(2, 1, 28, 28)
    res = run_occlusion(model, x, size=8, stride=4, layer="relu2", progress=False)
    assert res.prob.shape == (2, 6, 6) and res.feature.shape == (2, 6, 6)
    assert res.projection.shape == (2, 1, 28, 28) and res.activation.shape == (2, 14, 14)
    acts = deconvviz.layer_output(model, x, "relu2")
    torch.testing.assert_close(res.base_feature, acts[torch.arange(2), res.channel].sum((1, 2)))
    assert model.training  # the model's mode is put back


@pytest.mark.filterwarnings("ignore:the model is in train:deconvviz.DeconvvizWarning")
def test_model_left_untouched():
    model = make_model()
    model.train()
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = run_occlusion(model, x, size=4, stride=2, layer="conv1", progress=False)
    assert model.training and model.head[1].training
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # eval mode was used: dropout off, so repeating gives the same map
    again = run_occlusion(model, x, size=4, stride=2, progress=False)
    torch.testing.assert_close(res.prob, again.prob, rtol=0, atol=0)


def test_batch_size_does_not_change_the_result():
    model = make_model()
    x = torch.rand(3, 3, 10, 10, dtype=torch.float64)
    ref = run_occlusion(model, x, size=3, stride=2, progress=False)
    for kwargs in ({"batch_size": 1}, {"batch_size": 13}, {"memory_budget": 1}):
        other = run_occlusion(model, x, size=3, stride=2, progress=False, **kwargs)
        torch.testing.assert_close(other.prob, ref.prob, rtol=0, atol=1e-14)
        assert torch.equal(other.top_class, ref.top_class)


def test_auto_batches_one_forward_when_it_fits_and_measures_otherwise():
    model = make_model()
    calls: list[int] = []
    handle = model.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    try:
        run_occlusion(model, x, size=4, stride=2, progress=False)
        assert calls == [2 * 17]  # 16 positions + the clean image, all in one batch
        calls.clear()
        image_bytes = 3 * 10 * 10 * 8
        run_occlusion(model, x, size=4, stride=2, progress=False, memory_budget=50 * image_bytes)
    finally:
        handle.remove()
    # a probe on one image, then batches that fit: the module outputs of one image add up to
    # 400 + 400 + 100 + 150 + 150 + 150 + 150 + 5 + 5 + 5 = 1515 float64 = 12120 bytes, plus
    # two images (input and occluded copy) = 16920 bytes a row; 120000 // 16920 = 7 rows
    assert calls == [1, 7, 7, 7, 7, 6]


def test_geometry():
    assert occluder_starts(10, 4, 2).tolist() == [0, 2, 4, 6]
    assert occluder_starts(10, 4, 4).tolist() == [0, 4, 8]  # last one cut to 8..10
    assert occluder_starts(5, 5, 3).tolist() == [0]
    model = make_model()
    res = run_occlusion(
        model,
        torch.rand(1, 3, 10, 10, dtype=torch.float64),
        size=(4, 3),
        stride=(4, 3),
        progress=False,
    )
    assert res.grid == (3, 4)
    assert res.boxes[-1, -1].tolist() == [8, 9, 10, 10]
    assert res.boxes[0, 1].tolist() == [0, 3, 4, 6]
    assert res.centers[0, 0].tolist() == [1.5, 1.0]


def test_bad_input_errors():
    model = make_model()
    x = torch.rand(1, 3, 10, 10, dtype=torch.float64)
    with pytest.raises(InputError, match="unsqueeze"):
        run_occlusion(model, x[0], progress=False)
    with pytest.raises(InputError, match="larger than the images"):
        run_occlusion(model, x, size=11, progress=False)
    with pytest.raises(InputError, match="stride"):
        run_occlusion(model, x, stride=0, progress=False)
    with pytest.raises(LayerError, match="conv2"):
        run_occlusion(model, x, layer="conv_2", progress=False)
    with pytest.raises(InputError, match="out of range"):
        run_occlusion(model, x, target=7, progress=False)
    with pytest.raises(InputError, match="one per image"):
        run_occlusion(model, x, target=[1, 2], progress=False)
    with pytest.raises(InputError, match="'grey'"):
        run_occlusion(model, x, fill="black", progress=False)
    with pytest.raises(InputError, match="3 channels"):
        run_occlusion(model, x, fill=[0.1, 0.2], progress=False)
    with pytest.raises(InputError, match="float"):
        run_occlusion(model, (x * 255).to(torch.uint8), progress=False)
    with pytest.raises(InputError, match="logits"):
        run_occlusion(nn.Conv2d(3, 2, 3).double(), x, progress=False)
