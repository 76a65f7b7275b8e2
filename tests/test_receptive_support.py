"""Receptive-field boxes are the true support: the pixels an activation really reads, found by
brute force (the gradient of one activation with all-ones weights is nonzero exactly there)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deconvviz


def _ones(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    return model.double()


CASES = {
    # a strided conv that never reads the last pixel, then a padded conv
    "stride-skips-last": (
        nn.Sequential(nn.Conv2d(1, 1, 7, stride=3), nn.Conv2d(1, 1, 3, padding=1)),
        47,
    ),
    # a padded conv whose corner activations read only padding
    "all-padding": (nn.Sequential(nn.Conv2d(1, 1, 3, padding=5)), 20),
    "pool-then-conv": (
        nn.Sequential(
            nn.Conv2d(1, 1, 3, padding=1),
            nn.AvgPool2d(3, 2, padding=1),
            nn.Conv2d(1, 1, 5, stride=2, padding=3),
        ),
        23,
    ),
}


def _true_box(model: nn.Module, size: int, r: int, c: int) -> tuple[int, int, int, int]:
    x = torch.ones(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    out = model(x)
    (g,) = torch.autograd.grad(out[0, 0, r, c], x)
    nz = g[0, 0].abs() > 0
    if not nz.any():
        return (-1, -1, -1, -1)
    rows, cols = nz.any(1).nonzero().flatten(), nz.any(0).nonzero().flatten()
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


@pytest.mark.parametrize("name", list(CASES))
def test_boxes_are_the_true_support(name):
    model, size = CASES[name]
    model = _ones(model)
    layer = str(len(model) - 1)
    rf = deconvviz.receptive_field(model, layer, (1, 1, size, size))
    assert rf is not None
    with torch.no_grad():
        h, w = model(torch.zeros(1, 1, size, size, dtype=torch.float64)).shape[-2:]
    edges_h = sorted({0, 1, h // 2, h - 2, h - 1})  # the borders, where boxes get cut
    edges_w = sorted({0, 1, w // 2, w - 2, w - 1})
    positions = torch.tensor([[r, c] for r in edges_h for c in edges_w])
    boxes = rf.boxes(positions).tolist()
    for (r, c), box in zip(positions.tolist(), boxes, strict=True):
        assert box == list(rf.box(r, c))
        y0, x0, y1, x1 = box
        assert y1 >= y0 and x1 >= x0, (r, c, box)  # never inverted
        want = _true_box(model, size, r, c)
        if want[0] < 0:
            assert y1 == y0 or x1 == x0, (r, c, box)  # reads only padding: empty
        else:
            assert tuple(box) == want, (r, c, box, want)
