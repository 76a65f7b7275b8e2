"""Every bad input a new user may try ends in ONE line on stderr, a non-zero exit status (1, or
2 for usage errors), no traceback, and nothing half-written in --out.

Table-driven: each case is a command line (with placeholders for the files made once per
module) and the status it must end with; the checks are the same for all of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from deconvviz.sources.checkpoint import save_run
from deconvviz.sources.models import LeNet5
from deconvviz_cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"model": "lenet5", "in_channels": 3, "image_size": 16, "num_classes": 10}

SHARED_NET = '''
import torch.nn as nn


class Block(nn.Module):
    """Calls one ReLU module twice, as torchvision's ResNet blocks do."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


def make():
    return Block()
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A LeNet5 run (3x16x16), a 12-image CIFAR-10 npz, images, broken files, a model that calls
    one ReLU module twice (with its state dict)."""
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    data = root / "data"
    data.mkdir()
    np.savez_compressed(
        data / "cifar10.npz",
        x_train=rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8),
        y_train=np.arange(10, dtype=np.uint8),
        x_test=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8),
        y_test=(np.arange(12) % 10).astype(np.uint8),
        label_names=np.array([f"c{i}" for i in range(10)]),
    )
    torch.manual_seed(0)
    run = root / "run"
    save_run(
        run,
        LeNet5(in_channels=3, image_size=16, num_classes=10),
        {"model": MODEL, "dataset": "cifar10", "seed": 0},
        {"final_test_acc": 0.1},
    )
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "cat.png")
    (root / "not_image.png").write_text("this is text, not a picture\n")
    (root / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated zip")
    (root / "empty_dir").mkdir()
    (root / "a_file").write_text("x")
    (root / "net.py").write_text(SHARED_NET)
    spec_globals: dict[str, object] = {}
    exec(compile(SHARED_NET, "net.py", "exec"), spec_globals)
    torch.manual_seed(0)
    torch.save(spec_globals["make"]().state_dict(), root / "net.pt")  # type: ignore[operator]
    return {
        "root": root,
        "run": run,
        "data": data,
        "cat": root / "cat.png",
        "net": root / "net.py",
        "netpt": root / "net.pt",
    }


# {out} is a fresh folder that must stay empty; {run}, {data}... are the module's files.
REC = ["reconstruct", "-c", "{run}", "--data-dir", "{data}", "--top", "2"]
OCC = ["occlude", "-c", "{run}", "--image", "{cat}"]
SHARED = ["reconstruct", "-c", "{netpt}", "--model", "{net}:make", "--image", "{cat}"]
ANA = ["-c", "{run}", "--data-dir", "{data}", "--images", "2"]

CASES: list[tuple[str, list[str], int, str]] = [
    # (id, arguments, exit status, a word the one line must contain)
    # --- data
    ("data-dir missing", ["reconstruct", "-c", "{run}", "--data-dir", "{root}/nope"], 1, "nope"),
    (
        "data-dir empty",
        ["reconstruct", "-c", "{run}", "--data-dir", "{root}/empty_dir"],
        1,
        "empty_dir",
    ),
    ("stats data-dir missing", ["stats", "-c", "{run}", "--data-dir", "{root}/nope"], 1, "nope"),
    ("train data-dir missing", ["train", "lenet5", "--data-dir", "{root}/nope"], 1, "nope"),
    (
        "data-dir is a file",
        ["reconstruct", "-c", "{run}", "--data-dir", "{root}/a_file"],
        1,
        "a_file is a file, not a folder: give the folder that holds",
    ),
    (
        "train data-dir is a file",
        ["train", "lenet5", "--data-dir", "{root}/a_file"],
        1,
        "a_file is a file, not a folder: give the folder that holds",
    ),
    ("no data-dir", ["reconstruct", "-c", "{run}"], 1, "--data-dir"),
    ("stats without data-dir", ["stats", "-c", "{run}"], 1, "--data-dir"),
    ("invariance without data-dir", ["invariance", "-c", "{run}"], 1, "--data-dir"),
    # --- checkpoint / model
    ("checkpoint corrupt", [*REC[:1], "-c", "{root}/corrupt.pt", *REC[3:]], 1, "truncated"),
    (
        "checkpoint dir without one",
        [*REC[:1], "-c", "{root}/empty_dir", *REC[3:]],
        1,
        "checkpoint.pt",
    ),
    ("checkpoint missing", [*REC[:1], "-c", "{root}/nope.pt", *REC[3:]], 1, "does not exist"),
    ("checkpoint is not a model", [*OCC[:1], "-c", "{root}/a_file", *OCC[3:]], 1, "a_file"),
    (
        "model factory file missing",
        [*SHARED[:3], "--model", "{root}/nope.py:make", *SHARED[5:]],
        1,
        "nope.py",
    ),
    (
        "model factory not callable",
        [*SHARED[:3], "--model", "{net}:nothing", *SHARED[5:]],
        1,
        "nothing",
    ),
    ("state dict without --model", ["occlude", "-c", "{netpt}", "--image", "{cat}"], 1, "--model"),
    # --- images
    ("image not an image", [*REC, "--image", "{root}/not_image.png"], 1, "not_image.png"),
    ("image missing", [*REC, "--image", "{root}/nope.png"], 1, "nope.png"),
    (
        "occlude image missing",
        ["occlude", "-c", "{run}", "--image", "{root}/nope.png"],
        2,
        "nope.png",
    ),
    (
        "compare too many images",
        ["compare", "-c", "{run}", *["--image", "{cat}"] * 9],
        2,
        "at most 8",
    ),
    # --- layers and channels
    ("unknown layer", [*REC, "--layer", "conv9"], 1, "conv9"),
    ("shared module, plain name", [*SHARED, "--layer", "relu"], 1, "relu:0"),
    ("shared module, call out of range", [*SHARED, "--layer", "relu:5"], 1, "relu:1"),
    ("filters of a non-conv layer", ["filters", "-c", "{run}", "--layer", "fc1"], 1, "Conv2d"),
    ("channel out of range", [*REC, "--layer", "conv1", "--channel", "99"], 1, "99"),
    ("occlude unknown layer", [*OCC, "--layer", "conv9"], 1, "conv9"),
    (
        "stats unknown layer",
        ["stats", "-c", "{run}", "--data-dir", "{data}", "--layer", "x"],
        1,
        "'x'",
    ),
    ("invariance unknown layer", ["invariance", *ANA, "--layer", "conv9"], 1, "conv9"),
    ("sanity unknown layer", ["sanity", *ANA, "--layer", "conv9"], 1, "conv9"),
    # --- sizes, numbers, choices
    ("negative size", [*OCC, "--size", "-1"], 2, "--size"),
    ("zero stride", [*OCC, "--stride", "0"], 2, "--stride"),
    ("occluder bigger than the image", [*OCC, "--size", "40"], 1, "40"),
    ("fill not a number", [*OCC, "--fill", "purple"], 1, "--fill"),
    ("target class out of range", [*OCC, "--target", "99"], 1, "99"),
    ("unknown rule", [*REC, "--rule", "lrp"], 2, "--rule"),
    ("top 0", [*REC, "--top", "0"], 2, "--top"),
    ("iterations 0", ["demo", "--iterations", "0"], 2, "--iterations"),
    (
        "train batch size 0",
        ["train", "lenet5", "--data-dir", "{data}", "--batch-size", "0"],
        2,
        "--batch-size",
    ),
    ("unknown section", ["report", "-c", "{run}", "--section", "filter"], 2, "--section"),
    ("invariance values not numbers", ["invariance", *ANA, "--values", "a,b"], 1, "--values"),
    ("index out of range", ["invariance", *ANA, "--index", "999"], 1, "999"),
    ("box of three numbers", ["correspondence", *ANA, "--box", "1,2,3"], 1, "--box"),
    ("box outside the image", ["correspondence", *ANA, "--box", "0,0,30,3"], 1, "image"),
    ("unknown sanity rule", ["sanity", *ANA, "--rules", "deconvnet,lrp"], 1, "lrp"),
    # --- options and commands
    ("unknown option", [*REC, "--colour", "red"], 2, "--colour"),
    ("unknown command", ["reconstruckt"], 2, "reconstruckt"),
    ("missing --checkpoint", ["reconstruct", "--data-dir", "{data}"], 2, "--checkpoint"),
    # --- devices
    ("device gpu", [*REC, "--device", "gpu"], 2, "cpu"),
    ("device cuda:7", [*REC, "--device", "cuda:7"], 2, "not available"),
    ("device cuda", [*REC, "--device", "cuda"], 2, "not available"),
    (
        "train device cuda:7",
        ["train", "lenet5", "--data-dir", "{data}", "--device", "cuda:7"],
        2,
        "cpu",
    ),
]
NO_OUT = {"unknown command"}  # cases that cannot take --out
NEEDS_NO_GPU = {"device cuda": 1, "device cuda:7": 8, "train device cuda:7": 8}


def _fill(args: list[str], files: dict[str, Path], out: Path) -> list[str]:
    names = {k: str(v) for k, v in files.items()}
    return [a.format(**names, out=out) for a in args]


def _check_one_line(res, code: int, word: str) -> str:
    err = res.stderr
    assert "Traceback" not in err and "Traceback" not in res.stdout, err
    assert res.exit_code == code, (res.exit_code, err, res.stdout)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("Error: "), line
    assert "a bug in deconvviz" not in line, line  # each bad input has its own message
    assert word in line, line
    # the CLI speaks in flags: no Python keyword syntax, no option that does not exist
    assert "--model-factory" not in line, line
    for python in ("model_factory=", "data_dir=", "download=True", "layers=[", "k="):
        if python in line:
            assert f"{python}" in line and "in Python" in line, line
    return line


def _assert_nothing_written(out: Path) -> None:
    if not out.exists():
        return
    left = [p for p in out.rglob("*") if p.is_file()]
    assert left == [], f"files left in --out: {left}"


@pytest.mark.parametrize(("name", "args", "code", "word"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path, name, args, code, word):
    need = NEEDS_NO_GPU.get(name)
    if need is not None and torch.cuda.is_available() and torch.cuda.device_count() >= need:
        pytest.skip("this machine has that GPU")
    out = tmp_path / "out folder"
    argv = _fill(args, files, out)
    if name not in NO_OUT and "--out" not in argv:
        argv += ["--out", str(out)]
    if name not in NO_OUT and argv[0] != "filters":  # filters draws no progress bar
        argv.append("--no-progress")
    res = CliRunner().invoke(cli, argv)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    _check_one_line(res, code, word)
    _assert_nothing_written(out)


@pytest.mark.parametrize(
    ("out", "word"),
    [
        ("/proc/deconvviz-x", "cannot write"),
        ("/sys/deconvviz-x", "cannot write"),
        ("{root}/a_file/sub", "is a file"),
        ("{root}/a_file", "file"),
    ],
)
def test_unwritable_out_is_one_line(files, out, word):
    argv = _fill(OCC, files, Path()) + ["--out", out.format(root=files["root"]), "--no-progress"]
    res = CliRunner().invoke(cli, argv)
    _check_one_line(res, 2, word)
    assert not Path("/proc/deconvviz-x").exists() and not Path("/sys/deconvviz-x").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_out_is_one_line(files, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        argv = _fill(OCC, files, Path()) + ["--out", str(ro / "sub"), "--no-progress"]
        _check_one_line(CliRunner().invoke(cli, argv), 2, "cannot write")
    finally:
        ro.chmod(0o700)


def test_the_library_call_names_of_a_shared_module_work_on_the_cli(files, tmp_path):
    # the library names the two calls of the shared ReLU 'relu:0' and 'relu:1'; the CLI takes them
    argv = _fill(SHARED, files, tmp_path)
    res = CliRunner().invoke(
        cli, [*argv, "--layer", "relu:1", "--layer", "relu:0", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 0, res.output
    assert "layers relu:1, relu:0" in res.stdout
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == [
        "cat_relu_0.png",
        "cat_relu_1.png",
    ]


def test_an_out_folder_made_for_a_failed_command_is_removed_again(files, tmp_path):
    out = tmp_path / "a" / "b"
    res = CliRunner().invoke(cli, [*_fill(REC, files, out), "--layer", "conv9", "--out", str(out)])
    assert res.exit_code == 1 and not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("args", "code", "word"),
    [
        (["occlude", "-c", "{run}", "--image", "{cat}", "--device", "cuda:7"], 2, "cpu"),
        (["reconstruct", "-c", "{root}/corrupt.pt", "--image", "{cat}"], 1, "truncated"),
    ],
)
def test_the_installed_command_runs_as_a_module_with_one_line_errors(
    files, tmp_path, args, code, word
):
    if "cuda:7" in args and torch.cuda.device_count() >= 8:
        pytest.skip("this machine has that GPU")
    argv = _fill(args, files, tmp_path) + ["--out", str(tmp_path / "o")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "cli")])}
    done = subprocess.run(
        [sys.executable, "-m", "deconvviz_cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and word in lines[0], done.stderr
    assert not (tmp_path / "o").exists()


def test_a_run_on_the_shipped_sample_needs_no_data_dir(tmp_path):
    # the same --data-dir on every command: optional wherever the run's data ships with deconvviz
    torch.manual_seed(0)
    run = tmp_path / "demo run"
    model = {"model": "lenet5", "in_channels": 3, "image_size": 32, "num_classes": 10}
    config = {"model": model, "dataset": "cifar10-sample"}
    save_run(run, LeNet5(in_channels=3, image_size=32), config, {})
    out = tmp_path / "out"
    for argv in (
        ["stats", "-c", str(run), "--out", str(out / "s"), "--layer", "conv1"],
        ["invariance", "-c", str(run), "--out", str(out / "i"), "--images", "2", "--values", "0,2"],
    ):
        res = CliRunner().invoke(cli, [*argv, "--no-progress"])
        assert res.exit_code == 0, res.output
    assert "cifar10-sample (test, 100 images)" in (out / "s" / "stats.md").read_text()
    assert (out / "i" / "invariance_translate.png").is_file()


def test_a_missing_device_is_not_called_a_corrupt_checkpoint(files):
    from deconvviz.base.devices import available_devices, resolve_device
    from deconvviz.base.errors import InputError
    from deconvviz.sources.checkpoint import load_run

    have = available_devices()
    assert have[0] == "cpu" and all(d.startswith(("cuda:", "mps")) for d in have[1:])
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 on a CPU box)
    with pytest.raises(InputError, match=f"'{missing}' is not available.*cpu") as info:
        load_run(files["run"], map_location=missing)
    assert "corrupt" not in str(info.value)
    with pytest.raises(InputError, match="not a device name"):
        resolve_device("gpu")
    with pytest.raises(InputError, match="not a device name"):
        resolve_device("auto", auto=False)


# every command that takes --model runs on the model's own initial weights without -c, as
# inspect does; the extra arguments each needs (a command missing here fails the test)
WITHOUT_CHECKPOINT = {
    "reconstruct": ["--data-dir", "{data}", "--top", "2", "--layer", "conv2"],
    "compare": ["--image", "{cat}"],
    "occlude": ["--image", "{cat}"],
    "filters": [],
    "stats": ["--data-dir", "{data}"],
    "report": ["--data-dir", "{data}", "--top", "2", "--section", "stats"],
    "atlas": ["--data-dir", "{data}", "--top", "2"],
    "invariance": ["--data-dir", "{data}", "--images", "1", "--values", "0,2"],
    "correspondence": ["--data-dir", "{data}", "--images", "2"],
    "sanity": ["--data-dir", "{data}", "--images", "1", "--layer", "conv2"],
    "sensitivity": ["--data-dir", "{data}", "--images", "2", "--layer", "conv2"],
    "inspect": [],
    "serve": None,  # serves the shipped network without either; tested in test_serve_cli.py
}


def test_every_command_with_model_takes_it_without_a_checkpoint(files, tmp_path):
    takes = {
        name
        for name, command in cli.commands.items()
        if {"model", "checkpoint"} <= {p.name for p in command.params}
    }
    assert takes == set(WITHOUT_CHECKPOINT)
    for name in sorted(takes):
        assert not next(p for p in cli.commands[name].params if p.name == "checkpoint").required
        extra = WITHOUT_CHECKPOINT[name]
        if extra is None:
            continue
        argv = [name, "--model", "{net}:make", *extra]
        if name != "inspect":
            argv += ["--out", str(tmp_path / name)] + (["--no-progress"] * (name != "filters"))
        res = CliRunner().invoke(cli, _fill(argv, files, tmp_path))
        assert res.exit_code == 0, (name, res.output)
        if name != "inspect":  # says where the weights came from
            assert "random weights (no checkpoint given)" in res.stderr, (name, res.stderr)
            assert any((tmp_path / name).rglob("*.*")), name
        for meta in (tmp_path / name).rglob("*.json"):
            assert '"None' not in meta.read_text(), meta  # no checkpoint is not named "None"
