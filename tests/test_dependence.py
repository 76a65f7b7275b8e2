"""How much a deconvnet picture depends on the image: measured per layer, and said in words.

On a net with max pooling the top projections of a unit differ from image to image; on a
strided ResNet with no max pooling they are the same picture up to scale (Mahendran & Vedaldi,
2016), and the report, ``inspect`` and the method comparison say so.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from deconvviz.analyses.compare import captum_relu_note, compare_methods, relu_calls
from deconvviz.analyses.dependence import (
    _unit_correlation,
    image_dependence,
    pool_switches,
    switches_per_layer,
)
from deconvviz.analyses.reconstruct import reconstruct_dataset
from deconvviz.sources.pretrained import load_pretrained
from deconvviz_cli.main import cli
from zoo import FunctionalNet, SliceResNet


def _sample(n: int) -> list[tuple[torch.Tensor, int]]:
    from deconvviz.sources.datasets import load_sample

    ds = load_sample()
    return [ds[i] for i in range(n)]


def test_pairwise_correlation_against_numpy():
    gen = torch.Generator().manual_seed(0)
    recs = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64)
    recs[1] = 2.5 * recs[0]  # same picture, other scale
    inside = torch.ones(4, 5, 5, dtype=torch.bool)
    inside[2, 0, :] = False  # entry 2's window ran off the image on its first row
    want = []
    for a in range(4):
        for b in range(a + 1, 4):
            both = (inside[a] & inside[b]).numpy()
            u = recs[a].numpy()[:, both].ravel()
            v = recs[b].numpy()[:, both].ravel()
            want.append(np.corrcoef(u, v)[0, 1])
    assert _unit_correlation(recs, inside) == pytest.approx(float(np.mean(want)), abs=1e-12)
    assert _unit_correlation(recs[:2], inside[:2]) == pytest.approx(1.0, abs=1e-12)


def test_switches_are_counted_module_and_functional():
    model, _ = load_pretrained("zfnet-cifar")
    x = torch.rand(1, 3, 32, 32)
    # conv1 | pool1 | conv2 | pool2 | conv3 conv4 conv5 | pool5: by hand from the architecture
    assert [pool_switches(model, name, x) for name in ("conv1", "conv2", "conv3", "conv5")] == [
        0,
        1,
        2,
        2,
    ]
    assert pool_switches(model, None, x) == 3
    functional = switches_per_layer(FunctionalNet().eval(), torch.rand(1, 3, 16, 16))
    assert functional["conv1"] == 0 and functional["conv2"] == 1  # F.max_pool2d between them
    assert switches_per_layer(SliceResNet().eval(), torch.rand(1, 3, 16, 16))["layer3.0.conv2"] == 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_pooled_net_depends_on_the_image_strided_resnet_hardly():
    torch.manual_seed(0)
    pooled, _ = load_pretrained("zfnet-cifar")
    data = _sample(100)
    rec = reconstruct_dataset(pooled, data, ["conv3"], k=6, max_channels=6, progress=False)
    dep = image_dependence(rec["conv3"], pool_switches(pooled, "conv3", data[0][0][None]))
    assert dep.switches == 2 and dep.units >= 4
    assert dep.dependence > 0.5 and not dep.hardly
    assert dep.sentence() is None

    resnet = SliceResNet().eval()
    gen = torch.Generator().manual_seed(1)
    images = [(torch.rand(3, 16, 16, generator=gen), i % 10) for i in range(24)]
    layer = "layer2.0.conv2"
    rec = reconstruct_dataset(resnet, images, [layer], k=6, max_channels=6, progress=False)
    dep = image_dependence(rec[layer], pool_switches(resnet, layer, images[0][0][None]))
    assert dep.switches == 0 and dep.units >= 4
    assert dep.correlation > 0.9 and dep.dependence < 0.1 and dep.hardly
    text = dep.sentence()
    assert text is not None and text.startswith(f"{layer}: the deconvnet pictures hardly depend")
    for word in ("Mahendran & Vedaldi", "Odena", "Guided backprop", "checkerboard"):
        assert word in text
    assert math.isclose(dep.to_dict()["dependence"], 1 - dep.correlation)


def test_inspect_says_where_pictures_hardly_depend_on_the_image():
    res = CliRunner().invoke(cli, ["inspect", "--model", "zoo:SliceResNet", "--image-size", "16"])
    assert res.exit_code == 0, res.output
    note = res.stdout.strip().splitlines()[-1]
    assert "hardly depend on the image" in note and "--rule guided" in note
    assert "layer3.0.conv2" in note and "Mahendran" in note
    res = CliRunner().invoke(
        cli, ["inspect", "--model", "zoo:SliceResNet", "--image-size", "16", "--rule", "guided"]
    )
    assert "hardly depend" not in res.stdout


class _ModuleReluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


class _FunctionalReluNet(_ModuleReluNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).flatten(1))


def test_comparison_says_when_captum_guided_backprop_is_the_plain_gradient():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    functional = _FunctionalReluNet().double().eval()
    module = _ModuleReluNet().double().eval()
    module.load_state_dict(functional.state_dict())
    assert relu_calls(functional, x) == (1, 0) and relu_calls(module, x) == (1, 1)
    assert captum_relu_note(module, x) is None
    comp = compare_methods(
        functional, x, target=0, methods=("saliency", "guided_backprop"), progress=False
    )
    # the claim the note makes, checked: captum's guided backprop equals the gradient here
    torch.testing.assert_close(comp["guided_backprop"], comp["saliency"])
    (note,) = comp.notes
    assert "equals the plain gradient" in note and "F.relu" in note
    on_module = compare_methods(
        module, x, target=0, methods=("saliency", "guided_backprop"), progress=False
    )
    assert on_module.notes == ()
    assert not torch.allclose(on_module["guided_backprop"], on_module["saliency"])
