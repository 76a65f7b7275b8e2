"""The atlas's batched projections (many units' and images' seeds together) equal the same seeds
projected one unit at a time, and ``precision="bf16"`` stays close to float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deconvviz.analyses.scan import project_layer, scan
from deconvviz.analyses.topk import project_top
from deconvviz.base.errors import InputError


def _net(dtype: torch.dtype, last: int = 5) -> nn.Module:
    """Conv/BN/ReLU/pool with a residual-free deep end whose receptive field covers the image."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, last, 3, padding=1),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.1, 0.1)
        model[1].running_var.uniform_(0.5, 1.5)
    return model.to(dtype).eval()


def _data(n: int, dtype: torch.dtype) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, 24, 24, generator=g).to(dtype), torch.arange(n))


@pytest.mark.parametrize("layer", ["0", "4", "8"])  # crops of two sizes; the whole image
def test_batched_projections_equal_per_unit_ones(layer):
    model, data = _net(torch.float64), _data(12, torch.float64)
    top = scan(model, data, [layer], k=4, batch_size=5, progress=False)[layer]
    batched = project_top(model, data, top, progress=False)
    assert batched.reconstructions.abs().sum() > 0
    for c in range(top.channels):
        one = project_top(model, data, top, channels=[c], batch_size=1, progress=False)
        torch.testing.assert_close(
            batched.reconstructions[c], one.reconstructions[0], rtol=1e-10, atol=1e-12
        )
        assert torch.equal(batched.patches[c], one.patches[0])


def test_batches_hold_many_units_and_images(monkeypatch):
    """One call of the engine per batch of seeds, not per unit: the 80 x 4 seeds of a
    whole-image layer over 12 images go to the engine in one call, each image forwarded once."""
    from deconvviz.engine import deconvnet

    model, data = _net(torch.float64, last=80), _data(12, torch.float64)
    top = scan(model, data, ["8"], k=4, progress=False)["8"]
    calls = []
    real = deconvnet.Deconvnet.project_windows

    def spy(self, x, layer, image, *args, **kwargs):
        calls.append((x.shape[0], len(image)))
        return real(self, x, layer, image, *args, **kwargs)

    monkeypatch.setattr(deconvnet.Deconvnet, "project_windows", spy)
    project_top(model, data, top, progress=False)
    assert len(calls) == 1
    images, seeds = calls[0]
    assert seeds == 80 * 4 and images == len(set(top.indices.flatten().tolist()))


def test_bf16_scan_and_projections_are_close_to_float32():
    model, data = _net(torch.float32), _data(24, torch.float32)
    layers = ["4", "8"]
    ref = scan(model, data, layers, k=5, progress=False)
    low = scan(model, data, layers, k=5, progress=False, precision="bf16")
    for layer in layers:
        a, b = ref[layer], low[layer]
        assert b.values.dtype == torch.float32
        scale = a.values.abs().max()
        assert (a.values - b.values).abs().max() <= 0.05 * scale
        # the top-k images mostly agree (bfloat16 may swap near-equal entries)
        agree = sum(
            len(set(a.indices[c].tolist()) & set(b.indices[c].tolist())) for c in range(a.channels)
        )
        assert agree >= 0.8 * a.indices.numel()
        full = project_layer(model, data, a, progress=False)
        half = project_layer(model, data, a, progress=False, precision="bf16")
        err = (full.reconstructions - half.reconstructions).norm()
        assert err <= 0.05 * full.reconstructions.norm()
        assert torch.equal(full.patches, half.patches)


def test_unknown_precision_is_refused():
    model, data = _net(torch.float32), _data(4, torch.float32)
    with pytest.raises(InputError, match="precision must be one of fp32, bf16"):
        scan(model, data, ["4"], k=2, progress=False, precision="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_projections_equal_cpu_ones():
    model, data = _net(torch.float32), _data(12, torch.float32)
    top = scan(model, data, ["4", "8"], k=4, progress=False)
    gpu = model.to("cuda")
    top_gpu = scan(gpu, data, ["4", "8"], k=4, progress=False)
    for layer in ("4", "8"):
        torch.testing.assert_close(top_gpu[layer].values, top[layer].values, rtol=1e-4, atol=1e-5)
        cpu = project_top(_net(torch.float32), data, top[layer], progress=False)
        cuda = project_top(gpu, data, top[layer], progress=False)
        torch.testing.assert_close(cuda.reconstructions, cpu.reconstructions, rtol=1e-4, atol=1e-5)
