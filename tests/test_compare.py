"""Our deconvnet beside captum's attribution methods.

Oracles: captum itself where it is right (models built from ``nn.ReLU`` modules), in float64,
and an independent autograd rewrite (``zoo._functional_forward``) for a model that calls
``F.relu``, where captum silently falls back to the plain gradient.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop, IntegratedGradients, Occlusion, Saliency
from torch import Tensor, nn

from deconvviz.analyses.compare import METHODS, compare_methods, project_class
from deconvviz.base.errors import InputError
from deconvviz.render.reconstruct import comparison_figure
from zoo import FunctionalNet, _functional_forward


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(8 * 6 * 6, 16)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        for m in self.children():
            x = m(x)
        return x


@pytest.fixture(scope="module")
def net_and_images():
    torch.manual_seed(0)
    model = TinyNet().double().eval()
    with torch.no_grad():  # logits of both signs
        model.fc2.bias.copy_(torch.tensor([0.3, -0.3, 0.2, -0.2]))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 12, 12, generator=gen, dtype=torch.float64)
    return model, x


def _captum(cls, model, x, target, **kw):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks", category=UserWarning)
        return cls(model).attribute(x.clone().requires_grad_(True), target=target, **kw).detach()


@pytest.mark.parametrize(
    ("rule", "cls", "kw"),
    [
        ("deconvnet", Deconvolution, {}),
        ("guided", GuidedBackprop, {}),
        ("gradient", Saliency, {"abs": False}),
    ],
)
def test_project_class_equals_captum_on_relu_modules(net_and_images, rule, cls, kw):
    model, x = net_and_images
    target = torch.tensor([0, 1, 2, 3, 1])
    logits = model(x).detach()[torch.arange(5), target]
    assert (logits < 0).any() and (logits > 0).any()  # both signs of the seeded logit
    ours = project_class(model, x, target, rule)
    ref = _captum(cls, model, x, target, **kw)
    assert float(ref.abs().max()) > 0
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_project_class_sees_functional_relus_where_captum_does_not():
    torch.manual_seed(0)
    model = FunctionalNet().double().eval()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    target = torch.tensor([4, 0, 2])
    ours = project_class(model, x, target)
    # independent oracle: the model rewritten with an explicit deconvnet ReLU, seed 1
    want = []
    for i in range(3):
        xi = x[i : i + 1].clone().requires_grad_(True)
        out = _functional_forward(model, xi, "fc", "deconvnet")
        (g,) = torch.autograd.grad(out[0, int(target[i])], xi)
        want.append(g[0])
    torch.testing.assert_close(ours, torch.stack(want), rtol=1e-10, atol=1e-12)
    # captum's Deconvolution misses F.relu: it returns the plain gradient, which differs
    captum = _captum(Deconvolution, model, x, target)
    grad = _captum(Saliency, model, x, target, abs=False)
    torch.testing.assert_close(captum, grad)
    assert float((ours - grad).abs().max()) > 1e-3 * float(grad.abs().max())


def test_compare_methods_returns_each_method_for_the_same_class(net_and_images):
    model, x = net_and_images
    model.train()  # must come back in train mode, without parameter gradients
    comp = compare_methods(
        model,
        x,
        target=2,
        occlusion_size=4,
        occlusion_stride=2,
        ig_steps=8,
        baseline=0.25,
        progress=False,
    )
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    assert comp.methods == METHODS
    assert comp.attributions.shape == (5, 5, 3, 12, 12)
    assert comp.target.tolist() == [2] * 5
    probs = torch.softmax(model(x).detach(), dim=1)[:, 2]
    torch.testing.assert_close(comp.probability, probs)
    t = comp.target
    torch.testing.assert_close(comp["deconvnet"], _captum(Deconvolution, model, x, t))
    torch.testing.assert_close(comp["saliency"], _captum(Saliency, model, x, t, abs=False))
    torch.testing.assert_close(comp["guided_backprop"], _captum(GuidedBackprop, model, x, t))
    ig = _captum(IntegratedGradients, model, x, t, baselines=0.25, n_steps=8)
    torch.testing.assert_close(comp["integrated_gradients"], ig)
    with torch.no_grad():
        occ = Occlusion(model).attribute(
            x, target=t, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), baselines=0.25
        )
    assert comp["occlusion"].dtype == torch.float64  # captum gives float32 here
    torch.testing.assert_close(comp["occlusion"], occ.double(), rtol=1e-5, atol=1e-6)
    # occlusion is the logit drop, by brute force at the first window (only it covers (0, 0))
    covered = x.clone()
    covered[:, :, :4, :4] = 0.25
    drop = (model(x) - model(covered)).detach()[:, 2]
    torch.testing.assert_close(comp["occlusion"][:, 0, 0, 0], drop, rtol=1e-5, atol=1e-6)


def test_compare_methods_default_target_and_subset(net_and_images):
    model, x = net_and_images
    comp = compare_methods(model, x[0], methods=("saliency", "deconvnet"), progress=False)
    assert comp.methods == ("saliency", "deconvnet")
    assert comp.target.tolist() == [int(model(x[:1]).argmax())]
    fig = comparison_figure(comp, class_names=["a", "b", "c", "d"])
    assert len(fig.axes) == 3
    assert [fig.axes[i].get_title() for i in range(3)] == ["input", "saliency", "deconvnet"]


def test_compare_methods_errors(net_and_images):
    model, x = net_and_images
    with pytest.raises(InputError, match="did you mean 'saliency'"):
        compare_methods(model, x, methods=("salency",), progress=False)
    with pytest.raises(InputError, match="out of range"):
        compare_methods(model, x, target=7, progress=False)
    with pytest.raises(InputError, match="2 targets for 5 images"):
        compare_methods(model, x, target=[1, 2], progress=False)
    with pytest.raises(InputError, match="larger than the images"):
        compare_methods(model, x, occlusion_size=20, progress=False)
    with pytest.raises(InputError, match="logits"):
        project_class(nn.Conv2d(3, 2, 3).double(), x)
