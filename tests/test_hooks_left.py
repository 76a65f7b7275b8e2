"""Every function that looks inside a forward pass leaves the model as it found it.

After a normal call, and after one that fails part-way (the model's forward raises an error or
a KeyboardInterrupt on its first or second pass), no module has a forward, forward-pre or
backward hook left, no global module hook or torch function mode is left, and every module's
``training`` flag is what it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_globals
from torch.utils.data import DataLoader, TensorDataset

import deconvviz
from deconvviz.analyses import (
    FeatureEvolution,
    correspondence,
    invariance,
    randomisation_test,
    sensitivity_check,
)
from deconvviz.sources.models import RNNClassifier
from zoo import CourseLeNet5

SIZE = 12


class _Trap(nn.Module):
    """Identity that raises ``exc`` on its ``at``-th call once armed (0: never)."""

    def __init__(self) -> None:
        super().__init__()
        self.at = 0
        self.calls = 0
        self.exc: type[BaseException] = RuntimeError

    def arm(self, at: int, exc: type[BaseException]) -> None:
        self.at, self.calls, self.exc = at, 0, exc

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == self.at:
            raise self.exc("trap sprung")
        return x


class TrapNet(CourseLeNet5):
    """The course's LeNet5 on 12 x 12 images, with a trap after relu1 (mid-pass)."""

    def __init__(self) -> None:
        super().__init__(in_channels=1, size=SIZE)
        self.trap = _Trap()

    def forward(self, x: Tensor) -> Tensor:
        for name, m in self.named_children():
            if name != "trap":
                x = m(x)
            if name == "relu1":
                x = self.trap(x)
        return x


class TrapRNN(RNNClassifier):
    def __init__(self) -> None:
        super().__init__(hidden=8, input_size=SIZE, num_classes=3)
        self.trap = _Trap()

    def hidden_states(self, x: Tensor) -> Tensor:
        return self.trap(super().hidden_states(x))


def _images(n: int = 4) -> Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _dataset(n: int = 4) -> TensorDataset:
    return TensorDataset(_images(n), torch.arange(n) % 3)


def _flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def _global_hooks() -> int:
    return sum(
        len(getattr(module_globals, name))
        for name in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    )


def _function_modes() -> int:
    return int(torch._C._len_torch_function_stack())


def _project(model: nn.Module) -> None:
    with deconvviz.attach(model) as dn:
        attached = _hooks(model)
        try:
            dn.project(_images(2), layer="conv2", channel=[0, 1])
        finally:
            assert _hooks(model) == attached  # the pass's own hooks are gone while attached


def _project_seeds(model: nn.Module) -> None:
    with deconvviz.attach(model) as dn:
        attached = _hooks(model)
        try:
            dn.project_seeds(_images(2), "conv2", image=[0, 1], channel=[0, 3])
        finally:
            assert _hooks(model) == attached


def _top_and_project(model: nn.Module) -> None:
    top = deconvviz.top_activations(model, DataLoader(_dataset(), 2), "conv2", 2, progress=False)
    deconvviz.project_top(model, _dataset(), top, channels=[0, 1], progress=False)


def _evolution(model: nn.Module) -> None:
    FeatureEvolution(_images(), "conv2", channels=[0, 1], batch_size=2).record(0, model)


CNN_USERS: dict[str, Callable[[nn.Module], Any]] = {
    "project": _project,
    "project_seeds": _project_seeds,
    "layer_output": lambda m: deconvviz.layer_output(m, _images(), "conv2"),
    "top_activations/project_top": _top_and_project,
    "scan": lambda m: deconvviz.scan(
        m, _dataset(), ["conv2", "fc1"], 2, batch_size=2, progress=False
    ),
    "activation_stats": lambda m: deconvviz.activation_stats(
        m, DataLoader(_dataset(), 2), progress=False
    ),
    "activation_stats(layers)": lambda m: deconvviz.activation_stats(
        m, DataLoader(_dataset(), 2), ["conv2", "relu3"], progress=False
    ),
    "occlusion": lambda m: deconvviz.occlusion(
        m, _images(2), size=6, stride=6, layer="conv2", batch_size=3, progress=False
    ),
    "randomisation_test": lambda m: randomisation_test(
        m, _images(2), "conv2", 0, layers=["conv1"], progress=False
    ),
    "sensitivity_check": lambda m: sensitivity_check(
        m, _images(2), "conv2", [0, 1], progress=False
    ),
    "invariance": lambda m: invariance(
        m, _images(), [0, 1, 2, 0], "translate", [0.0, 2.0], ["conv2"], batch_size=2, progress=False
    ),
    "correspondence": lambda m: correspondence(
        m, _images(), [2, 2, 6, 6], ["conv2"], n_random=2, batch_size=2, progress=False
    ),
    "evolution": _evolution,
    "compare_methods": lambda m: deconvviz.compare_methods(
        m,
        _images(2),
        methods=("deconvnet", "saliency", "occlusion"),
        occlusion_size=6,
        occlusion_stride=6,
        progress=False,
    ),
}


def _check_clean(model: nn.Module, flags: list[bool]) -> None:
    assert _hooks(model) == 0, "a module hook was left on the model"
    assert _global_hooks() == 0, "a global module hook was left"
    assert _function_modes() == 0, "a torch function mode was left entered"
    assert _flags(model) == flags, "training flags were not restored"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("user", list(CNN_USERS))
@pytest.mark.parametrize(
    "fail",
    [None, (1, RuntimeError), (2, RuntimeError), (1, KeyboardInterrupt), (2, KeyboardInterrupt)],
)
def test_no_hook_left(user: str, fail: tuple[int, type[BaseException]] | None) -> None:
    torch.manual_seed(0)
    model = TrapNet().train()
    model.relu2.eval()  # a mixed state, restored as it was
    flags = _flags(model)
    assert _global_hooks() == 0 and _function_modes() == 0
    if fail is None:
        CNN_USERS[user](model)
    else:
        model.trap.arm(*fail)
        with pytest.raises(BaseException) as info:
            CNN_USERS[user](model)
            if model.trap.calls < fail[0]:  # it ran the model fewer times: nothing to fail
                raise fail[1]("trap sprung")
        assert "trap sprung" in str(info.value) or isinstance(info.value, deconvviz.DeconvvizError)
    _check_clean(model, flags)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    "fail", [None, (1, RuntimeError), (2, RuntimeError), (2, KeyboardInterrupt)]
)
def test_hidden_state_stats_leaves_nothing(fail: tuple[int, type[BaseException]] | None) -> None:
    model = TrapRNN().train()
    flags = _flags(model)
    loader = [torch.rand(2, 1, SIZE, SIZE) for _ in range(3)]
    if fail is None:
        deconvviz.hidden_state_stats(model, loader, progress=False)
    else:
        model.trap.arm(*fail)
        with pytest.raises(fail[1], match="trap sprung"):
            deconvviz.hidden_state_stats(model, loader, progress=False)
    _check_clean(model, flags)


def test_a_bad_argument_found_mid_pass_leaves_nothing() -> None:
    # images that change size within the dataset: found on the second batch of the scan
    model = TrapNet().train()
    flags = _flags(model)
    data = [_images(2), torch.rand(2, 1, SIZE + 4, SIZE + 4)]
    with pytest.raises(deconvviz.DeconvvizError, match="change size"):
        deconvviz.scan(model, data, ["conv2"], 2, progress=False)
    _check_clean(model, flags)
    # a target class the model does not have: found once the first batch's logits are known
    with pytest.raises(deconvviz.DeconvvizError, match="out of range"):
        deconvviz.occlusion(model, _images(2), 99, 6, 6, layer="conv2", progress=False)
    _check_clean(model, flags)
