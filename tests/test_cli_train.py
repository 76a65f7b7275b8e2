"""The train and sweep commands: thin wrappers that save runs and print one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from deconvviz.sources.checkpoint import load_run
from deconvviz_cli.main import cli

FAST = ["--batch-size", "4", "--iterations", "4", "--eval-every", "2", "--no-progress"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_train_lenet5_infers_the_input_shape_and_saves_a_run(
    runner: CliRunner, tmp_path: Path, class_folders
) -> None:
    class_folders(tmp_path / "data", classes=4)
    out = tmp_path / "run"
    res = runner.invoke(
        cli,
        [
            "train",
            "lenet5",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--per-class",
            "5",
            "--optimizer",
            "sgd",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            *FAST,
        ],
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert (
        len(lines) == 1 and "lenet5 sgd lr=0.05: test accuracy" in lines[0] and str(out) in lines[0]
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == {
        "model": "lenet5",
        "in_channels": 1,
        "image_size": 8,
        "num_classes": 10,
        "init": "course",
    }
    assert (cfg["optimizer"], cfg["lr"], cfg["momentum"], cfg["per_class"]) == ("sgd", 0.05, 0.9, 5)
    assert cfg["dataset"] == "cifar10-course" and cfg["iterations"] == 4
    run = load_run(out)
    assert f"{run.metrics['final_test_acc']:.4f}" in lines[0]


def test_train_rnn_with_cell_and_hidden_then_resume_for_longer(
    runner: CliRunner, tmp_path: Path, mnist_idx
) -> None:
    mnist_idx(tmp_path / "data" / "MNIST" / "raw", n_train=16, n_test=8)
    out = tmp_path / "gru"
    args = [
        "train",
        "rnn",
        "--cell",
        "gru",
        "--hidden",
        "8",
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(out),
        *FAST,
    ]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("gru-8 adam lr=0.001: test accuracy")
    assert load_run(out).config["model"]["cell"] == "gru"
    # the same command again refuses to overwrite
    res = runner.invoke(cli, args)
    assert res.exit_code == 1 and "already holds a run" in res.stderr and "--resume" in res.stderr
    # resume: only --iterations given, everything else comes from the checkpoint
    res = runner.invoke(
        cli,
        [
            "train",
            "rnn",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--resume",
            "--iterations",
            "6",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    run = load_run(out)
    assert (
        run.iteration == 6 and run.config["batch_size"] == 4 and run.config["model"]["hidden"] == 8
    )
    assert [i for i, _ in run.metrics["history"]["test_acc"]] == [0, 2, 4, 6]
    res = runner.invoke(
        cli,
        [
            "train",
            "rnn",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--resume",
            "--hidden",
            "16",
            "--no-progress",
        ],
    )
    assert res.exit_code == 1 and "cannot resume" in res.stderr


def test_errors_are_one_line_with_exit_code_1(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(
        cli, ["train", "lenet5", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), *FAST]
    )
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: no dataset found under") and res.stderr.count("\n") == 1
    res = runner.invoke(
        cli,
        [
            "train",
            "rnn",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--iterations",
            "3",
        ],
    )
    assert res.exit_code == 1 and "not both" in res.stderr
    res = runner.invoke(
        cli,
        ["train", "rnn", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), "--resume"],
    )
    assert res.exit_code == 1 and "nothing to resume" in res.stderr
    assert not (tmp_path / "run").exists()


def test_sweep_lenet5_command_runs_the_given_configurations(
    runner: CliRunner, tmp_path: Path, class_folders
) -> None:
    class_folders(tmp_path / "data", classes=4)
    out = tmp_path / "sweep"
    res = runner.invoke(
        cli,
        [
            "sweep",
            "lenet5",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--config",
            "adam:1e-3",
            "--config",
            "sgd:0.1",
            "--per-class",
            "4",
            *FAST,
        ],
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == (
        f"lenet5 sweep: 2 configurations (2 ok, 0 diverged; 2 trained now); table in "
        f"{out / 'results.md'}"
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "adam-lr1e-03",
        "curves.png",
        "results.csv",
        "results.md",
        "sgd-lr1e-01",
    ]
    res = runner.invoke(
        cli,
        [
            "sweep",
            "lenet5",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--config",
            "adam",
        ],
    )
    assert res.exit_code == 2 and "OPTIMIZER:LR" in res.stderr


def test_sweep_rnn_command(runner: CliRunner, tmp_path: Path, mnist_idx) -> None:
    mnist_idx(tmp_path / "data", n_train=8, n_test=4)
    res = runner.invoke(
        cli,
        [
            "sweep",
            "rnn",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "sw"),
            "--cell",
            "lstm",
            "--hidden",
            "4",
            "--batch-size",
            "4",
            "--iterations",
            "2",
            "--eval-every",
            "1",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "rnn sweep: 1 configurations (1 ok" in res.stdout
    assert (tmp_path / "sw" / "lstm-4" / "checkpoint.pt").is_file()
