"""Receptive-field crops: used where they are valid, never where they would be wrong.

Every test here fails when cropping is switched off (the crop log must show crops smaller than the
image) or broken (results must equal full-image projections and an independent dense oracle).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deconvviz
from deconvviz import DeconvvizWarning
from deconvviz.engine import Deconvnet
from zoo import POSITION_OPS, CourseLeNet5, module_oracle, position_net

RULES = ["deconvnet", "gradient", "guided"]
UPSTREAM = ["conv1"]  # before the op: crops stay valid
DOWNSTREAM = ["conv2", "bn2", "relu2", "conv3"]
SIZE = 24


def _atol(ref: torch.Tensor) -> float:
    return 1e-9 * max(float(ref.abs().max()), 1.0)


def _positions(h: int, w: int) -> list[tuple[int, int]]:
    return [(h // 2, w // 2 + 1), (h - 1, 0)]


# Every op with every rule; the default run takes each op once, the rules taking turns.
_OP_RULES = [
    pytest.param(op, rule, marks=() if i % 3 == j else pytest.mark.slow, id=f"{op}-{rule}")
    for i, op in enumerate(POSITION_OPS)
    for j, rule in enumerate(RULES)
]


@pytest.mark.parametrize(("op", "rule"), _OP_RULES)
def test_crops_equal_full_images_and_the_oracle_around_position_dependent_ops(op, rule):
    """conv, bn and relu targets, at centre and corner seeds, up- and downstream of the op."""
    model, x = position_net(op, size=SIZE)
    dependent = POSITION_OPS[op][1]
    with (
        deconvviz.attach(model, rule=rule) as fast,
        deconvviz.attach(model, rule=rule, crop=False) as dense,
    ):
        for layer in UPSTREAM + DOWNSTREAM:
            out = fast.layer_output(x, layer)
            chans = [0, out.shape[1] - 1]
            for pos in _positions(*out.shape[-2:]):
                fast.crop_log.clear()
                rec = fast.project(x, layer, chans, position=pos)
                ref = dense.project(x, layer, chans, position=pos)
                seeds = [(n, c, *pos) for n in range(x.shape[0]) for c in chans]
                truth = module_oracle(model, x, layer, seeds, rule).view_as(rec)
                msg = f"{op} {layer} {pos} {rule}"
                torch.testing.assert_close(ref, truth, rtol=1e-6, atol=_atol(truth), msg=msg)
                torch.testing.assert_close(rec, truth, rtol=1e-6, atol=_atol(truth), msg=msg)
                # the plan: crops smaller than the image wherever they are valid, full images
                # downstream of a position-dependent op
                plan = list(fast.crop_log)
                assert plan and all(how != "fallback" for *_, how in plan), (msg, plan)
                cropped = all(
                    how == "crop" and size[0] < SIZE and size[1] < SIZE for _, size, _, how in plan
                )
                if layer in UPSTREAM or not dependent:
                    assert cropped, (msg, plan)
                else:
                    assert all(how == "full" for *_, how in plan), (msg, plan)
        if dependent:
            assert fast.receptive_field("conv2", x.shape) is None
        assert fast.receptive_field("conv1", x.shape) is not None


def test_crops_are_smaller_than_the_image_on_lenet():
    torch.manual_seed(0)
    model = CourseLeNet5().double().eval()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    with deconvviz.attach(model) as fast, deconvviz.attach(model, crop=False) as dense:
        for layer in ("conv1", "relu1", "pool1", "conv2", "relu2"):
            fast.crop_log.clear()
            rec = fast.project(x, layer, [0, 5, 31])
            ref = dense.project(x, layer, [0, 5, 31])
            torch.testing.assert_close(rec, ref, rtol=1e-6, atol=_atol(ref))
            sizes = [size for _, size, _, how in fast.crop_log if how == "crop"]
            assert sizes and all(h <= 16 and w <= 16 for h, w in sizes), (layer, fast.crop_log)
            assert all(how == "crop" for *_, how in fast.crop_log)


def _shifted(original):
    """_crop_boxes, with every crop moved one pixel down and right (up and left at the border)."""

    def boxes(self, info, rows, cols, size):
        h, w = size
        out = []
        for y0, x0, y1, x1 in original(self, info, rows, cols, size):
            if (y1 - y0, x1 - x0) != (h, w):
                dy = 1 if y1 < h else -1
                dx = 1 if x1 < w else -1
                y0, y1, x0, x1 = y0 + dy, y1 + dy, x0 + dx, x1 + dx
            out.append((y0, x0, y1, x1))
        return out

    return boxes


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(
    ("net", "layer"),
    [
        ("lenet", "conv2"),  # a plain Conv2d: the filter-placement shortcut
        ("lenet", "relu2"),
        ("lenet", "conv1"),
        ("identity", "conv2"),
        ("identity", "bn2"),
        ("identity", "conv3"),
    ],
)
def test_a_broken_crop_is_caught_and_the_answer_stays_exact(monkeypatch, net, layer, rule):
    if net == "lenet":
        torch.manual_seed(0)
        model = CourseLeNet5().double().eval()
        x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    else:
        model, x = position_net(net, size=SIZE)
    chans = [0, 1, 3]
    with deconvviz.attach(model, rule=rule, crop=False) as dense:
        h, w = dense.layer_output(x, layer).shape[-2:]
        pos = (h // 2, w // 3)
        ref = dense.project(x, layer, chans, position=pos)
        ref_best = dense.project(x, layer, chans)  # each channel's strongest activation
    monkeypatch.setattr(Deconvnet, "_crop_boxes", _shifted(Deconvnet._crop_boxes))
    with deconvviz.attach(model, rule=rule) as dn:
        with pytest.warns(DeconvvizWarning, match="crops of .* disagreed with the full image"):
            rec = dn.project(x, layer, chans, position=pos)
        assert [how for *_, how in dn.crop_log] == ["fallback"]
        best = dn.project(x, layer, chans)  # this layer now uses full images, silently
        assert [how for *_, how in dn.crop_log][1:] == ["full"]
    assert ref.abs().max() > 0
    torch.testing.assert_close(rec, ref, rtol=1e-6, atol=_atol(ref))
    torch.testing.assert_close(best, ref_best, rtol=1e-6, atol=_atol(ref_best))


# ----------------------------------------------------------------------------- hooks


def _lenet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return CourseLeNet5().double().eval(), torch.rand(2, 1, 28, 28, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["forward", "pre", "global", "global_pre"])
def test_user_hooks_on_the_projected_conv_are_honoured(kind):
    model, x = _lenet()
    plain = _lenet()[0]

    def double_out(module, args, out):
        return out * 2 if isinstance(module, nn.Conv2d) else None

    def triple_in(module, args):
        return (args[0] * 3,) if isinstance(module, nn.Conv2d) else None

    glob = torch.nn.modules.module
    if kind == "forward":
        handle = model.conv2.register_forward_hook(double_out)
    elif kind == "pre":
        handle = model.conv2.register_forward_pre_hook(triple_in)
    elif kind == "global":
        handle = glob.register_module_forward_hook(double_out)
    else:
        handle = glob.register_module_forward_pre_hook(triple_in)
    try:
        with deconvviz.attach(model) as dn:
            out = dn.layer_output(x, "conv2")
            best = out[:, 3].flatten(1).argmax(1)
            seeds = [(n, 3, int(b) // 14, int(b) % 14) for n, b in enumerate(best)]
            rec = dn.project(x, "conv2", 3)
            at = dn.project(x, "conv2", 3, position=(5, 6))
        truth = module_oracle(model, x, "conv2", seeds)
        truth_at = module_oracle(model, x, "conv2", [(0, 3, 5, 6), (1, 3, 5, 6)])
    finally:
        handle.remove()
    torch.testing.assert_close(rec, truth, rtol=1e-6, atol=_atol(truth))
    torch.testing.assert_close(at, truth_at, rtol=1e-6, atol=_atol(truth_at))
    with deconvviz.attach(plain) as dn:
        unhooked = dn.project(x, "conv2", 3, position=(5, 6))
    assert not torch.allclose(at, unhooked), "the hook must change the projection"


# ----------------------------------------------------------------------------- inference mode


def test_projection_inside_inference_mode_equals_the_normal_one():
    from zoo import CASES, build

    case = next(c for c in CASES if c.name == "resnet18")
    model, x = build(case)
    lenet, xl = _lenet()
    with deconvviz.attach(model) as dn, deconvviz.attach(lenet) as dl:
        ref = dn.project(x, "layer2.1", [0, 7])
        ref_l = dl.project(xl, "conv2", [0, 7])
        ref_out = dn.layer_output(x, "layer2.1")
        with torch.inference_mode():
            xi = x.clone()  # an inference tensor
            assert xi.is_inference()
            rec = dn.project(xi, "layer2.1", [0, 7])
            rec_l = dl.project(xl.clone(), "conv2", [0, 7])
            out = dn.layer_output(xi, "layer2.1")
    assert ref.abs().max() > 0 and ref_l.abs().max() > 0
    torch.testing.assert_close(rec, ref, rtol=1e-9, atol=0)
    torch.testing.assert_close(rec_l, ref_l, rtol=1e-9, atol=0)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)


# ----------------------------------------------------------------------------- ReLU spellings


class ActNet(nn.Module):
    """conv -> act -> pool -> conv -> act, with the activation spelt as ``act``."""

    def __init__(self, act) -> None:
        super().__init__()
        self.act = act
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.out = nn.Identity()

    def forward(self, x):
        h = self.pool(self.act(self.conv1(x)))
        return self.out(self.act(self.conv2(h)))


class ReluModules(nn.Module):
    """The same network with nn.ReLU modules, for the oracle."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.out = nn.Identity()

    def forward(self, x):
        return self.out(self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x))))))


RELU_FORMS = {
    "torch.clamp(min=0)": lambda x: torch.clamp(x, min=0),
    "x.clamp(min=0)": lambda x: x.clamp(min=0),
    "x.clamp(0)": lambda x: x.clamp(0),
    "clamp_min(0)": lambda x: x.clamp_min(0),
    "clamp_min_(0)": lambda x: x.clamp_min_(0.0),
    "clamp_(min=0)": lambda x: x.clamp_(min=0),
    "clip(min=0)": lambda x: torch.clip(x, min=0),
    "maximum(x, zeros)": lambda x: torch.maximum(x, torch.zeros_like(x)),
    "maximum(zeros, x)": lambda x: torch.maximum(torch.zeros(()), x),
    "max(x, zeros)": lambda x: torch.max(x, torch.zeros(1, dtype=x.dtype)),
    "F.threshold(0, 0)": lambda x: F.threshold(x, 0, 0),
    "F.threshold inplace": lambda x: F.threshold(x, 0.0, 0.0, inplace=True),
    "nn.Threshold(0, 0)": nn.Threshold(0, 0),
}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("form", list(RELU_FORMS))
def test_relu_spelt_as_clamp_max_or_threshold_gets_the_rule(form, rule):
    torch.manual_seed(0)
    model = ActNet(RELU_FORMS[form]).double().eval()
    twin = ReluModules().double().eval()
    twin.load_state_dict(model.state_dict(), strict=False)
    x = torch.rand(2, 2, 12, 12, dtype=torch.float64) - 0.3
    with deconvviz.attach(model, rule=rule, strict=True) as dn:  # accepted, no warning
        rec = dn.project(x, "out", [0, 4])  # each channel's strongest activation
        assert "NO deconvnet rule" not in dn.summary()
        best = dn.layer_output(x, "out")[:, [0, 4]].flatten(2).argmax(2)
    seeds = [
        (n, c, int(best[n, i]) // 6, int(best[n, i]) % 6)
        for n in range(2)
        for i, c in enumerate((0, 4))
    ]
    truth = module_oracle(twin, x, "out", seeds, rule).view_as(rec)
    assert truth.abs().max() > 0
    torch.testing.assert_close(rec, truth, rtol=1e-6, atol=_atol(truth))
    # the gradient rule differs from deconvnet here, so the rule really acted
    if rule == "deconvnet":
        grad = module_oracle(twin, x, "out", seeds, "gradient").view_as(rec)
        assert not torch.allclose(rec, grad)


NOT_RELU = {
    "clamp(min=0.1)": (lambda x: x.clamp(min=0.1), "clamp"),
    "clamp(0, 6)": (lambda x: torch.clamp(x, 0, 6), "clamp"),
    "clamp_max(6)": (lambda x: x.clamp_max(6), "clamp_max"),
    "clamp_min(-1)": (lambda x: x.clamp_min(-1), "clamp_min"),
    "maximum(x, 0.1)": (lambda x: torch.maximum(x, torch.full((), 0.1, dtype=x.dtype)), "maximum"),
    "minimum(x, 6)": (lambda x: torch.minimum(x, torch.full((), 6.0, dtype=x.dtype)), "minimum"),
    "F.relu6": (F.relu6, "relu6"),
    "F.hardtanh(0, 6)": (lambda x: F.hardtanh(x, 0, 6), "hardtanh"),
    "F.threshold(0.5, 0)": (lambda x: F.threshold(x, 0.5, 0), "threshold"),
}


@pytest.mark.parametrize("form", list(NOT_RELU))
def test_clamps_with_other_bounds_are_reported_and_refused_in_strict_mode(form):
    act, name = NOT_RELU[form]
    model = ActNet(act).double().eval()
    x = torch.rand(1, 2, 12, 12, dtype=torch.float64)
    with pytest.warns(DeconvvizWarning, match=f"no deconvnet rule for .*{name}"):
        deconvviz.attach(model).project(x, "conv2", 0)
    with pytest.raises(deconvviz.base.errors.UnsupportedLayerError, match=name):
        deconvviz.attach(model, strict=True).project(x, "conv2", 0)


def test_relu6_module_is_refused_in_strict_mode_and_threshold_zero_is_not():
    with pytest.raises(deconvviz.base.errors.UnsupportedLayerError, match="ReLU6"):
        deconvviz.attach(nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU6()), strict=True)
    with pytest.raises(deconvviz.base.errors.UnsupportedLayerError, match="Threshold"):
        deconvviz.attach(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Threshold(0.1, 0)), strict=True)
    deconvviz.attach(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Threshold(0, 0)), strict=True)


# ----------------------------------------------------------------------------- linear layers


class LinearLayersNet(nn.Module):
    """MaxUnpool2d, torchvision's Permute and StochasticDepth: linear (identity in eval)."""

    def __init__(self) -> None:
        import torchvision

        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.unpool = nn.MaxUnpool2d(2)
        self.to_nhwc = torchvision.ops.Permute([0, 2, 3, 1])
        self.to_nchw = torchvision.ops.Permute([0, 3, 1, 2])
        self.drop = torchvision.ops.StochasticDepth(0.5, "row")
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        h = self.relu(self.conv1(x))
        p, idx = F.max_pool2d(h, 2, return_indices=True)
        h = self.unpool(p, idx)
        h = self.to_nchw(self.to_nhwc(h) * 1.5)
        return self.conv2(self.drop(h))


@pytest.mark.parametrize("rule", RULES)
def test_strict_mode_accepts_linear_layers_with_exact_transposes(rule):
    torch.manual_seed(0)
    model = LinearLayersNet().double().eval()
    x = torch.rand(2, 2, 10, 10, dtype=torch.float64)
    with deconvviz.attach(model, rule=rule, strict=True) as dn:  # no warning either
        rec = dn.project(x, "conv2", [0, 2], position=(4, 5))
        assert "NO deconvnet rule" not in dn.summary()
    seeds = [(n, c, 4, 5) for n in range(2) for c in (0, 2)]
    truth = module_oracle(model, x, "conv2", seeds, rule).view_as(rec)
    assert truth.abs().max() > 0
    torch.testing.assert_close(rec, truth, rtol=1e-6, atol=_atol(truth))
