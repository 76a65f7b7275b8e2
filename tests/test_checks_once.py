"""Checks once at the door (issue 19): each public entry validates the model, the rule, the
layers and its integer arguments once and hands the resolved values inward.

Every check function is wrapped, in every deconvviz module that imported it, by a counter; a
public call then counts how many times each kind ran. The engine's per-call input checks
(``check_batch`` and ``check_device`` of a batch, ``check_channels`` of a block of seeds) belong
to the engine's own public methods, which a dataset job calls once per block of seeds: they are
counted here only where a call makes one block."""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import deconvviz
from deconvviz.base import checks
from deconvviz.engine import rules

KINDS = {
    "model": checks.check_model,
    "layers": checks.check_layer_calls,
    "layer": checks.check_layer,
    "channels": checks.check_channels,
    "batch": checks.check_batch,
    "device": checks.check_device,
    "rule": rules.get_rule,
    "int": checks.check_positive_int,
}


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[collections.Counter[str]]:
    """Counts each kind of check made by the library (calls inside ``deconvviz.base.checks``
    too)."""
    got: collections.Counter[str] = collections.Counter()

    def counted(kind: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            got[kind] += 1
            return real(*args, **kwargs)

        return wrapper

    for name, module in list(sys.modules.items()):
        if not name.startswith("deconvviz") or module is None:
            continue
        for kind, real in KINDS.items():
            for attr, value in list(vars(module).items()):
                if value is real:
                    monkeypatch.setattr(module, attr, counted(kind, real))
    yield got


def _model() -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU())
        .double()
        .eval()
    )


def _data() -> torch.utils.data.TensorDataset:
    x = torch.rand(6, 1, 16, 16, dtype=torch.float64)
    return torch.utils.data.TensorDataset(x, torch.zeros(6, dtype=torch.long))


def _once(got: collections.Counter[str], *kinds: str) -> None:
    for kind in kinds:
        assert got[kind] == 1, (kind, dict(got))


def test_reconstruct_dataset_checks_each_input_once(counts: collections.Counter[str]) -> None:
    model, ds = _model(), _data()
    deconvviz.reconstruct_dataset(model, ds, ["0", "3"], k=2, batch_size=3, progress=False)
    _once(counts, "model", "rule", "layers")
    assert counts["int"] == 3, dict(counts)  # k, batch_size, max_images: once each
    assert counts["layer"] == 0, dict(counts)


def test_reconstruct_images_checks_each_input_once(counts: collections.Counter[str]) -> None:
    model, x = _model(), torch.rand(2, 1, 16, 16, dtype=torch.float64)
    deconvviz.reconstruct_images(model, x, ["0", "3"], progress=False)
    _once(counts, "model", "rule", "layers")
    assert counts["channels"] <= 2, dict(counts)


def test_scan_checks_each_input_once(counts: collections.Counter[str]) -> None:
    deconvviz.scan(_model(), _data(), ["0", "3"], k=2, batch_size=3, progress=False)
    _once(counts, "model")
    assert counts["rule"] == 0, dict(counts)  # a scan projects nothing: no rule is looked up
    assert counts["int"] == 2, dict(counts)  # k, batch_size
    # each of the 2 batches the loader yields is new input, checked once, and so is the first
    # item, read up front to fail fast on a dataset of the wrong form; the geometry of the two
    # layers is learnt from the first batch without checking it again (4 checks before)
    assert counts["batch"] == counts["device"] == 3, dict(counts)


def test_project_top_checks_each_input_once(counts: collections.Counter[str]) -> None:
    model, ds = _model(), _data()
    top = deconvviz.scan(model, ds, ["3"], k=2, progress=False)["3"]
    counts.clear()
    deconvviz.project_top(model, ds, top, progress=False)
    _once(counts, "model", "rule", "channels", "batch")


def test_project_checks_each_input_once(counts: collections.Counter[str]) -> None:
    model, x = _model(), torch.rand(2, 1, 16, 16, dtype=torch.float64)
    with deconvviz.attach(model) as dn:
        dn.project(x, "3", [0, 1])
        _once(counts, "rule", "channels", "batch", "device")
        acts = dn.layer_output(x, "3")
        known = [float(acts[0, 0, 1, 2]), float(acts[1, 1, 3, 4])]
        for call in (
            lambda: dn.project(x, "3", 1, position=(2, 3)),
            lambda: dn.project_seeds(x, "3", [0, 1], [0, 1]),
            lambda: dn.project_seeds(x, "3", [0, 1], [0, 1], [(1, 2), (3, 4)], values=known),
            lambda: list(dn.project_windows(x, "3", [0, 1], [0, 1])),
            lambda: list(dn.project_windows(x, "0", [1, 0], [2, 3], [(0, 0), (5, 6)])),
        ):
            counts.clear()
            call()
            _once(counts, "channels", "batch", "device")
            assert counts["rule"] == 0, dict(counts)


def test_engine_reads_of_one_layer_check_the_batch_once(
    counts: collections.Counter[str],
) -> None:
    model, x = _model(), torch.rand(2, 1, 16, 16, dtype=torch.float64)
    with deconvviz.attach(model) as dn:
        for call in (
            lambda: dn.layer_output(x, "3"),
            lambda: dn.layer_geometry(x, "3"),
            lambda: dn.receptive_field("3", (1, 16, 16)),
        ):
            counts.clear()
            call()
            _once(counts, "batch", "device")
            assert counts["channels"] == 0, dict(counts)
