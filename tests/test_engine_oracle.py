"""The engine against the independent oracle (tests/zoo.py), in float64, on every zoo model."""

from __future__ import annotations

import pytest
import torch

import deconvviz
from zoo import CASES, Case, build, layer_value, oracle

RTOL = 1e-6


def _atol(ref: torch.Tensor) -> float:
    return 1e-9 * max(float(ref.abs().max()), 1.0)


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def case_model(request: pytest.FixtureRequest) -> tuple[Case, torch.nn.Module, torch.Tensor]:
    case = request.param
    model, x = build(case)
    return case, model, x


def _channels(out: torch.Tensor) -> list[int]:
    c = out.shape[1]
    return sorted({0, c // 3, c - 1})


def test_strongest_activation_matches_oracle(case_model):
    """Default position: the strongest activation of each channel, per image."""
    case, model, x = case_model
    with deconvviz.attach(model) as dn:
        for layer in case.layers:
            ref_out = layer_value(case, model, x, layer)
            chans = _channels(ref_out)
            rec = dn.project(x, layer, chans)
            assert rec.shape == (x.shape[0], len(chans), *x.shape[1:])
            seeds = []
            for n in range(x.shape[0]):
                for c in chans:
                    if ref_out.dim() == 4:
                        flat = ref_out[n, c].flatten()
                        i = int(flat.argmax())
                        seeds.append((n, c, i // ref_out.shape[-1], i % ref_out.shape[-1]))
                    else:
                        seeds.append((n, c, 0, 0))
            ref = oracle(case, model, x, layer, seeds).view_as(rec)
            assert ref.abs().max() > 0, f"{layer}: the oracle projected nothing; a useless test"
            torch.testing.assert_close(rec, ref, rtol=RTOL, atol=_atol(ref), msg=layer)


@pytest.mark.parametrize("rule", ["deconvnet", "gradient", "guided"])
def test_chosen_positions_and_rules_match_oracle(case_model, rule):
    """Chosen positions, corners included (receptive fields cut by the border)."""
    case, model, x = case_model
    spatial = [layer for layer in case.layers if layer_value(case, model, x[:1], layer).dim() == 4]
    layer = spatial[-1]
    ref_out = layer_value(case, model, x, layer)
    h, w = ref_out.shape[-2:]
    with deconvviz.attach(model, rule=rule) as dn:
        for pos in {(0, 0), (h - 1, w - 1), (h // 2, w // 3)}:
            chans = _channels(ref_out)
            rec = dn.project(x, layer, chans, position=pos)
            seeds = [(n, c, *pos) for n in range(x.shape[0]) for c in chans]
            ref = oracle(case, model, x, layer, seeds, rule=rule).view_as(rec)
            torch.testing.assert_close(rec, ref, rtol=RTOL, atol=_atol(ref), msg=f"{layer}{pos}")


def test_crops_equal_full_image_passes(case_model):
    """The receptive-field crops are an optimisation only: same numbers as full-image passes."""
    case, model, x = case_model
    layer = case.layers[1]
    with deconvviz.attach(model) as fast, deconvviz.attach(model, crop=False) as dense:
        out = fast.layer_output(x, layer)
        chans = list(range(0, out.shape[1], max(1, out.shape[1] // 6)))
        a = fast.project(x, layer, chans)
        b = dense.project(x, layer, chans)
    torch.testing.assert_close(a, b, rtol=RTOL, atol=_atol(b))


def test_float32_agrees_with_float64(case_model):
    case, model, x = case_model
    layer = case.layers[0]
    with deconvviz.attach(model) as dn:
        ref = dn.project(x, layer, [0, 1])
    model32 = build(case)[0].float()
    with deconvviz.attach(model32) as dn:
        rec = dn.project(x.float(), layer, [0, 1])
    assert rec.dtype == torch.float32
    torch.testing.assert_close(rec.double(), ref, rtol=1e-3, atol=1e-5 * float(ref.abs().max()))


def test_gradient_rule_is_the_plain_gradient():
    """With rule='gradient' the projection is autograd's own gradient of the seeded output."""
    case = CASES[0]
    model, x = build(case)
    with deconvviz.attach(model, rule="gradient") as dn:
        rec = dn.project(x, "8", 2, position=(1, 1))
    xi = x.clone().requires_grad_(True)
    out = model[:9](xi)
    seed = torch.zeros_like(out)
    seed[:, 2, 1, 1] = out[:, 2, 1, 1].detach()
    (g,) = torch.autograd.grad(out, xi, seed)
    torch.testing.assert_close(rec, g, rtol=RTOL, atol=1e-12)


def test_seed_keeps_the_activation_value():
    """The paper keeps the activation's value (captum seeds 1): projections scale with it."""
    case = CASES[0]
    model, x = build(case)
    with deconvviz.attach(model) as dn:
        rec = dn.project(x, "12", 3)  # linear layer: the reverse path is linear in the seed
        out = dn.layer_output(x, "12")
    ref = oracle(case, model, x, "12", [(0, 3, 0, 0), (1, 3, 0, 0)])
    assert torch.all(out[:, 3] != 0)
    torch.testing.assert_close(rec, ref, rtol=RTOL, atol=1e-12)
    # the value itself matters: halving the last layer's weights halves seed and projection
    model[12].weight.data *= 0.5
    model[12].bias.data *= 0.5
    with deconvviz.attach(model) as dn:
        rec_half = dn.project(x, "12", 3)
    torch.testing.assert_close(rec_half, rec * 0.25, rtol=1e-9, atol=1e-12)
