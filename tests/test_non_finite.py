"""NaN/inf weights or activations: one line naming the first layer; JSON always valid."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import deconvviz
from deconvviz.analyses.scan import scan
from deconvviz.base._io import write_json
from deconvviz.base.errors import DeconvvizError, NonFiniteError


def _model(poison: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3), nn.ReLU()
    ).eval()
    with torch.no_grad():
        if poison == "nan":
            model[3].weight[1, 2, 0, 0] = float("nan")
        elif poison == "overflow":
            model[3].weight.fill_(3e38)
    return model


@pytest.mark.parametrize(
    ("poison", "why"),
    [
        ("nan", r"NaN values first appear in the output of layer '3' \(its weight holds 1 NaN"),
        ("overflow", r"infinite values first appear in the output of layer '3' \(its input was"),
    ],
)
def test_non_finite_activations_are_named_in_one_line(poison, why):
    model, x = _model(poison), torch.rand(2, 3, 16, 16)
    with pytest.raises(NonFiniteError, match=why) as err:
        deconvviz.attach(model, warn=False).project(x, "4", 0)
    assert "\n" not in str(err.value) and isinstance(err.value, DeconvvizError)
    data = torch.utils.data.TensorDataset(torch.rand(6, 3, 16, 16))
    with pytest.raises(NonFiniteError, match=why):
        scan(model, data, "conv", k=2, progress=False)


def test_a_non_finite_input_is_named():
    x = torch.rand(1, 3, 16, 16)
    x[0, 0, 3, 3] = float("inf")
    with pytest.raises(DeconvvizError, match="(infinite|finite)"):
        deconvviz.attach(_model("none"), warn=False).project(x, "4", 0)


def test_json_is_always_valid(tmp_path):
    import numpy as np

    def refuse(const):
        raise AssertionError(f"invalid JSON constant {const}")

    path = write_json(
        tmp_path / "x.json",
        {
            "nan": float("nan"),
            "inf": -float("inf"),
            "tensor": torch.tensor([1.0, float("nan")]),
            "numpy": np.array([np.inf, 2.0]),
            "scalar": np.float32("nan"),
            "nested": [{"v": (float("nan"),)}],
        },
    )
    got = json.loads(path.read_text(), parse_constant=refuse)
    assert got == {
        "nan": None,
        "inf": None,
        "tensor": [1.0, None],
        "numpy": [None, 2.0],
        "scalar": None,
        "nested": [{"v": [None]}],
    }
