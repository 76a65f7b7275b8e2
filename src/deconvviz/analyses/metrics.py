"""Similarity measures used by the analyses, written in torch: ranks, Spearman, SSIM, sign flips.

Every function works on batches (leading dimensions are independent items) and computes in
float64. They are tested against ``scipy.stats`` and hand-computed cases.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from deconvviz.base.errors import InputError

__all__ = ["rankdata", "spearman", "ssim", "sign_disagreement"]


def rankdata(x: Tensor) -> Tensor:
    """Ranks along the last dimension, 1-based, ties sharing their average rank.

    The same convention as ``scipy.stats.rankdata(method="average")``.

    Args:
        x: ``[..., D]`` values.

    Returns:
        ``[..., D]`` float64 ranks.

    Example:
        >>> rankdata(torch.tensor([10.0, 20.0, 10.0, 5.0]))
        tensor([2.5000, 4.0000, 2.5000, 1.0000], dtype=torch.float64)
    """
    if x.dim() == 0:
        raise InputError("rankdata needs at least one dimension")
    flat = x.detach().reshape(-1, x.shape[-1]).double()
    rows, d = flat.shape
    out = torch.empty_like(flat)
    if d == 0:
        return out.reshape(x.shape)
    values, order = flat.sort(dim=1, stable=True)
    # a new tie group starts where the sorted value changes (and at the start of each row)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = starts.long().cumsum(dim=1) - 1  # group id within the row, 0-based
    offset = (torch.arange(rows, device=flat.device) * d).unsqueeze(1)
    gid = (group + offset).flatten()
    pos = torch.arange(1, d + 1, dtype=torch.float64, device=flat.device).repeat(rows)
    n_groups = int(gid.max()) + 1
    total = torch.zeros(n_groups, dtype=torch.float64, device=flat.device).index_add_(0, gid, pos)
    count = torch.zeros(n_groups, dtype=torch.float64, device=flat.device).index_add_(
        0, gid, torch.ones_like(pos)
    )
    avg = (total / count)[gid].view(rows, d)
    out.scatter_(1, order, avg)
    return out.reshape(x.shape)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of ``a`` and ``b`` along their last dimension.

    The Pearson correlation of the average ranks, as ``scipy.stats.spearmanr``. When either
    input is constant the correlation is undefined and the result is NaN.

    Args:
        a: ``[..., D]`` values: the last dimension holds the ``D`` paired observations, every
            leading index is a separate pair of samples (flatten images first).
        b: same shape as ``a``.

    Returns:
        ``[...]`` float64 correlations in [-1, 1] (NaN for constant inputs).

    Example:
        >>> spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0]))
        tensor(0.5000, dtype=torch.float64)
    """
    if a.shape != b.shape:
        raise InputError(f"spearman: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    ra, rb = rankdata(a), rankdata(b)
    ra = ra - ra.mean(dim=-1, keepdim=True)
    rb = rb - rb.mean(dim=-1, keepdim=True)
    num = (ra * rb).sum(dim=-1)
    den = (ra.square().sum(dim=-1) * rb.square().sum(dim=-1)).sqrt()
    nan = torch.full_like(num, math.nan)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), nan).clamp(
        -1.0, 1.0
    )


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    r = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(
    a: Tensor,
    b: Tensor,
    data_range: float = 1.0,
    *,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Mean structural similarity (Wang et al. 2004) of images ``a`` and ``b``.

    Local means, variances and covariance are Gaussian-weighted (``window`` x ``window``,
    ``sigma``), computed only where the window fits inside the image ("valid"), and the SSIM map
    is averaged over those positions: the settings of ``skimage.metrics.structural_similarity``
    with ``gaussian_weights=True, use_sample_covariance=False``. Images smaller than the window
    use the largest odd window that fits.

    Args:
        a: ``[..., H, W]`` images (every leading index is one image).
        b: same shape.
        data_range: the value range of the images (1 for [0, 1], 2 for [-1, 1]).
        window: side of the Gaussian window (odd).
        sigma: its standard deviation in pixels.
        k1: luminance constant, ``C1 = (k1 * data_range) ** 2``.
        k2: contrast constant, ``C2 = (k2 * data_range) ** 2``.

    Returns:
        ``[...]`` float64 mean SSIM; 1 for identical images.

    Example:
        >>> x = torch.rand(2, 16, 16)
        >>> ssim(x, x)
        tensor([1., 1.], dtype=torch.float64)
    """
    if a.shape != b.shape:
        raise InputError(f"ssim: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() < 2:
        raise InputError(f"ssim needs images [..., H, W], got shape {tuple(a.shape)}")
    if not data_range > 0:
        raise InputError(f"ssim: data_range must be positive, got {data_range}")
    lead = a.shape[:-2]
    h, w = a.shape[-2:]
    x = a.detach().reshape(-1, 1, h, w).double()
    y = b.detach().reshape(-1, 1, h, w).double().to(x.device)
    size = min(int(window), h, w)
    if size % 2 == 0:
        size -= 1
    if size < 1:
        raise InputError("ssim: images must be at least 1x1")
    kernel = _gaussian_window(size, sigma, x.device).view(1, 1, size, size)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    return _ssim_map(x, y, kernel, c1, c2).mean(dim=(1, 2, 3)).reshape(lead)


def _ssim_map(x: Tensor, y: Tensor, kernel: Tensor, c1: float, c2: float) -> Tensor:
    """SSIM at every position where ``kernel`` fits, for ``[B, 1, H, W]`` images."""

    def blur(t: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(t, kernel)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return num / den


def sign_disagreement(a: Tensor, b: Tensor) -> Tensor:
    """Fraction of positions where ``sign(a)`` and ``sign(b)`` differ (normalised Hamming distance).

    Signs are -1, 0 or +1, so a zero against a positive value counts as a difference.

    Args:
        a: ``[..., D]`` values.
        b: same shape.

    Returns:
        ``[...]`` float64 fractions in [0, 1].

    Example:
        >>> a, b = torch.tensor([1.0, -2.0, 0.0, 3.0]), torch.tensor([2.0, 1.0, 0.0, 0.0])
        >>> sign_disagreement(a, b)
        tensor(0.5000, dtype=torch.float64)
    """
    if a.shape != b.shape:
        raise InputError(f"sign_disagreement: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    return (torch.sign(a) != torch.sign(b)).double().mean(dim=-1)
