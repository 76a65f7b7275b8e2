"""A small model and dataset shared by the scan tests and their distributed worker."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def scan_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Conv/BN/ReLU/pool net, with one dead channel (all zero: every image ties)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 4, 3, stride=2),
    )
    with torch.no_grad():
        model[4].weight[3].zero_()
        model[4].bias[3] = 0.0
        model[1].running_mean.uniform_(-0.1, 0.1)
        model[1].running_var.uniform_(0.5, 1.5)
    return model.to(dtype).eval()


def scan_data(n: int = 37, dtype: torch.dtype = torch.float32) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 16, 16, generator=g).to(dtype)
    x[5] = x[2]  # two equal images: exact ties between images
    return TensorDataset(x, torch.arange(n))
