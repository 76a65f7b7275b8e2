"""Models: architecture contract, course initialisations, recurrent maths against a hand loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deconvviz.base.errors import DeconvvizError, InputError
from deconvviz.sources.models import (
    MODELS,
    LeNet5,
    RNNClassifier,
    build_model,
    full_config,
    register_model,
)


@pytest.fixture(scope="module")
def lenet28() -> LeNet5:
    torch.manual_seed(1)
    return LeNet5(init="course")


LENET_ORDER = [
    "conv1",
    "relu1",
    "pool1",
    "conv2",
    "relu2",
    "pool2",
    "flatten",
    "fc1",
    "relu3",
    "dropout",
    "fc2",
]


@pytest.mark.parametrize(("channels", "size", "fc_in"), [(1, 28, 64 * 7 * 7), (3, 32, 64 * 8 * 8)])
def test_lenet5_layers_are_called_in_the_contract_order(
    channels: int, size: int, fc_in: int
) -> None:
    net = LeNet5(in_channels=channels, image_size=size)
    assert [n for n, _ in net.named_children()] == LENET_ORDER
    calls: list[str] = []
    for name in LENET_ORDER:
        getattr(net, name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    out = net(torch.rand(2, channels, size, size))
    assert calls == LENET_ORDER
    assert out.shape == (2, 10)
    assert isinstance(net.relu1, nn.ReLU) and isinstance(net.flatten, nn.Flatten)
    assert net.conv1.kernel_size == (5, 5) and net.conv1.padding == (2, 2)
    assert net.conv1.out_channels == 32 and net.conv2.out_channels == 64
    assert net.fc1.in_features == fc_in and net.fc1.out_features == 1024
    assert net.dropout.p == 0.5 and net.pool1.kernel_size == 2


def test_lenet5_forward_equals_the_functional_definition() -> None:
    torch.manual_seed(0)
    net = LeNet5(image_size=12).double().eval()
    x = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    h = F.max_pool2d(F.relu(F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=2)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, net.conv2.weight, net.conv2.bias, padding=2)), 2)
    h = F.relu(h.flatten(1) @ net.fc1.weight.T + net.fc1.bias)
    expected = h @ net.fc2.weight.T + net.fc2.bias
    torch.testing.assert_close(net(x), expected, rtol=1e-12, atol=1e-12)


def test_lenet5_course_init_is_truncated_normal_with_biases_01(lenet28: LeNet5) -> None:
    net = lenet28
    w = net.fc1.weight.detach()
    assert w.abs().max() <= 0.2 and w.abs().max() > 0.199
    # a normal(0, 0.1) cut at +-2 std has std 0.1 * sqrt(1 - 4 phi(2) / (Phi(2) - Phi(-2)))
    phi2 = math.exp(-2) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    expected_std = 0.1 * math.sqrt(1 - 4 * phi2 / mass)
    assert abs(w.std().item() - expected_std) < 5e-4
    for layer in (net.conv1, net.conv2, net.fc1, net.fc2):
        assert torch.all(layer.bias == 0.1)
        assert layer.weight.abs().max() <= 0.2


def test_lenet5_pytorch_init_differs_from_course() -> None:
    torch.manual_seed(1)
    net = LeNet5(init="pytorch")
    assert not torch.all(net.conv1.bias == 0.1)
    bound = 1 / math.sqrt(25)  # kaiming-uniform(a=sqrt 5) of a 5x5x1 conv
    assert net.conv1.weight.abs().max() <= bound + 1e-6


@pytest.mark.parametrize(
    "bad", [torch.rand(2, 3, 28, 28), torch.rand(1, 28, 28), torch.rand(2, 1, 32, 32)]
)
def test_lenet5_rejects_wrong_input_shapes_with_the_fix(bad: torch.Tensor, lenet28: LeNet5) -> None:
    with pytest.raises(InputError, match=r"expects images \[N, 1, 28, 28\]"):
        lenet28(bad)


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(InputError, match="did you mean 'course'"):
        LeNet5(init="corse")
    with pytest.raises(InputError, match="image_size"):
        LeNet5(image_size=2)
    with pytest.raises(InputError, match="did you mean 'gru'"):
        RNNClassifier(cell="gruu")
    with pytest.raises(InputError, match="hidden"):
        RNNClassifier(hidden=0)


# ------------------------------------------------------------------------------ recurrent maths


def _oracle_states(net: RNNClassifier, x: torch.Tensor) -> torch.Tensor:
    """PyTorch's documented cell equations, one step at a time, in float64."""
    r = net.rnn
    w_ih, w_hh = r.weight_ih_l0.double(), r.weight_hh_l0.double()
    b_ih, b_hh = r.bias_ih_l0.double(), r.bias_hh_l0.double()
    n, t, _ = x.shape
    hid = net.hidden
    h = torch.zeros(n, hid, dtype=torch.float64)
    c = torch.zeros(n, hid, dtype=torch.float64)
    out = []
    for step in range(t):
        xt = x[:, step]
        gi = xt @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        if net.cell == "rnn":
            h = torch.tanh(gi + gh)
        elif net.cell == "lstm":
            i, f, g, o = (gi + gh).split(hid, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            ir, iz, in_ = gi.split(hid, dim=1)
            hr, hz, hn = gh.split(hid, dim=1)
            rr, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            cand = torch.tanh(in_ + rr * hn)
            h = (1 - z) * cand + z * h
        out.append(h)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_hidden_states_and_logits_match_a_hand_written_loop(cell: str) -> None:
    torch.manual_seed(2)
    net = RNNClassifier(cell=cell, hidden=16, input_size=8).double()
    x = torch.rand(3, 1, 6, 8, dtype=torch.float64)
    states = net.hidden_states(x)
    expected = _oracle_states(net, x[:, 0])
    assert states.shape == (3, 6, 16)
    torch.testing.assert_close(states, expected, rtol=1e-10, atol=1e-10)
    logits = net(x)
    torch.testing.assert_close(logits, expected[:, -1] @ net.fc.weight.T + net.fc.bias)
    torch.testing.assert_close(net(x[:, 0]), logits)  # [N, T, W] reads the same as [N, 1, T, W]


def test_rnn_rejects_wrong_shapes() -> None:
    net = RNNClassifier(hidden=8)
    with pytest.raises(InputError, match=r"\[N, 1, T, 28\]"):
        net(torch.rand(2, 3, 28, 28))
    with pytest.raises(InputError, match="unsqueeze"):
        net(torch.rand(28, 28))


@pytest.mark.parametrize(("cell", "hidden"), [("rnn", 64), ("lstm", 64), ("gru", 64), ("gru", 256)])
def test_rnn_course_init_follows_tensorflow(cell: str, hidden: int) -> None:
    torch.manual_seed(3)
    net = RNNClassifier(cell=cell, hidden=hidden, init="course")
    r = net.rnn
    h = hidden
    fan_in = 28 + h
    if cell == "gru":
        blocks = [(slice(0, 2 * h), 2 * h), (slice(2 * h, 3 * h), h)]
    else:
        gates = 4 if cell == "lstm" else 1
        blocks = [(slice(0, gates * h), gates * h)]
    for rows, fan_out in blocks:
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = torch.cat([r.weight_ih_l0[rows].flatten(), r.weight_hh_l0[rows].flatten()]).detach()
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.98 * bound
        # uniform(-b, b) has variance b^2 / 3
        assert abs(w.pow(2).mean().item() / (bound**2 / 3) - 1) < 0.05
    expected_bias = torch.zeros_like(r.bias_ih_l0)
    if cell == "lstm":
        expected_bias[h : 2 * h] = 1  # forget gate (PyTorch order i, f, g, o)
    if cell == "gru":
        expected_bias[: 2 * h] = 1  # reset and update gates
    assert torch.equal((r.bias_ih_l0 + r.bias_hh_l0).detach(), expected_bias)
    fc = torch.cat([net.fc.weight.flatten(), net.fc.bias]).detach()
    assert abs(fc.mean().item()) < 0.15 and abs(fc.std().item() - 1) < 0.1


def test_rnn_pytorch_init_keeps_pytorch_defaults() -> None:
    torch.manual_seed(3)
    net = RNNClassifier(cell="lstm", hidden=64, init="pytorch")
    bound = 1 / math.sqrt(64)
    assert net.rnn.bias_ih_l0.abs().max() <= bound
    assert net.fc.weight.abs().max() <= bound + 1e-6  # nothing like N(0, 1)


# ------------------------------------------------------------------------------ registry


def test_build_model_round_trips_the_config() -> None:
    for net in (
        LeNet5(in_channels=3, image_size=32, init="pytorch"),
        RNNClassifier(cell="gru", hidden=32),
    ):
        rebuilt = build_model(net.config)
        assert type(rebuilt) is type(net)
        assert rebuilt.config == net.config
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
            k: v.shape for k, v in net.state_dict().items()
        }


def test_full_config_fills_defaults_and_rejects_unknown_arguments() -> None:
    assert full_config({"model": "rnn", "cell": "lstm"}) == RNNClassifier(cell="lstm").config
    with pytest.raises(InputError, match="takes no argument"):
        full_config({"model": "lenet5", "hiden": 3})
    with pytest.raises(InputError, match="did you mean 'lenet5'"):
        build_model({"model": "lenet"})
    with pytest.raises(InputError, match="'model' key"):
        build_model({"cell": "gru"})


def test_registry_refuses_duplicate_names_and_builds_registered_models() -> None:
    with pytest.raises(DeconvvizError, match="already registered"):
        register_model("lenet5")(LeNet5)
    try:
        register_model("tiny-test-net")(lambda width=3: nn.Linear(width, 2))
        assert build_model({"model": "tiny-test-net", "width": 5}).in_features == 5
    finally:
        MODELS.pop("tiny-test-net", None)
