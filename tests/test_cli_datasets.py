"""A --data-dir holding several datasets: the CLI picks the obvious one and says so in one line,
and where nothing tells which, the error names the flag that chooses (--dataset NAME)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from deconvviz.base.errors import DataError
from deconvviz.sources.data import choose_dataset
from deconvviz_cli.main import cli


def note(name: str, root: Path, n: int = 3) -> str:
    return f"using dataset {name} from {root} (the folder holds {n}; pass --dataset NAME to choose)"


@pytest.fixture
def root(tmp_path: Path, class_folders, cifar_npz, mnist_idx) -> Path:
    """A folder like ../shared/data: the course variant (1x28x28), CIFAR-10 (npz) and MNIST."""
    data = tmp_path / "data"
    class_folders(data / "cifar10-course", classes=10, train_per_class=4, test_per_class=1, size=28)
    cifar_npz(data / "cifar10" / "cifar10.npz", n_train=40, n_test=10, size=32)
    mnist_idx(data / "MNIST" / "raw", n_train=40, n_test=8)
    return data


def run(*args: object) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_choose_dataset_follows_the_model(root: Path) -> None:
    assert choose_dataset(root, "rnn") == "mnist"
    assert choose_dataset(root, "lenet5") == "cifar10-course"
    assert choose_dataset(root, "lenet5", channels=1, size=28) == "cifar10-course"
    assert choose_dataset(root, "lenet5", channels=3, size=32) == "cifar10"
    assert choose_dataset(root, None, channels=3) == "cifar10"  # only CIFAR-10 is colour
    with pytest.raises(DataError) as info:  # MNIST and the course variant are both 1x28x28
        choose_dataset(root, None, channels=1, size=28)
    msg = str(info.value)
    assert "holds several datasets (cifar10, cifar10-course, mnist)" in msg
    assert msg.endswith("choose one with --dataset NAME") and "name=" not in msg
    assert choose_dataset(root / "MNIST", "lenet5") == "auto"  # one dataset: load_dataset's


def test_train_picks_the_models_dataset_and_says_so(root: Path, tmp_path: Path) -> None:
    common = ["--iterations", 1, "--batch-size", 10, "--no-progress"]
    res = run("train", "lenet5", "--data-dir", root, "--out", tmp_path / "a", *common)
    assert res.exit_code == 0, res.output
    assert res.stderr.strip() == note("cifar10-course", root)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["dataset"] == "cifar10-course"
    assert (config["model"]["in_channels"], config["model"]["image_size"]) == (1, 28)

    res = run(
        "train", "lenet5", "--data-dir", root, "--out", tmp_path / "b", "--in-channels", 3,
        "--image-size", 32, *common,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stderr.strip() == note("cifar10", root)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["dataset"] == "cifar10"

    res = run(  # chosen by the user: nothing to say
        "train", "lenet5", "--data-dir", root, "--dataset", "cifar10-course", "--out",
        tmp_path / "c", *common,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "using dataset" not in res.output

    res = run("train", "rnn", "--data-dir", root, "--out", tmp_path / "r", "--hidden", 4, *common)
    assert res.exit_code == 0, res.output
    assert res.stderr.strip() == note("mnist", root)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["dataset"] == "mnist"


def test_commands_on_a_run_read_the_runs_dataset(root: Path, tmp_path: Path) -> None:
    res = run(
        "train", "lenet5", "--data-dir", root, "--dataset", "cifar10-course", "--out",
        tmp_path / "run", "--iterations", 1, "--batch-size", 10, "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    res = run(
        "reconstruct", "-c", tmp_path / "run", "--data-dir", root, "--layer", "conv1",
        "--channel", 0, "--top", 1, "--out", tmp_path / "rec", "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stderr.strip() == note("cifar10-course", root)
    assert "of 10 images" in res.stdout  # the course variant's test split: 10 x 1 images
    res = run(
        "stats", "--checkpoint", tmp_path / "run", "--data-dir", root, "--out",
        tmp_path / "st", "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stderr.strip() == note("cifar10-course", root)
    assert "on cifar10-course (test, 10 images)" in (tmp_path / "st" / "stats.md").read_text()
    res = run(  # --dataset chooses another (converted to the model's 1x28x28), silently
        "stats", "--checkpoint", tmp_path / "run", "--data-dir", root, "--dataset", "mnist",
        "--out", tmp_path / "st2", "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "using dataset" not in res.output
    assert "on mnist (test, 8 images)" in (tmp_path / "st2" / "stats.md").read_text()


def user_model(tmp_path: Path, channels: int) -> tuple[Path, str]:
    """A user model file and its weights (a bare state dict), for --model."""
    (tmp_path / "usernet.py").write_text(
        "from torch import nn\n"
        "def make():\n"
        f"    return nn.Sequential(nn.Conv2d({channels}, 4, 3, padding=1), nn.ReLU(),\n"
        "                         nn.AdaptiveMaxPool2d(4), nn.Flatten(), nn.Linear(64, 10))\n"
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"usernet_{channels}", tmp_path / "usernet.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    torch.manual_seed(0)
    torch.save(mod.make().state_dict(), tmp_path / "weights.pt")
    return tmp_path / "weights.pt", f"{tmp_path / 'usernet.py'}:make"


def test_a_user_model_gets_the_dataset_its_input_fits(root: Path, tmp_path: Path) -> None:
    weights, factory = user_model(tmp_path, channels=3)
    res = run(
        "reconstruct", "-c", weights, "--model", factory, "--data-dir", root, "--top", 1,
        "--out", tmp_path / "o", "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stderr.strip().splitlines() == [
        note("cifar10", root),
        "weights.pt: a bare state dict, 4 tensors, no prefix stripped",  # the layout found
    ]
    assert "of 10 images" in res.stdout  # CIFAR-10's test split here


def test_where_nothing_tells_the_error_names_the_flag(root: Path, tmp_path: Path) -> None:
    weights, factory = user_model(tmp_path, channels=1)  # MNIST or the course variant?
    base = ["reconstruct", "-c", weights, "--model", factory, "--data-dir", root]
    res = run(*base, "--out", tmp_path / "o", "--no-progress")
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [
        f"Error: {root} holds several datasets (cifar10, cifar10-course, mnist) and the model "
        "does not tell which it goes with; choose one with --dataset NAME"
    ]
    res = run(*base, "--dataset", "mnist", "--top", 1, "--out", tmp_path / "o", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "of 8 images" in res.stdout and "using dataset" not in res.output


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += leaf_commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def test_every_command_with_data_dir_takes_dataset() -> None:
    """The demo is the exception: it reads CIFAR-10 only (the shipped sample or the full set)."""
    with_data_dir = []
    for path in leaf_commands(cli):
        cmd = cli
        for name in path:
            cmd = cmd.commands[name]  # type: ignore[attr-defined]
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        if "--data-dir" in opts and path != ("demo",):
            with_data_dir.append(path)
            dataset = next(p for p in cmd.params if "--dataset" in getattr(p, "opts", []))
            assert dataset.help, f"{' '.join(path)} --dataset has no help"
    assert {("train", "lenet5"), ("train", "rnn"), ("stats",), ("report",)} <= set(with_data_dir)
