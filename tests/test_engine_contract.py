"""The engine's promises: the user's model is never changed, errors name the fix, unsupported
activations are reported, projections are batched, and captum agrees where captum is right."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from captum.attr import NeuronDeconvolution
from torch import nn

import deconvviz
from deconvviz import DeconvvizError, DeconvvizWarning
from deconvviz.base.errors import InputError, LayerError, UnsupportedLayerError
from zoo import CASES, CourseLeNet5, FunctionalNet, build, oracle, seq_net


def _hook_state(model: nn.Module) -> list[int]:
    sizes = []
    for m in model.modules():
        for d in (
            m._forward_hooks,
            m._forward_pre_hooks,
            m._backward_hooks,
            m._backward_pre_hooks,
            m._forward_hooks_with_kwargs,
            m._forward_pre_hooks_with_kwargs,
            m._state_dict_hooks,
        ):
            sizes.append(len(d))
    return sizes


def _snapshot(model: nn.Module) -> dict:
    return {
        "hooks": _hook_state(model),
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "attrs": [
            copy.copy({k: v for k, v in vars(m).items() if not k.startswith("_")})
            for m in model.modules()
        ],
    }


def _assert_unchanged(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["hooks"] == before["hooks"], "a hook was left behind"
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"]), "a parameter got a .grad"
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    assert after["attrs"] == before["attrs"], "a module attribute (inplace, ...) was changed"
    assert not torch._C._is_torch_function_mode_enabled(), "a TorchFunctionMode is still active"


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.name in ("resnet18", "sequential")], ids=lambda c: c.name
)
# the model is in train() mode on purpose; that it is told so is tests/test_seams.py's
@pytest.mark.filterwarnings("ignore:the model is in train:deconvviz.DeconvvizWarning")
def test_model_is_untouched_after_use_and_after_errors(case):
    model, x = build(case)
    model.train()  # mixed flags and frozen parameters must come back exactly as they were
    first = next(iter(model.children()))
    first.eval()
    params = list(model.parameters())
    params[1].requires_grad_(False)
    model.eval()
    with torch.no_grad():
        y_before = model(x)
    model.train()
    first.eval()
    user_hook_calls = []
    handle = model.register_forward_hook(lambda *a: user_hook_calls.append(1))
    before = _snapshot(model)

    with deconvviz.attach(model) as dn:
        dn.project(x, case.layers[1], [0, 1])
    _assert_unchanged(model, before)

    # an exception inside the with block propagates and still leaves nothing behind
    with pytest.raises(RuntimeError, match="user's own"), deconvviz.attach(model) as dn:
        dn.project(x, case.layers[0], 0)
        raise RuntimeError("the user's own error")
    _assert_unchanged(model, before)

    # errors raised inside project leave nothing behind either
    dn = deconvviz.attach(model)
    for bad in (
        lambda: dn.project(x, case.layers[0], 10_000),
        lambda: dn.project(x, "no.such.layer", 0),
        lambda: dn.project(x[:, :1], case.layers[0], 0),
    ):
        with pytest.raises(DeconvvizError):
            bad()
        _assert_unchanged(model, before)
    dn.detach()
    dn.detach()  # idempotent
    with pytest.raises(DeconvvizError, match="detached"):
        dn.project(x, case.layers[0], 0)

    handle.remove()
    n_calls = len(user_hook_calls)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), y_before), "outputs must be bit-identical"
    assert len(user_hook_calls) == n_calls, "the user's own hook was removed by the user only"


def test_interrupt_inside_forward_leaves_nothing_behind():
    class Exploding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.boom = False

        def forward(self, x):
            x = F.relu(self.conv(x))
            if self.boom:
                raise KeyboardInterrupt
            return x

    model = Exploding().double()
    before = _snapshot(model)
    dn = deconvviz.attach(model)
    dn.project(torch.rand(1, 1, 8, 8, dtype=torch.float64), "conv", 0)
    model.boom = True
    before = _snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        dn.project(torch.rand(1, 1, 9, 9, dtype=torch.float64), "conv", 0)  # new shape: probes
    _assert_unchanged(model, before)


def test_projection_works_under_no_grad_and_inference_mode_inputs():
    model, x = build(CASES[0])
    with deconvviz.attach(model) as dn:
        ref = dn.project(x, "4", 1)
        with torch.no_grad():
            rec = dn.project(x, "4", 1)
    assert not rec.requires_grad
    torch.testing.assert_close(rec, ref)
    assert ref.abs().max() > 0


def test_in_place_relu_modules_keep_their_flag():
    model, x = build(CASES[3])  # alexnet: in-place nn.ReLU
    flags = [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
    assert any(flags)
    with deconvviz.attach(model) as dn:
        dn.project(x, "features.4", 0)
    assert [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)] == flags


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def lenet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return CourseLeNet5().double().eval(), torch.rand(2, 1, 28, 28, dtype=torch.float64)


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda dn, x: dn.project(x, "conv3", 0),
            LayerError,
            r"unknown layer 'conv3'; did you mean 'conv2', 'conv1'",
        ),
        (
            lambda dn, x: dn.project(x, "conv2", 64),
            InputError,
            r"channel 64 is out of range: the layer has 64 channels \(0..63\)",
        ),
        (lambda dn, x: dn.project(x, "conv2", [1, -1]), InputError, r"channel -1 is out of range"),
        (lambda dn, x: dn.project(x, "conv2", []), InputError, "empty list"),
        (lambda dn, x: dn.project(x, "conv2", "a"), InputError, "channel must be an int"),
        (
            lambda dn, x: dn.project(x, "conv2", 0, position=(28, 0)),
            InputError,
            r"position \(28, 0\) is outside the 14x14 feature map of 'conv2' \(rows 0..13",
        ),
        (lambda dn, x: dn.project(x, "fc1", 0, position=(0, 0)), InputError, "no positions"),
        (
            lambda dn, x: dn.project(x[0], "conv2", 0),
            InputError,
            r"\[N, C, H, W\].*x.unsqueeze\(0\)",
        ),
        (
            lambda dn, x: dn.project(x.repeat(1, 3, 1, 1), "conv2", 0),
            InputError,
            "expects 1 input channels but the input has 3",
        ),
        (
            lambda dn, x: dn.project(x[:, :, :20, :20], "fc1", 0),
            InputError,
            "forward pass failed on input of shape",
        ),
        (
            lambda dn, x: dn.project(x.float(), "conv2", 0),
            InputError,
            r"x is torch.float32 but the model's parameters are torch.float64",
        ),
        (lambda dn, x: dn.project(x.numpy(), "conv2", 0), InputError, "must be a torch.Tensor"),
        (lambda dn, x: dn.project(x[:0], "conv2", 0), InputError, "empty batch"),
        (lambda dn, x: dn.project((x * 255).long(), "conv2", 0), InputError, "floating-point"),
    ],
)
def test_bad_input_gets_a_clear_error(lenet, call, error, pattern):
    model, x = lenet
    with deconvviz.attach(model) as dn, pytest.raises(error, match=pattern):
        call(dn, x)


def test_model_and_rule_errors():
    with pytest.raises(InputError, match="has no submodules"):
        deconvviz.attach(nn.Identity())
    with pytest.raises(InputError, match="needs a torch.nn.Module"):
        deconvviz.attach(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown rule 'deconv'; did you mean 'deconvnet'"):
        deconvviz.attach(seq_net(), rule="deconv")


def test_shared_module_is_projected_per_call():
    """ResNet calls one nn.ReLU module twice per block: each call is a layer of its own."""
    case = CASES[5]
    model, x = build(case)
    with deconvviz.attach(model) as dn:
        with pytest.raises(
            LayerError, match=r"called 2 times.*'layer1.0.relu:0' ... 'layer1.0.relu:1'"
        ):
            dn.project(x, "layer1.0.relu", 0)
        assert {"layer1.0.relu:0", "layer1.0.relu:1"} <= set(dn.layers)
        assert "layer1.0.relu" not in dn.layers
        with pytest.raises(LayerError, match="its calls are 'layer1.0.relu:0'"):
            dn.project(x, "layer1.0.relu:2", 0)
        first = dn.project(x, "layer1.0.relu:0", [3, 9])
        second = dn.project(x, "layer1.0.relu:1", [3, 9])
        block = dn.project(x, "layer1.0", [3, 9])
        acts = dn.layer_output(x, "layer1.0.relu:0")
    torch.testing.assert_close(second, block)  # the block's output is its ReLU's second call
    assert acts.shape == (2, 64, 10, 10) and (acts >= 0).all()
    out = acts[:, [3, 9]].flatten(2)
    best = out.argmax(2)
    seeds = [
        (n, c, int(best[n, i]) // 10, int(best[n, i]) % 10)
        for n in range(2)
        for i, c in enumerate([3, 9])
    ]
    ref = oracle(case, model, x, "layer1.0.relu:0", seeds).view_as(first)
    torch.testing.assert_close(first, ref, rtol=1e-6, atol=1e-12)


def test_layers_are_listed_in_forward_order():
    class Backwards(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.second = nn.Conv2d(4, 4, 3)
            self.first = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.second(F.relu(self.first(x)))

    with deconvviz.attach(Backwards()) as dn:
        assert dn.layers == ["second", "first"]  # definition order until a forward pass ran
        dn.project(torch.rand(1, 1, 9, 9), "second", 0)
        assert dn.layers == ["first", "second"]


# ----------------------------------------------------------------------------- activations


def test_activation_without_rule_warns_by_name_and_strict_refuses():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Conv2d(2, 2, 3), nn.GELU())
    with pytest.warns(DeconvvizWarning, match=r"'1' \(Tanh\), '3' \(GELU\)"):
        dn = deconvviz.attach(model)
    assert "NO deconvnet rule" in dn.summary()
    with pytest.raises(UnsupportedLayerError, match=r"'1' \(Tanh\)"):
        deconvviz.attach(model, strict=True)


def test_functional_activation_without_rule_is_reported_where_it_is_called():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.conv2 = nn.Conv2d(2, 2, 3)

        def forward(self, x):
            return self.conv2(torch.tanh(self.conv(x)))

    x = torch.rand(1, 1, 9, 9)
    dn = deconvviz.attach(Net())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dn.project(x, "conv", 0)  # tanh comes after conv: nothing to warn about
    with pytest.warns(DeconvvizWarning, match="tanh in the model's forward|tanh in 'forward'"):
        dn.project(x, "conv2", 0)
    strict = deconvviz.attach(Net(), strict=True)
    with pytest.raises(UnsupportedLayerError, match="tanh"):
        strict.project(x, "conv2", 0)


def test_summary_shows_each_layers_reverse_step_and_functional_relus():
    torch.manual_seed(0)
    dn = deconvviz.attach(FunctionalNet())
    text = dn.summary()
    assert "conv1  Conv2d" in text and "transposed filters" in text
    dn.project(torch.rand(1, 3, 16, 16), "fc", 0)
    text = repr(dn)
    assert "relu x1 in the model's forward" in text or "relu x2" in text
    assert "relu_ x1" in text  # x.relu_() was seen and rectified
    guided = deconvviz.attach(seq_net(), rule="guided").summary()
    assert "unpool with the forward pass's switches" in guided and "guided backprop" in guided


# ----------------------------------------------------------------------------- batching


def test_k_channels_are_one_batched_pass_not_k_calls():
    model, x = build(CASES[1])  # lenet5
    calls = []
    model.conv1.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    with deconvviz.attach(model) as dn:
        rec = dn.project(x, "relu2", list(range(16)))
        n_calls = len(calls)
        singles = torch.stack([dn.project(x, "relu2", c) for c in range(16)], dim=1)
    torch.testing.assert_close(rec, singles)
    # probe + values pass + at most four crop-size groups (interior and border crops)
    assert n_calls <= 6, calls[:n_calls]
    assert sum(calls[:n_calls]) >= 2 * 16


def test_small_memory_budget_chunks_without_changing_results():
    model, x = build(CASES[1])
    with deconvviz.attach(model) as dn:
        ref = dn.project(x, "relu2", [0, 1, 2, 3])
    with deconvviz.attach(model, max_memory=1) as dn:
        rec = dn.project(x, "relu2", [0, 1, 2, 3])
    torch.testing.assert_close(rec, ref)


# ----------------------------------------------------------------------------- captum


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
def test_captum_neuron_deconvolution_agrees_up_to_the_seed_value():
    """captum seeds with 1, we keep the activation's value; otherwise the same on nn.ReLU nets."""
    torch.manual_seed(0)
    model = CourseLeNet5().double().eval()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    with deconvviz.attach(model) as dn:
        acts = dn.layer_output(x, "conv2")[:, 7]
        # a position where both images' activation is positive (relu(a*g) = a*relu(g) needs a > 0)
        both = torch.nonzero(acts.min(dim=0).values > 0)
        pos = tuple(int(v) for v in both[len(both) // 2])
        rec = dn.project(x, "conv2", 7, position=pos)
    act = acts[:, pos[0], pos[1]]
    attr = NeuronDeconvolution(model, model.conv2).attribute(
        x.clone().requires_grad_(True), neuron_selector=(7, *pos)
    )
    assert rec.abs().max() > 0
    torch.testing.assert_close(rec, attr * act.view(-1, 1, 1, 1), rtol=1e-6, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
def test_captum_misses_functional_relus_where_we_do_not():
    """captum only hooks nn.ReLU modules: on F.relu nets it returns the plain gradient."""
    torch.manual_seed(0)
    model = FunctionalNet().double().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    case = next(c for c in CASES if c.name == "functional")
    with deconvviz.attach(model) as dn:
        rec = dn.project(x, "conv3", 2, position=(2, 2))
        act = dn.layer_output(x, "conv3")[:, 2, 2, 2]
    ref = oracle(case, model, x, "conv3", [(0, 2, 2, 2), (1, 2, 2, 2)])
    torch.testing.assert_close(rec, ref, rtol=1e-6, atol=1e-12)
    captum = NeuronDeconvolution(model, model.conv3).attribute(
        x.clone().requires_grad_(True), neuron_selector=(2, 2, 2)
    )
    grad = oracle(case, model, x, "conv3", [(0, 2, 2, 2), (1, 2, 2, 2)], rule="gradient")
    torch.testing.assert_close(captum * act.view(-1, 1, 1, 1), grad, rtol=1e-6, atol=1e-12)
    assert not torch.allclose(captum * act.view(-1, 1, 1, 1), rec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    model, x = build(CASES[5])
    with deconvviz.attach(model) as dn:
        ref = dn.project(x, "layer2.0", [0, 3])
    model = model.cuda()
    with deconvviz.attach(model) as dn:
        rec = dn.project(x.cuda(), "layer2.0", [0, 3])
    assert rec.is_cuda
    torch.testing.assert_close(rec.cpu(), ref, rtol=1e-6, atol=1e-10)
