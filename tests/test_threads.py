"""Several threads projecting on one model at once: each gets its own, right answer."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import deconvviz
from deconvviz.analyses.scan import scan
from deconvviz.engine.tracer import Tracer


class _Net(nn.Module):
    """A shared ReLU module (called twice), BatchNorm and Dropout: a pass in training mode or a
    hook that counts another thread's calls would show."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = self.pool(self.relu(self.bn(self.conv1(x))))
        return self.drop(self.relu(self.conv2(x)))


def _close(a, b) -> None:
    # float kernels split their work by the threads free at the time: last bits may differ
    # (a hook seeing another thread's pass, or a pass in training mode, is far beyond this)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _run_threads(n: int, fn) -> list:
    results: list = [None] * n
    errors: list = []
    barrier = threading.Barrier(n)

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [], errors[:3]
    return results


@pytest.mark.filterwarnings("ignore:the model is in train\\(\\) mode:UserWarning")
def test_threads_projecting_on_one_model_get_what_one_thread_gets():
    torch.manual_seed(0)
    model = _Net()
    model.train()  # the user's flag: each pass must still run in eval mode, and it comes back
    xs = [torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    layers = ["conv1", "relu:0", "conv2", "relu:1"]
    shared = deconvviz.attach(model, warn=False)
    ref = [shared.project(x, layers[i % 4], [0, 3]) for i, x in enumerate(xs)]
    for _ in range(5):
        got = _run_threads(8, lambda i: shared.project(xs[i], layers[i % 4], [0, 3]))
        for i in range(8):
            _close(got[i], ref[i])
        own = _run_threads(
            8, lambda i: deconvviz.attach(model, warn=False).project(xs[i], layers[i % 4], [0, 3])
        )
        for i in range(8):
            _close(own[i], ref[i])
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_threads_scanning_one_model_each_get_the_one_thread_result():
    torch.manual_seed(1)
    model = _Net().eval()
    data = torch.utils.data.TensorDataset(torch.rand(20, 3, 16, 16))
    ref = scan(model, data, ["conv1", "relu:1"], k=3, batch_size=5, progress=False)
    got = _run_threads(
        6, lambda i: scan(model, data, ["conv1", "relu:1"], k=3, batch_size=5, progress=False)
    )
    for res in got:
        for layer in ref.layers:
            _close(res[layer].values, ref[layer].values)
            assert torch.equal(res[layer].indices, ref[layer].indices)


def test_a_tracer_sees_only_the_passes_of_its_own_thread():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU())
    seen: list[str] = []
    tracer = Tracer(model)
    tracer.on_return(lambda name, call, module, args, out: seen.append(name))
    with tracer:
        other = threading.Thread(target=lambda: model(torch.zeros(1, 1, 2, 2)))
        other.start()
        other.join()
        assert seen == []
        tracer.run(torch.zeros(1, 1, 2, 2))
    assert seen == ["0", "1"]
