"""Sanity checks: the model-randomisation test (Adebayo et al.) and the class/channel
sensitivity check (Mahendran & Vedaldi)."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from torch import nn

import deconvviz
from deconvviz.analyses import SanityResult, randomisation_test, sensitivity_check
from deconvviz.base.errors import InputError, LayerError


class Net(nn.Module):
    def __init__(self, side: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(8 * (side // 4) ** 2, 16)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


def deep_net(seed: int, depth: int = 4, width: int = 16, side: int = 16) -> nn.Module:
    """A deeper random CNN: conv+ReLU blocks, a 2x2 max-pool after every second one, a linear
    classifier over 10 classes."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c = 1
    for i in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
        c = width
    layers += [nn.Flatten(), nn.Linear(width * (side >> (depth // 2)) ** 2, 10)]
    return nn.Sequential(*layers).double().eval()


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Net().double().eval()


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------ randomisation


def test_trained_step_is_the_plain_projection_and_scores_one() -> None:
    model, x = net(), images(2)
    res = randomisation_test(model, x, progress=False)
    assert isinstance(res, SanityResult)
    assert res.layer == "fc2"  # the output layer by default
    assert res.steps == ("trained", "fc2", "fc1", "conv2", "conv1")  # top down
    with torch.no_grad():
        predicted = model(x).argmax(1)
    assert torch.equal(res.channels, predicted)
    for r, rule in enumerate(res.rules):
        with deconvviz.attach(model, rule=rule) as dn:
            for i in range(2):
                want = dn.project(x[i : i + 1], "fc2", int(predicted[i]))[0]
                assert torch.allclose(res.projections[r, 0, i], want)
    assert torch.allclose(res.spearman[:, 0], torch.ones(3, 2, dtype=torch.float64))
    assert torch.allclose(res.ssim[:, 0], torch.ones(3, 2, dtype=torch.float64))


def test_randomised_model_gives_low_correlation_for_gradients() -> None:
    model, x = net(), images(4)
    res = randomisation_test(model, x, progress=False)
    summary = res.summary()
    # Spearman computed here with scipy on the stored projections agrees
    for r in range(len(res.rules)):
        for s in (1, len(res.steps) - 1):
            a = res.projections[r, s, 0].abs().sum(0).flatten().numpy()
            b = res.projections[r, 0, 0].abs().sum(0).flatten().numpy()
            assert res.spearman[r, s, 0].item() == pytest.approx(stats.spearmanr(a, b).statistic)
    for rule in res.rules:
        rho = summary[rule]["spearman"]
        assert rho[0] == pytest.approx(1.0)
        assert all(v < 0.9 for v in rho[1:]), rule  # every randomisation changes the picture
        assert rho[-1] < 0.3, rule  # a fully random model's pictures share little with it
        assert summary[rule]["ssim"][-1] < 0.5, rule


def test_the_users_model_and_the_global_rng_are_untouched() -> None:
    model, x = net(), images(2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    kw = {"rules": ["gradient"], "layers": ["fc2", "conv2"], "progress": False}
    a = randomisation_test(model, x, seed=5, **kw)
    assert a.steps == ("trained", "fc2", "conv2")
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())
    b = randomisation_test(model, x, seed=5, **kw)
    c = randomisation_test(model, x, seed=6, **kw)
    assert torch.equal(a.projections, b.projections)
    assert not torch.equal(a.projections[:, 1:], c.projections[:, 1:])


def test_layers_above_the_projected_one_are_not_randomised() -> None:
    model, x = net(), images(2)
    res = randomisation_test(model, x, "conv2", 3, ["deconvnet"], progress=False)
    assert res.steps == ("trained", "conv2", "conv1")
    assert res.channels.tolist() == [3, 3]
    with pytest.raises(LayerError, match="does not feed 'conv2'"):
        randomisation_test(model, x, "conv2", 3, layers=["fc1"], progress=False)


def test_independent_mode_randomises_one_layer_at_a_time() -> None:
    model, x = net(), images(2)
    casc = randomisation_test(model, x, rules=["gradient"], mode="cascade", seed=0, progress=False)
    ind = randomisation_test(
        model, x, rules=["gradient"], mode="independent", seed=0, progress=False
    )
    assert ind.steps == casc.steps and ind.mode == "independent"
    # the first step randomises the same layer with the same noise in both modes
    assert torch.allclose(ind.projections[:, 1], casc.projections[:, 1])
    # later steps differ: cascade keeps the upper layers random, independent restores them
    assert not torch.allclose(ind.projections[:, 2], casc.projections[:, 2])


def test_randomisation_errors() -> None:
    model, x = net(), images(2)
    with pytest.raises(InputError, match="did you mean 'guided'"):
        randomisation_test(model, x, rules=["guide"], progress=False)
    with pytest.raises(InputError, match="cascade"):
        randomisation_test(model, x, mode="bottom-up", progress=False)
    with pytest.raises(InputError, match="out of range"):
        randomisation_test(model, x, "fc2", 7, progress=False)


# ------------------------------------------------------------------ sensitivity


@pytest.mark.parametrize("seed", [0, 1])
def test_deconvnet_projections_are_less_class_sensitive_than_gradients(seed: int) -> None:
    # Mahendran & Vedaldi: deconvnet pictures of different classes look alike (rectified
    # backward signals and the switches dominate), gradients stay class specific.
    model = deep_net(seed)
    res = sensitivity_check(model, images(2, seed), max_channels=5, progress=False)
    assert res.layer == "11" and res.channels == tuple(range(5))  # the Linear, last module
    sim = dict(zip(res.rules, res.mean_similarity.tolist(), strict=True))
    assert sim["deconvnet"] > sim["gradient"] + 0.1
    assert sim["guided"] > sim["gradient"] + 0.1


def test_sensitivity_matrix_against_scipy_and_the_engine() -> None:
    model, x = net(), images(2)
    res = sensitivity_check(model, x, "fc2", [0, 2, 4], ["deconvnet", "gradient"], progress=False)
    assert res.spearman.shape == (2, 2, 3, 3)
    assert torch.allclose(res.spearman, res.spearman.transpose(-1, -2))
    assert torch.allclose(res.ssim, res.ssim.transpose(-1, -2))
    diag = res.spearman.diagonal(dim1=-2, dim2=-1)
    assert torch.allclose(diag, torch.ones_like(diag))
    with deconvviz.attach(model, rule="gradient") as dn:
        rec = dn.project(x, "fc2", [0, 2, 4])
    assert torch.allclose(res.projections[1], rec)
    a = rec[1, 0].abs().sum(0).flatten().numpy()
    b = rec[1, 2].abs().sum(0).flatten().numpy()
    assert res.spearman[1, 1, 0, 2].item() == pytest.approx(stats.spearmanr(a, b).statistic)


def test_default_channels_of_a_conv_layer_are_the_most_active() -> None:
    model, x = net(), images(3)
    res = sensitivity_check(model, x, "conv2", rules=["deconvnet"], max_channels=3, progress=False)
    acts = deconvviz.layer_output(model, x, "conv2")
    peak = acts.flatten(2).amax(2).mean(0)
    assert set(res.channels) == set(peak.topk(3).indices.tolist())
    info = res.to_dict()
    assert set(info["mean_spearman"]) == {"deconvnet"}


def test_sensitivity_errors() -> None:
    model, x = net(), images(2)
    with pytest.raises(InputError, match="at least two channels"):
        sensitivity_check(model, x, "fc2", [1], progress=False)
    with pytest.raises(InputError, match="out of range"):
        sensitivity_check(model, x, "fc2", [1, 9], progress=False)
    with pytest.raises(InputError, match="max_channels"):
        sensitivity_check(model, x, max_channels=1, progress=False)


def test_max_steps_shows_the_full_cascade_at_fewer_steps() -> None:
    model, x = deep_net(3, depth=6), images(2, seed=3)
    full = randomisation_test(model, x, rules=["deconvnet", "guided"], progress=False)
    assert len(full.steps) == 1 + 7 and full.randomised == 0  # 6 convs and the classifier
    short = randomisation_test(model, x, rules=["deconvnet", "guided"], progress=False, max_steps=3)
    # every layer is still randomised, in the same order with the same noise: each step shown
    # is the full cascade's step at that layer, exactly
    keep = [0] + [full.steps.index(s) for s in short.steps[1:]]
    assert len(short.steps) == 1 + 3 and short.steps[-1] == full.steps[-1] == "0"
    assert keep == sorted(keep) and short.randomised == 7
    torch.testing.assert_close(short.projections, full.projections[:, keep], rtol=0, atol=0)
    torch.testing.assert_close(short.spearman, full.spearman[:, keep], equal_nan=True)
    assert short.to_dict()["layers_randomised"] == 7 == full.to_dict()["layers_randomised"]
    same = randomisation_test(model, x, rules=["deconvnet"], progress=False, max_steps=7)
    assert same.steps == full.steps and same.randomised == 0  # no bound needed
    with pytest.raises(InputError, match="max_steps"):
        randomisation_test(model, x, progress=False, max_steps=0)
