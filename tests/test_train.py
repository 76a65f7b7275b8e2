"""Training and checkpoints: determinism, divergence, exact resume, Ctrl-C safety, clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deconvviz.base.errors import CheckpointError, InputError
from deconvviz.sources.checkpoint import load_run, read_checkpoint, resolve_factory
from deconvviz.sources.models import LeNet5
from deconvviz.training.train import History, TrainConfig, course_loss, evaluate, train

TINY = {"model": "lenet5", "image_size": 8, "num_classes": 4}


def _cfg(**kw: object) -> TrainConfig:
    base = dict(model=TINY, optimizer="adam", lr=1e-3, batch_size=8, iterations=20, eval_every=10)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def data(quadrant_dataset):
    return quadrant_dataset(8, seed=0), quadrant_dataset(4, seed=1)


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------ losses


def test_course_loss_equals_cross_entropy_where_it_is_finite() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 5, dtype=torch.float64) * 3
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    # oracle: numpy, -log of the softmax probability of the true class, averaged
    z = logits.numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = -np.log(p[np.arange(6), target.numpy()]).mean()
    assert course_loss(logits, target).item() == pytest.approx(expected, rel=1e-12)
    assert F.cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-12)


def test_course_loss_turns_nan_when_a_probability_underflows() -> None:
    logits = torch.tensor([[0.0, -200.0, 5.0]])  # float32: exp(-205) underflows to 0
    target = torch.tensor([0])
    assert math.isnan(course_loss(logits, target).item())  # 0 * log(0) = 0 * -inf
    assert math.isfinite(F.cross_entropy(logits, target).item())


# ------------------------------------------------------------------------------ training


def test_training_learns_and_records_the_curves(data) -> None:
    train_set, test_set = data
    result = train(_cfg(iterations=30), train_set, test_set, progress=False)
    assert result.status == "ok" and result.iterations == 30
    assert [i for i, _ in result.history.test_acc] == [0, 10, 20, 30]
    assert [i for i, _ in result.history.train_loss] == list(range(1, 31))
    assert result.final_test_acc == result.history.test_acc[-1][1]
    # an independent evaluation of the returned model gives the recorded accuracy
    assert evaluate(result.model, test_set, batch_size=3) == result.final_test_acc
    assert result.final_test_acc >= 0.75  # chance is 0.25
    assert not result.model.training


def test_same_seed_same_numbers_other_seed_other_numbers(data) -> None:
    train_set, test_set = data
    a = train(_cfg(iterations=8), train_set, test_set, progress=False)
    b = train(_cfg(iterations=8), train_set, test_set, progress=False)
    c = train(_cfg(iterations=8, seed=1), train_set, test_set, progress=False)
    assert a.history == b.history and _same_state(a.model, b.model)
    assert a.history.train_loss != c.history.train_loss
    # training does not disturb the caller's random state
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(_cfg(iterations=2), train_set, test_set, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_epochs_are_turned_into_iterations(data) -> None:
    train_set, test_set = data  # 32 images, batch 8: 4 steps per epoch
    cfg = _cfg(epochs=1.5, eval_every=100)
    assert cfg.iterations is None and cfg.total_iterations(len(train_set)) == 6
    result = train(cfg, train_set, test_set, progress=False)
    assert result.iterations == 6 and [i for i, _ in result.history.test_acc] == [0, 6]


def test_nan_loss_stops_the_run_as_diverged(data, tmp_path: Path) -> None:
    train_set, test_set = data
    cfg = _cfg(optimizer="sgd", lr=10.0, loss="course", iterations=12)
    result = train(cfg, train_set, test_set, out_dir=tmp_path / "run", progress=False)
    assert result.status == "diverged"
    assert result.diverged_at is not None and result.diverged_at < 12
    assert (
        math.isnan(result.final_test_acc) and result.last_test_acc == result.history.test_acc[-1][1]
    )
    assert len(result.history.train_loss) == result.diverged_at  # it stopped there
    assert math.isnan(result.history.train_loss[-1][1])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["final_test_acc"] is None
    assert metrics["diverged_at"] == result.diverged_at and metrics["finished"] is True
    # the same settings with the numerically stable loss do not produce NaN
    stable = train(cfg.replace(loss="stable"), train_set, test_set, progress=False)
    assert stable.status == "ok"
    with pytest.raises(CheckpointError, match="diverged.*fresh run"):
        train(
            cfg.replace(iterations=40),
            train_set,
            test_set,
            resume=tmp_path / "run",
            out_dir=tmp_path / "run",
            progress=False,
        )


def test_run_directory_holds_a_safe_checkpoint_that_rebuilds_the_model(
    data, tmp_path: Path
) -> None:
    train_set, test_set = data
    run_dir = tmp_path / "run"
    result = train(_cfg(), train_set, test_set, out_dir=run_dir, progress=False)
    assert {p.name for p in run_dir.iterdir()} == {
        "checkpoint.pt",
        "config.json",
        "metrics.json",
        "curves.png",
    }
    raw = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert {"state_dict", "config", "metrics", "iteration", "optimizer"} <= set(raw)
    assert raw["iteration"] == 20 and raw["config"] == json.loads(
        (run_dir / "config.json").read_text()
    )
    run = load_run(run_dir)
    assert isinstance(run.model, LeNet5) and not run.model.training
    assert _same_state(run.model, result.model)
    assert TrainConfig.from_dict(run.config) == result.config
    assert run.metrics["final_test_acc"] == result.final_test_acc
    assert History.from_dict(run.metrics["history"]) == result.history
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_run(run_dir / "checkpoint.pt").path == run_dir / "checkpoint.pt"


class _StopAt:
    def __init__(self, iteration: int) -> None:
        self.iteration = iteration
        self.seen: list[tuple[int, bool]] = []

    def __call__(self, iteration: int, model: nn.Module) -> None:
        self.seen.append((iteration, model.training))
        torch.rand(5)  # callbacks may use randomness without changing the run
        if iteration == self.iteration:
            raise KeyboardInterrupt


def test_interrupt_keeps_a_valid_checkpoint_and_resume_is_exact(data, tmp_path: Path) -> None:
    train_set, test_set = data
    cfg = _cfg(iterations=30)
    straight = train(cfg, train_set, test_set, progress=False)
    stop = _StopAt(20)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, train_set, test_set, out_dir=tmp_path / "run", progress=False, callbacks=[stop])
    assert stop.seen == [(0, False), (10, False), (20, False)]  # eval points, model in eval mode
    saved = load_run(tmp_path / "run")
    assert saved.iteration == 20 and saved.metrics["finished"] is False
    resumed = train(
        cfg, train_set, test_set, out_dir=tmp_path / "run", progress=False, resume=tmp_path / "run"
    )
    assert resumed.history == straight.history
    assert _same_state(resumed.model, straight.model)
    assert load_run(tmp_path / "run").metrics["finished"] is True


def test_interrupt_while_writing_a_checkpoint_leaves_the_previous_one(
    data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_set, test_set = data
    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj: object, f: object, *args: object, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint at iteration 10
            f.write(b"half a checkpoint")  # type: ignore[attr-defined]
            raise KeyboardInterrupt
        real_save(obj, f, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(), train_set, test_set, out_dir=tmp_path / "run", progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_run(tmp_path / "run").iteration == 0
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")] == []


def test_resume_refuses_other_settings_and_an_existing_run_is_not_overwritten(
    data, tmp_path: Path
) -> None:
    train_set, test_set = data
    run_dir = tmp_path / "run"
    train(_cfg(iterations=10), train_set, test_set, out_dir=run_dir, progress=False)
    with pytest.raises(CheckpointError, match="already holds a run.*--resume"):
        train(_cfg(iterations=10), train_set, test_set, out_dir=run_dir, progress=False)
    with pytest.raises(CheckpointError, match="lr: checkpoint 0.001, now 0.01"):
        train(
            _cfg(lr=1e-2, iterations=20),
            train_set,
            test_set,
            out_dir=run_dir,
            resume=run_dir,
            progress=False,
        )
    longer = train(
        _cfg(iterations=20), train_set, test_set, out_dir=run_dir, resume=run_dir, progress=False
    )
    assert longer.iterations == 20 and len(longer.history.train_loss) == 20
    fresh = train(
        _cfg(iterations=10, seed=5),
        train_set,
        test_set,
        out_dir=run_dir,
        overwrite=True,
        progress=False,
    )
    assert load_run(run_dir).config["seed"] == 5 and fresh.iterations == 10


def test_bad_settings_and_unfit_data_are_input_errors(data, quadrant_dataset) -> None:
    train_set, test_set = data
    with pytest.raises(InputError, match="did you mean 'adam'"):
        _cfg(optimizer="adamw")
    with pytest.raises(InputError, match="lr must be a positive"):
        _cfg(lr=-1.0)
    with pytest.raises(InputError, match="unknown training options"):
        TrainConfig.from_dict({"lr": 0.1, "lerning_rate": 2})
    with pytest.raises(InputError, match="batch_size 64 is larger"):
        train(_cfg(batch_size=64), train_set, test_set, progress=False)
    with pytest.raises(InputError, match="labels 0..3 but the model has 2 classes"):
        train(_cfg(model={**TINY, "num_classes": 2}), train_set, test_set, progress=False)
    with pytest.raises(InputError, match=r"expects images \[N, 1, 12, 12\]"):
        train(_cfg(model={**TINY, "image_size": 12}), train_set, test_set, progress=False)


def test_plain_datasets_without_a_batch_method_work(data) -> None:
    train_set, test_set = data

    class Plain(torch.utils.data.Dataset):
        def __init__(self, inner) -> None:
            self.inner = inner

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, i: int):
            return self.inner[i]

    a = train(_cfg(iterations=5), Plain(train_set), Plain(test_set), progress=False)
    b = train(_cfg(iterations=5), train_set, test_set, progress=False)
    assert a.history == b.history


def test_rnn_trains_through_the_same_loop(mnist_idx, tmp_path: Path) -> None:
    from deconvviz.sources.data import load_dataset

    mnist_idx(tmp_path, n_train=40, n_test=20, size=28)
    tr, te = load_dataset(tmp_path, "mnist"), load_dataset(tmp_path, "mnist", "test")
    cfg = TrainConfig(
        model={"model": "rnn", "cell": "gru", "hidden": 16},
        batch_size=8,
        iterations=8,
        eval_every=4,
        lr=1e-2,
    )
    result = train(cfg, tr, te, out_dir=tmp_path / "run", progress=False)
    assert result.status == "ok" and [i for i, _ in result.history.test_acc] == [0, 4, 8]
    run = load_run(tmp_path / "run")
    x = te.batch(torch.arange(5))[0]
    torch.testing.assert_close(run.model(x), result.model(x))


# ------------------------------------------------------------------------------ checkpoint errors


def test_missing_corrupt_and_wrong_kind_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint.pt in .*deconvviz train"):
        load_run(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path / "gone.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 not a zip archive")
    with pytest.raises(CheckpointError, match=r"junk\.pt is not a PyTorch checkpoint"):
        load_run(junk)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a model checkpoint"):
        load_run(tmp_path / "list.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pt")  # a whole pickled module
    with pytest.raises(CheckpointError, match="weights_only=True.*state_dict"):
        load_run(tmp_path / "pickled.pt")


def test_truncated_checkpoint_is_reported(data, tmp_path: Path) -> None:
    train_set, test_set = data
    train(_cfg(iterations=2), train_set, test_set, out_dir=tmp_path / "run", progress=False)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.*intact copy of the run or train again"):
        load_run(tmp_path / "run")
    with pytest.raises(CheckpointError):
        read_checkpoint(ckpt)


def test_bare_state_dicts_need_a_model_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="--model MODULE:FACTORY .*model_factory= in Python"):
        load_run(tmp_path / "weights.pt")

    def factory() -> nn.Module:
        return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))

    run = load_run(tmp_path / "weights.pt", model_factory=factory)
    assert _same_state(run.model, net) and run.config == {}
    (tmp_path / "usernets.py").write_text(
        "from torch import nn\n"
        "def make():\n    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))\n"
        "def wrong():\n    return nn.Linear(3, 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _same_state(load_run(tmp_path / "weights.pt", "usernets:make").model, net)
    by_file = load_run(tmp_path / "weights.pt", f"{tmp_path / 'usernets.py'}:make")
    assert _same_state(by_file.model, net)
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_run(tmp_path / "weights.pt", "usernets:wrong")
    with pytest.raises(CheckpointError, match="has no callable 'nope'"):
        load_run(tmp_path / "weights.pt", "usernets:nope")
    with pytest.raises(CheckpointError, match="cannot import 'no_such_module_x'"):
        resolve_factory("no_such_module_x:make")
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    assert _same_state(load_run(tmp_path / "wrapped.pt", factory).model, net)
