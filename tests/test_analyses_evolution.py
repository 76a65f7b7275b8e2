"""Feature evolution: what a record holds (against a brute-force scan and the engine), the
schedule, that the model and training are left alone, and the wiring into ``train``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deconvviz
from deconvviz.analyses import FeatureEvolution
from deconvviz.base.errors import InputError, LayerError


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x)))))
        return self.fc(self.flatten(x))


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Net().double().eval()


def pool(n: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 12, 12, generator=g, dtype=torch.float64)


def test_a_record_is_the_strongest_activation_over_the_pool_and_its_projection() -> None:
    model, x = net(), pool()
    evo = FeatureEvolution(x, "conv2", channels=[0, 3, 5], batch_size=4)
    rec = evo.record(7, model)
    acts = deconvviz.layer_output(model, x, "conv2")  # [N, 6, 6, 6]
    for k, c in enumerate([0, 3, 5]):
        flat = acts[:, c].flatten()
        best = int(flat.argmax())
        img, pos = divmod(best, 36)
        assert rec.values[k].item() == pytest.approx(flat.max().item())
        assert rec.indices[k].item() == img
        assert rec.positions[k].tolist() == [pos // 6, pos % 6]
        with deconvviz.attach(model) as dn:
            full = dn.project(x[img : img + 1], "conv2", c, position=(pos // 6, pos % 6))[0]
        # the record holds the projection cut to the receptive field; nothing is outside it
        assert rec.projections[k].abs().sum().item() == pytest.approx(full.abs().sum().item())
        y0, x0, y1, x1 = rec.boxes[k].tolist()
        assert full[:, :y0].abs().sum() == 0 and full[:, y1:].abs().sum() == 0
        assert full[:, :, :x0].abs().sum() == 0 and full[:, :, x1:].abs().sum() == 0
        assert rec.patches[k].abs().sum().item() == pytest.approx(
            x[img, :, y0:y1, x0:x1].abs().sum().item()
        )
    assert rec.iteration == 7


def test_schedule_and_stacked_result() -> None:
    model, x = net(), pool(6)
    evo = FeatureEvolution(x, "conv1", every=3, iterations=[4])
    for it in range(8):
        evo(it, model)
    res = evo.result()
    assert res.iterations.tolist() == [0, 3, 4, 6]
    assert res.channels == (0, 1, 2, 3)  # default: the first max_channels (8) of 4
    assert res.values.shape == (4, 4) and res.projections.shape[:2] == (4, 4)
    assert torch.equal(res.values[0], res.values[1])  # the same weights: the same record
    info = res.to_dict()
    assert info["iterations"] == [0, 3, 4, 6] and info["layer"] == "conv1"
    every_call = FeatureEvolution(x, "conv1", channels=[1])
    for it in (5, 9):
        every_call(it, model)
    assert [r.iteration for r in every_call.records] == [5, 9]


def test_recording_leaves_model_and_rng_alone() -> None:
    model, x = net().train(), pool(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    FeatureEvolution(x, "conv2").record(0, model)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_errors() -> None:
    model, x = net(), pool(4)
    with pytest.raises(InputError, match="recorded nothing"):
        FeatureEvolution(x, "conv2").result()
    with pytest.raises(InputError, match="out of range"):
        FeatureEvolution(x, "conv2", channels=[6]).record(0, model)
    with pytest.raises(LayerError, match="did you mean 'conv2'"):
        FeatureEvolution(x, "conv3").record(0, model)
    with pytest.raises(InputError, match="every"):
        FeatureEvolution(x, "conv2", every=0)
    with pytest.raises(InputError, match="did you mean 'deconvnet'"):
        FeatureEvolution(x, "conv2", rule="deconv")


def test_training_with_the_callback_is_unchanged_and_features_evolve() -> None:
    from deconvviz.sources.data import ImageDataset
    from deconvviz.training.train import TrainConfig, train

    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (24, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(24) % 4
    ds = ImageDataset(data, labels, [str(i) for i in range(4)])
    cfg = TrainConfig(
        model={"model": "lenet5", "in_channels": 1, "image_size": 8, "num_classes": 4},
        batch_size=6,
        iterations=4,
        eval_every=2,
        lr=1e-2,
    )
    evo = FeatureEvolution(ds, "conv2", channels=[0, 1, 2], pool_size=12)
    with_cb = train(cfg, ds, ds, progress=False, callbacks=[evo])
    without = train(cfg, ds, ds, progress=False)
    a, b = with_cb.model.state_dict(), without.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    res = evo.result()
    assert res.iterations.tolist() == [0, 2, 4]
    assert not torch.allclose(res.projections[0], res.projections[-1])  # the weights moved
