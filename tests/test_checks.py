"""Unit tests of deconvviz.base.checks: every input check, what it returns and the message it
gives."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from deconvviz.base.checks import (
    call_key,
    check_batch,
    check_channels,
    check_images,
    check_labels,
    check_layer,
    check_layers,
    check_model,
    model_device_dtype,
    module_names,
    split_call,
    to_model,
)
from deconvviz.base.errors import InputError, LayerError


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 2, 3), nn.ReLU())
    ).double()


# ----------------------------------------------------------------------- model, device, dtype


def test_check_model():
    net = _net()
    assert check_model(net) is net
    with pytest.raises(InputError, match=r"^model must be a torch.nn.Module, got str$"):
        check_model("net")


def test_model_device_dtype():
    assert model_device_dtype(_net()) == (torch.device("cpu"), torch.float64)
    buffers_only = nn.BatchNorm2d(3, affine=False).half()
    assert model_device_dtype(buffers_only) == (torch.device("cpu"), torch.float16)
    like = torch.zeros(1, dtype=torch.bfloat16)
    assert model_device_dtype(nn.ReLU(), like=like) == (torch.device("cpu"), torch.bfloat16)
    assert model_device_dtype(nn.ReLU()) == (torch.device("cpu"), torch.float32)
    with pytest.raises(InputError, match="model must be a torch.nn.Module, got int"):
        model_device_dtype(3)  # type: ignore[arg-type]


def test_to_model():
    net = _net()
    assert to_model(torch.zeros(2, dtype=torch.float32), net).dtype == torch.float64
    ids = torch.zeros(2, dtype=torch.long)
    assert to_model(ids, net).dtype == torch.long
    assert to_model(torch.zeros(2, dtype=torch.float16), nn.ReLU()).dtype == torch.float16


# ----------------------------------------------------------------------------------- images


def test_check_batch_returns_the_tensor_itself():
    x = torch.rand(2, 1, 5, 5)
    assert check_batch(x) is x
    nan = torch.full((1, 1, 2, 2), float("nan"))
    assert check_batch(nan, finite=False) is nan


@pytest.mark.parametrize(
    ("x", "message"),
    [
        ([1.0], "x must be a torch.Tensor [N, C, H, W], got list"),
        (
            torch.rand(1, 5, 5),
            "x must have shape [N, C, H, W], got (1, 5, 5); add a batch dimension with "
            "x.unsqueeze(0)",
        ),
        (torch.rand(5, 5), "x must have shape [N, C, H, W], got (5, 5)"),
        (torch.rand(0, 1, 5, 5), "x is an empty batch (N = 0); pass at least one image"),
        (
            torch.zeros(1, 1, 2, 2, dtype=torch.uint8),
            "x must be a floating-point tensor, got torch.uint8; scale to the model's input range "
            "with x.float() / 255 (or as the model expects)",
        ),
        (torch.full((1, 1, 2, 2), float("inf")), "x contain NaN or infinite values"),
    ],
)
def test_check_batch_messages(x, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        check_batch(x, "x")


def test_check_images_moves_to_the_model_dtype_and_detaches():
    x = torch.rand(2, 1, 5, 5, requires_grad=True)
    out = check_images(_net(), x)
    assert out.dtype == torch.float64 and not out.requires_grad
    with pytest.raises(InputError, match=r"^the pool must have shape \[N, C, H, W\]"):
        check_images(_net(), torch.rand(1, 5, 5), "the pool")


# ----------------------------------------------------------------------------------- labels


def test_check_labels():
    t = check_labels([1, 2], 2)
    assert t.dtype == torch.int64 and t.tolist() == [1, 2]
    assert check_labels(3, 1).tolist() == [3]
    assert check_labels(torch.tensor([0], dtype=torch.int32), 1).dtype == torch.int64


@pytest.mark.parametrize(
    ("labels", "n", "message"),
    [
        ([[1, 2], [3]], 2, "labels must be a sequence of class indices, got [[1, 2], [3]]"),
        ([1, 2, 3], 2, "labels must be [N] = [2] class indices, got shape (3,)"),
        ([0.5, 1.0], 2, "labels must be integers (class indices), got torch.float32"),
        ([True, False], 2, "labels must be integers (class indices), got torch.bool"),
    ],
)
def test_check_labels_messages(labels, n, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        check_labels(labels, n)


# ----------------------------------------------------------------------------------- layers


def test_module_names():
    assert list(module_names(_net())) == ["0", "1", "2", "2.0", "2.1"]


def test_call_key_and_split_call():
    assert call_key("layer1.0.relu", 1) == "layer1.0.relu:1"
    assert split_call("layer1.0.relu:1") == ("layer1.0.relu", 1)
    assert split_call("conv1") == ("conv1", None)
    assert split_call("a:b") == ("a:b", None)
    assert split_call(":1") == (":1", None)


def test_check_layer():
    net = _net()
    assert check_layer(net, "2.0") is net[2][0]
    assert check_layer(net, "2.1:1", calls=True) is net[2][1]
    with pytest.raises(LayerError, match=r"^unknown layer '2.0:1'; did you mean"):
        check_layer(net, "2.0:1")  # without calls, ':1' is part of the name
    close = r"^unknown layer '2\.3'; did you mean '2\.1', '2\.0', '2'\?$"
    with pytest.raises(LayerError, match=close):
        check_layer(net, "2.3")
    with pytest.raises(LayerError, match=r"^unknown layer ''; valid names: '0', '1', '2'"):
        check_layer(net, "")  # the model itself is not a layer
    with pytest.raises(LayerError, match=r"^unknown layer '1'; did you mean"):
        check_layer(nn.Sequential(nn.ReLU(), nn.Sequential(nn.ReLU())), 1)
    with pytest.raises(LayerError, match=r"^unknown layer 'x'; there are none$"):
        check_layer(nn.ReLU(), "x")


def test_check_layers():
    net = _net()
    assert check_layers(net, "0") == ("0",)
    assert check_layers(net, ["0", "2.1"]) == ("0", "2.1")


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (3, "layers must be a list of layer names, got 3"),
        ([], "layers is empty; name at least one layer (as named_modules() spells it)"),
        (["0", 1], "layer names must be strings, got 1"),
        (["0", "9"], "unknown layer '9'; valid names: '0', '1', '2', '2.0', '2.1'"),
        (["0", "0"], "layers ['0', '0'] repeat a name; give each layer once"),
    ],
)
def test_check_layers_messages(layers, message):
    with pytest.raises(LayerError, match=f"^{re.escape(message)}$"):
        check_layers(_net(), layers)


# --------------------------------------------------------------------------------- channels


def test_check_channels():
    assert check_channels(3, 8) == ([3], True)
    assert check_channels(torch.tensor(2), 8) == ([2], True)
    assert check_channels([0, 7], 8) == ([0, 7], False)
    assert check_channels(torch.tensor([1, 2]), 8) == ([1, 2], False)
    assert check_channels(range(3), 3) == ([0, 1, 2], False)


@pytest.mark.parametrize(
    ("channel", "layer", "what", "message"),
    [
        ("a", None, "channel", "channel must be an int or a list of ints, got 'a'"),
        (None, None, "channels", "channels must be an int or a list of ints, got None"),
        ([], None, "channel", "channel is an empty list; give at least one channel"),
        ([], None, "channels", "channels is an empty list; give at least one channel"),
        (8, None, "channel", "channel 8 is out of range: the layer has 8 channels (0..7)"),
        ([1, -1], None, "channel", "channel -1 is out of range: the layer has 8 channels (0..7)"),
        ([9, -1], None, "channel", "channel 9 is out of range: the layer has 8 channels (0..7)"),
        ([9], "conv2", "channels", "channel 9 is out of range: 'conv2' has 8 channels (0..7)"),
    ],
)
def test_check_channels_messages(channel, layer, what, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        check_channels(channel, 8, layer, what=what)


def test_class_names_are_used_only_when_they_name_the_models_outputs():
    from deconvviz.base.checks import class_names_for
    from deconvviz.base.errors import ClassNamesWarning

    assert class_names_for(["a", "b", "c"], 3) == ["a", "b", "c"]
    assert class_names_for(["a", "b", "c"], None) == ["a", "b", "c"]
    assert class_names_for(None, 10) is None
    with pytest.warns(ClassNamesWarning, match="3 classes but the model has 1000 outputs"):
        assert class_names_for(["a", "b", "c"], 1000) is None
