"""Spearman, ranks, SSIM and sign disagreement against scipy and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from deconvviz.analyses.metrics import rankdata, sign_disagreement, spearman, ssim
from deconvviz.base.errors import InputError


def test_rankdata_matches_scipy_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (5, 40), generator=g).double()  # many ties
    ours = rankdata(x)
    for row in range(5):
        want = stats.rankdata(x[row].numpy(), method="average")
        np.testing.assert_allclose(ours[row].numpy(), want)


def test_rankdata_hand_case() -> None:
    assert rankdata(torch.tensor([10.0, 20.0, 10.0, 5.0])).tolist() == [2.5, 4.0, 2.5, 1.0]


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_scipy(ties: bool) -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 50, generator=g, dtype=torch.float64)
    b = a + torch.randn(6, 50, generator=g, dtype=torch.float64)
    if ties:
        a, b = a.round(), b.round()
    ours = spearman(a, b)
    for i in range(6):
        want = stats.spearmanr(a[i].numpy(), b[i].numpy()).statistic
        assert ours[i].item() == pytest.approx(want, abs=1e-12)


def test_spearman_hand_cases() -> None:
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0])).item() == 0.5
    x = torch.arange(10.0)
    assert spearman(x, x**3).item() == pytest.approx(1.0)  # monotone, not linear
    assert spearman(x, -torch.exp(x)).item() == pytest.approx(-1.0)
    assert math.isnan(spearman(x, torch.zeros(10)).item())  # constant: undefined


def test_spearman_shape_mismatch() -> None:
    with pytest.raises(InputError, match="shapes differ"):
        spearman(torch.zeros(3), torch.zeros(4))


def _ssim_oracle(
    a: np.ndarray, b: np.ndarray, data_range: float, win: int = 11, sigma: float = 1.5
) -> float:
    """Wang et al. 2004 with scipy's correlate and a window built here; valid region only."""
    r = np.arange(win) - (win - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    pad = (win - 1) // 2

    def f(t: np.ndarray) -> np.ndarray:
        full = ndimage.correlate(t, w, mode="constant")
        return full[pad : t.shape[0] - pad, pad : t.shape[1] - pad]

    mx, my = f(a), f(b)
    vx, vy, cxy = f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def test_ssim_matches_oracle() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.rand(3, 24, 20, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(3, 24, 20, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(3):
        assert ours[i].item() == pytest.approx(
            _ssim_oracle(a[i].numpy(), b[i].numpy(), 1.0), abs=1e-10
        )
    # a signed range
    ours2 = ssim(2 * a - 1, 2 * b - 1, data_range=2.0)
    assert ours2[0].item() == pytest.approx(
        _ssim_oracle(2 * a[0].numpy() - 1, 2 * b[0].numpy() - 1, 2.0), abs=1e-10
    )


def test_ssim_small_images_use_a_smaller_window() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.rand(7, 8, generator=g, dtype=torch.float64)
    b = torch.rand(7, 8, generator=g, dtype=torch.float64)
    assert ssim(a, b).item() == pytest.approx(
        _ssim_oracle(a.numpy(), b.numpy(), 1.0, win=7), abs=1e-10
    )


def test_ssim_hand_cases() -> None:
    x = torch.rand(2, 16, 16, dtype=torch.float64)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    # two constant images: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, 0.7, 0.01**2
    got = ssim(
        torch.full((16, 16), a, dtype=torch.float64), torch.full((16, 16), b, dtype=torch.float64)
    ).item()
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)
    # symmetric, and noise lowers it
    y = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    assert torch.allclose(ssim(x, y), ssim(y, x))
    assert bool((ssim(x, y) < 0.9).all())


def test_ssim_errors() -> None:
    with pytest.raises(InputError, match="shapes differ"):
        ssim(torch.zeros(4, 4), torch.zeros(4, 5))
    with pytest.raises(InputError, match="data_range"):
        ssim(torch.zeros(4, 4), torch.zeros(4, 4), data_range=0)


def test_sign_disagreement_brute_force() -> None:
    g = torch.Generator().manual_seed(4)
    a = torch.randint(-2, 3, (4, 30), generator=g).double()
    b = torch.randint(-2, 3, (4, 30), generator=g).double()
    ours = sign_disagreement(a, b)
    for i in range(4):
        count = sum(
            1
            for u, v in zip(a[i].tolist(), b[i].tolist(), strict=True)
            if (u > 0) - (u < 0) != (v > 0) - (v < 0)
        )
        assert ours[i].item() == pytest.approx(count / 30)
    hand = sign_disagreement(
        torch.tensor([1.0, -2.0, 0.0, 3.0]), torch.tensor([2.0, 1.0, 0.0, 0.0])
    )
    assert hand.item() == 0.5
