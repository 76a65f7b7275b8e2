"""Sweeps: one run per configuration, reports written from the runs, restarts skip or resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

import deconvviz.training.sweep as sweep_mod
from deconvviz.base.errors import CheckpointError
from deconvviz.training.sweep import LENET5_GRID, sweep_lenet5, sweep_rnn

SMALL = dict(per_class=4, batch_size=4, iterations=4, eval_every=2, progress=False)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_lenet5_sweep_writes_one_run_and_one_row_per_configuration(
    tmp_path: Path, class_folders
) -> None:
    class_folders(tmp_path / "data", classes=4, train_per_class=6, test_per_class=3)
    grid = [("adam", 1e-3), ("sgd", 1e-2), ("sgd", 1e4)]
    result = sweep_lenet5(tmp_path / "data", tmp_path / "sw", grid=grid, loss="course", **SMALL)
    names = ["adam-lr1e-03", "sgd-lr1e-02", "sgd-lr1e+04"]
    assert [r["name"] for r in result.rows] == names and list(result.trained) == names
    rows = _csv(result.results_csv)
    assert [r["optimizer"] for r in rows] == ["adam", "sgd", "sgd"]
    assert [float(r["lr"]) for r in rows] == [1e-3, 1e-2, 1e4]
    assert {"final_test_acc", "status", "wall_seconds"} <= set(rows[0])
    for name, row in zip(names, rows, strict=True):
        metrics = json.loads((tmp_path / "sw" / name / "metrics.json").read_text())
        assert row["status"] == metrics["status"]
        if metrics["status"] == "ok":
            assert float(row["final_test_acc"]) == pytest.approx(
                metrics["final_test_acc"], abs=1e-6
            )
        assert float(row["wall_seconds"]) == pytest.approx(metrics["wall_seconds"], rel=1e-5)
    # the huge learning rate with the course's naive loss diverges, and the sweep goes on
    assert rows[2]["status"] == "diverged" and rows[2]["final_test_acc"] == ""
    assert rows[0]["status"] == rows[1]["status"] == "ok"
    md = result.results_md.read_text()
    assert "| adam | 1e-03 |" in md and "diverged at iteration" in md
    assert f"{float(rows[0]['final_test_acc']):.3f}" in md
    assert "500 training images" not in md and "4 training images per class" in md
    assert result.curves_png.read_bytes()[:4] == b"\x89PNG"


def test_restarted_sweep_skips_finished_runs_and_resumes_the_interrupted_one(
    tmp_path: Path, class_folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    class_folders(tmp_path / "data", classes=4, train_per_class=6, test_per_class=3)
    grid = [("adam", 1e-3), ("sgd", 1e-2)]
    reference = sweep_lenet5(tmp_path / "data", tmp_path / "ref", grid=grid, **SMALL)

    real_train = sweep_mod.train

    def interrupted_second(cfg, *args, **kw):
        if cfg.optimizer == "sgd":

            def stop(iteration, model):
                if iteration == 2:
                    raise KeyboardInterrupt

            kw["callbacks"] = [stop]
        return real_train(cfg, *args, **kw)

    monkeypatch.setattr(sweep_mod, "train", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        sweep_lenet5(tmp_path / "data", tmp_path / "sw", grid=grid, **SMALL)
    partial = _csv(tmp_path / "sw" / "results.csv")
    assert [r["name"] for r in partial] == ["adam-lr1e-03"]  # written after the first run
    assert "Not finished yet: sgd-lr1e-02" in (tmp_path / "sw" / "results.md").read_text()

    monkeypatch.setattr(sweep_mod, "train", real_train)
    resumed = sweep_lenet5(tmp_path / "data", tmp_path / "sw", grid=grid, **SMALL)
    assert resumed.trained == ("sgd-lr1e-02",)
    for a, b in zip(resumed.rows, reference.rows, strict=True):
        assert a["final_test_acc"] == b["final_test_acc"]  # resume gives the uninterrupted numbers

    def no_training(*args, **kw):
        raise AssertionError("a finished configuration was trained again")

    monkeypatch.setattr(sweep_mod, "train", no_training)
    again = sweep_lenet5(tmp_path / "data", tmp_path / "sw", grid=grid, **SMALL)
    assert again.trained == () and [r["final_test_acc"] for r in again.rows] == [
        r["final_test_acc"] for r in resumed.rows
    ]
    monkeypatch.setattr(sweep_mod, "train", real_train)
    with pytest.raises(CheckpointError, match="other settings.*another --out"):
        sweep_lenet5(tmp_path / "data", tmp_path / "sw", grid=grid, **{**SMALL, "seed": 9})


def test_rnn_sweep_rows_have_cell_and_hidden(tmp_path: Path, mnist_idx) -> None:
    mnist_idx(tmp_path / "data" / "MNIST" / "raw", n_train=16, n_test=8)
    result = sweep_rnn(
        tmp_path / "data",
        tmp_path / "sw",
        cells=("rnn", "gru"),
        hiddens=(4, 8),
        batch_size=4,
        iterations=2,
        eval_every=1,
        progress=False,
    )
    rows = _csv(result.results_csv)
    assert [(r["cell"], int(r["hidden"])) for r in rows] == [
        ("rnn", 4),
        ("rnn", 8),
        ("gru", 4),
        ("gru", 8),
    ]
    assert all(r["status"] == "ok" and 0 <= float(r["final_test_acc"]) <= 1 for r in rows)
    assert "| gru | 8 |" in result.results_md.read_text()
    cfg = json.loads((tmp_path / "sw" / "gru-8" / "config.json").read_text())
    assert cfg["model"]["cell"] == "gru" and cfg["model"]["init"] == "course"
    assert cfg["batch_size"] == 4 and cfg["dataset"] == "mnist"


def test_defaults_are_the_reports_grids() -> None:
    assert LENET5_GRID == (
        ("adam", 1e-2),
        ("adam", 1e-3),
        ("adam", 1e-4),
        ("sgd", 1e-2),
        ("sgd", 1e-3),
    )
    import inspect

    lenet = inspect.signature(sweep_lenet5).parameters
    assert (
        lenet["per_class"].default,
        lenet["batch_size"].default,
        lenet["iterations"].default,
    ) == (500, 50, 2000)
    rnn = inspect.signature(sweep_rnn).parameters
    assert tuple(rnn["cells"].default) == ("rnn", "lstm", "gru")
    assert tuple(rnn["hiddens"].default) == (64, 256)
    assert (rnn["lr"].default, rnn["batch_size"].default, rnn["iterations"].default) == (
        1e-3,
        128,
        390,
    )
    assert math.isclose(rnn["iterations"].default * rnn["batch_size"].default, 50_000, rel_tol=0.01)
