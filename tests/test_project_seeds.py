"""Deconvnet.project_seeds: many seeds at once (crops, or one shared forward per image), against
the independent float64 oracle of tests/zoo.py on every zoo model."""

from __future__ import annotations

import pytest
import torch

import deconvviz
from deconvviz.base.errors import InputError
from zoo import CASES, build, layer_value, oracle


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_project_seeds_matches_oracle(case):
    model, x = build(case)
    # uneven seeds per image (3 on image 1, 1 on image 0), a channel repeated on one image
    with deconvviz.attach(model) as dn:
        for layer in (case.layers[0], case.layers[-1], case.layers[len(case.layers) // 2]):
            ref_out = layer_value(case, model, x, layer)
            c = ref_out.shape[1]
            img = [1, 0, 1, 1]
            chan = [c - 1, 0, c // 2, c - 1]
            seeds = []
            for n, ch in zip(img, chan, strict=True):
                if ref_out.dim() == 4:
                    i = int(ref_out[n, ch].flatten().argmax())
                    seeds.append((n, ch, i // ref_out.shape[-1], i % ref_out.shape[-1]))
                else:
                    seeds.append((n, ch, 0, 0))
            ref = oracle(case, model, x, layer, seeds)
            assert ref.abs().max() > 0, layer
            atol = 1e-9 * max(float(ref.abs().max()), 1.0)
            got = dn.project_seeds(x, layer, img, chan)
            torch.testing.assert_close(got, ref, rtol=1e-6, atol=atol, msg=layer)
            if ref_out.dim() == 4:  # chosen positions, not the strongest
                pos = [(0, 0), (ref_out.shape[-2] - 1, 0), (0, ref_out.shape[-1] - 1), (1, 1)]
                pos = [
                    (min(r, ref_out.shape[-2] - 1), min(q, ref_out.shape[-1] - 1)) for r, q in pos
                ]
                seeds = [
                    (n, ch, r, q)
                    for (n, ch), (r, q) in zip(zip(img, chan, strict=True), pos, strict=True)
                ]
                ref = oracle(case, model, x, layer, seeds)
                got = dn.project_seeds(x, layer, img, chan, position=pos)
                atol = 1e-9 * max(float(ref.abs().max()), 1.0)
                torch.testing.assert_close(got, ref, rtol=1e-6, atol=atol, msg=layer)


def test_project_seeds_errors():
    model, x = build(CASES[0])
    with deconvviz.attach(model) as dn:
        with pytest.raises(InputError, match="equally long"):
            dn.project_seeds(x, "4", [0, 1], [0])
        with pytest.raises(InputError, match="image indices"):
            dn.project_seeds(x, "4", [5], [0])
        with pytest.raises(InputError, match="out of range"):
            dn.project_seeds(x, "4", [0], [999])
        with pytest.raises(InputError, match="feature map"):
            dn.project_seeds(x, "4", [0], [0], position=[(99, 0)])
