"""The tracer owns every hook of a pass and leaves none behind."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deconvviz.base.checks import split_call
from deconvviz.engine.tracer import StopForward, Tracer


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(2, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv(x))))


def test_counts_calls_and_order() -> None:
    model = _Shared()
    seen: list[tuple[str, int]] = []
    tracer = Tracer(model)
    tracer.on_return(lambda name, call, m, a, out: seen.append((name, call)))
    with tracer:
        out = tracer.run(torch.randn(1, 1, 8, 8))
    assert out is not None and out.shape == (1, 2, 4, 4)
    assert seen == [("conv", 0), ("relu", 0), ("conv2", 0), ("relu", 1)]
    assert tracer.counts["relu"] == 2 and tracer.order == ["conv", "relu", "conv2"]
    assert _hooks(model) == 0


def test_stop_after_a_call_and_before_a_layer() -> None:
    model = _Shared()
    tracer = Tracer(model)
    got: dict[str, torch.Tensor] = {}
    tracer.on_call(lambda name, call, m, args: got.__setitem__(f"in:{name}:{call}", args[0]))
    with tracer:
        assert tracer.run(torch.randn(1, 1, 8, 8), stop_after="relu:0") is None
        assert tracer.counts == {"conv": 1, "relu": 1}
        assert tracer.run(torch.randn(1, 1, 8, 8), stop_before="conv2") is None
        assert "conv2" in tracer.counts and got["in:conv2:0"].shape == (1, 2, 6, 6)
    assert _hooks(model) == 0


@pytest.mark.parametrize("where", ["call", "return"])
def test_hooks_removed_when_a_listener_fails(where: str) -> None:
    model = _Shared()
    tracer = Tracer(model)

    def boom(*_: object) -> None:
        raise ValueError("listener failed")

    (tracer.on_call if where == "call" else tracer.on_return)(boom)
    with pytest.raises(ValueError, match="listener failed"), tracer:
        tracer.run(torch.randn(1, 1, 8, 8))
    assert _hooks(model) == 0


def test_training_flags_restored_and_stop_from_listener() -> None:
    model = _Shared().train()
    tracer = Tracer(model)
    flags: list[bool] = []

    def look(name: str, call: int, m: nn.Module, args: tuple) -> None:
        flags.append(m.training)
        if name == "conv2":
            raise StopForward

    tracer.on_call(look)
    with tracer:
        assert tracer.run(torch.randn(1, 1, 8, 8)) is None
    assert flags == [False, False, False] and model.training and model.conv.training
    with pytest.raises(RuntimeError, match="outside"):
        tracer.run(torch.randn(1, 1, 8, 8))


def test_split_call() -> None:
    assert split_call("layer1.0.relu:1") == ("layer1.0.relu", 1)
    assert split_call("features.3") == ("features.3", None)
    assert split_call("a:b") == ("a:b", None)
