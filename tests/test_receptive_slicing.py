"""Receptive fields through a strided slice ``x[:, :, ::2, ::2]`` (the CIFAR ResNet's shortcut):
a local, position-independent op, followed like a 1x1 window with stride 2, so the layers after
it keep their fields and their crops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deconvviz
from deconvviz.engine.summary import layer_table
from zoo import SliceResNet

SIZE = 32


def _all_active(model: nn.Module) -> nn.Module:
    """Positive weights and BN: with a positive input every ReLU passes, so the gradient of one
    activation is nonzero exactly on its receptive field (the oracle)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(
                    torch.rand(m.weight.shape, generator=gen, dtype=m.weight.dtype) + 0.1
                )
    return model.double().eval()


def _support(model: nn.Module, layer: str, row: int, col: int) -> tuple[int, int, int, int]:
    x = torch.rand(1, 3, SIZE, SIZE, dtype=torch.float64) + 0.5
    x.requires_grad_(True)
    seen = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, o: seen.update(o=o))
    try:
        model(x)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(seen["o"][0, 0, row, col], x)
    nz = g[0].abs().sum(0).nonzero()
    return (
        int(nz[:, 0].min()),
        int(nz[:, 1].min()),
        int(nz[:, 0].max()) + 1,
        int(nz[:, 1].max()) + 1,
    )


@pytest.mark.parametrize(
    ("layer", "row", "col"),
    [("layer2.1.conv1", 8, 7), ("layer2.1.conv2", 5, 9), ("layer3.0.conv2", 4, 3)],
)
def test_fields_after_a_strided_slice_shortcut_match_the_gradient_support(layer, row, col):
    model = _all_active(SliceResNet())
    rf = deconvviz.receptive_field(model, layer, (3, SIZE, SIZE))
    assert rf is not None, f"{layer}: the slice made the field unknown"
    assert rf.box(row, col) == _support(model, layer, row, col)
    row_ = layer_table(model, (3, SIZE, SIZE)).row(layer)
    assert row_.rf_size == rf.size and row_.rf_stride == rf.jump


def test_crops_after_the_slice_equal_full_images():
    layer, side = "layer3.0.conv2", 64  # after both slices; its field is 33 px
    torch.manual_seed(0)
    model = SliceResNet().double().eval()
    x = torch.rand(2, 3, side, side, dtype=torch.float64)
    with (
        deconvviz.attach(model) as fast,
        deconvviz.attach(model, crop=False) as dense,
    ):
        out = fast.layer_output(x, layer)
        for pos in [(out.shape[-2] // 2, out.shape[-1] // 2 + 1), (1, 0)]:
            fast.crop_log.clear()
            rec = fast.project(x, layer, [0, 3], position=pos)
            ref = dense.project(x, layer, [0, 3], position=pos)
            torch.testing.assert_close(rec, ref, rtol=1e-9, atol=1e-12)
            plan = list(fast.crop_log)
            assert plan and all(how == "crop" and size[0] < side for _, size, _, how in plan), plan


def test_other_slices_stay_unknown():
    class Tail(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x)[:, :, -6::2, :])  # from the end: depends on the size

    rf = deconvviz.receptive_field(Tail(), "b", (3, 16, 16))
    assert rf is None
