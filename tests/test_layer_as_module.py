"""A layer can be named or passed as the submodule itself (as torch-cam takes its targets)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deconvviz
from deconvviz.base.errors import LayerError
from zoo import CourseLeNet5


@pytest.fixture
def net_and_x() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return CourseLeNet5().eval(), torch.rand(2, 1, 28, 28)


def test_a_module_gives_what_its_name_gives(net_and_x: tuple[nn.Module, torch.Tensor]) -> None:
    net, x = net_and_x
    with deconvviz.attach(net) as dn:
        assert dn.layer_name(net.conv2) == "conv2"
        assert torch.equal(dn.project(x, net.conv2, [1, 3]), dn.project(x, "conv2", [1, 3]))
        seeds = dict(image=[0, 1], channel=[2, 2], position=[(1, 1), (3, 2)])
        assert torch.equal(
            dn.project_seeds(x, net.relu2, **seeds), dn.project_seeds(x, "relu2", **seeds)
        )
        assert dn.layer_geometry(x, net.conv1) == dn.layer_geometry(x, "conv1")
        assert dn.receptive_field(net.conv2, (1, 28, 28)) == dn.receptive_field(
            "conv2", (1, 28, 28)
        )
    assert torch.equal(
        deconvviz.layer_output(net, x, net.pool1), deconvviz.layer_output(net, x, "pool1")
    )


def test_a_module_from_another_model_is_refused(net_and_x: tuple[nn.Module, torch.Tensor]) -> None:
    net, x = net_and_x
    stranger = nn.Conv2d(1, 6, 5)
    with (
        deconvviz.attach(net) as dn,
        pytest.raises(LayerError, match="not a submodule of the model"),
    ):
        dn.project(x, stranger, 0)
