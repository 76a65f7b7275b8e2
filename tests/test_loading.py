"""Models by spec, checkpoints in the layouts people have, and input normalisation."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner
from torch import nn

from conftest import write_cifar_npz
from deconvviz import attach
from deconvviz.base.errors import CheckpointError, InputError
from deconvviz.sources.loading import (
    Normalized,
    build_from_spec,
    extract_state_dict,
    load_model,
    parse_model_args,
    parse_normalize,
    strip_prefixes,
)
from deconvviz_cli.main import cli

MODEL_FILE = textwrap.dedent(
    """
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes=10, width=4):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
            self.fc = nn.Linear(2 * width * 4 * 4, num_classes)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(F.relu(self.conv2(x)))
            return self.fc(x.flatten(1))

    def build(num_classes=10, width=4):
        return Net(num_classes, width)
    """
)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "their_net.py"
    path.write_text(MODEL_FILE)
    return path


def _net(model_file: Path, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_from_spec(f"{model_file}:build", kw)


def _layouts(state: dict[str, torch.Tensor]) -> dict[str, object]:
    def pre(p: str) -> dict[str, torch.Tensor]:
        return {p + k: v for k, v in state.items()}

    return {
        "bare": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state},
        "model_state_dict": {"model_state_dict": state, "optimizer_state_dict": {}},
        "net": {"net": state, "acc": 0.9},
        "weights": {"weights": state},
        "module_in_state_dict": {"best_prec1": 91.7, "state_dict": pre("module.")},
        "lightning": {"state_dict": pre("model."), "epoch": 1},
        "compile": pre("_orig_mod."),
        "compile_ddp": pre("_orig_mod.module."),
    }


LAYOUT_WORDS = {
    "bare": ("a bare state dict", []),
    "state_dict": ("under 'state_dict'", []),
    "model": ("under 'model'", []),
    "model_state_dict": ("under 'model_state_dict'", []),
    "net": ("under 'net'", []),
    "weights": ("under 'weights'", []),
    "module_in_state_dict": ("under 'state_dict' (also: best_prec1)", ["'module.'"]),
    "lightning": ("under 'state_dict'", ["'model.' (Lightning)"]),
    "compile": ("a bare state dict", ["'_orig_mod.' (torch.compile)"]),
    "compile_ddp": ("a bare state dict", ["'_orig_mod.'", "then 'module.'"]),
}


@pytest.mark.parametrize("layout", list(LAYOUT_WORDS))
def test_every_checkpoint_layout_loads_the_same_weights(model_file, tmp_path, layout):
    trained = _net(model_file)
    obj = _layouts(trained.state_dict())[layout]
    path = tmp_path / f"{layout}.pt"
    torch.save(obj, path)
    loaded = load_model(model=f"{model_file}:build", checkpoint=path)
    words, stripped = LAYOUT_WORDS[layout]
    assert words in loaded.message and "\n" not in loaded.message
    for s in stripped:
        assert s in loaded.message
    if not stripped:
        assert "no prefix stripped" in loaded.message
    for k, v in trained.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    assert not loaded.model.training


def test_torchvision_pth_with_model_arg(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    loaded = load_model(
        model="torchvision.models:resnet18",
        model_args=["num_classes=10"],
        checkpoint=tmp_path / "resnet18.pth",
    )
    assert "a bare state dict" in loaded.message
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded.model(x), net.eval()(x))
    assert type(build_from_spec("resnet18", {"num_classes": 3})).__name__ == "ResNet"


def test_mismatch_lists_missing_and_unexpected_keys_and_what_to_try(model_file, tmp_path):
    state = {"features.0.weight": torch.zeros(1), "conv1.weight": torch.zeros(4, 3, 3, 3)}
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as info:
        load_model(model=f"{model_file}:build", checkpoint=tmp_path / "w.pt")
    msg = str(info.value)
    assert "missing: conv1.bias, conv2.weight, conv2.bias, fc.weight (+1 more)" in msg
    assert "unexpected: features.0.weight" in msg and "names layers differently" in msg
    torch.save(_net(model_file, num_classes=5).state_dict(), tmp_path / "five.pt")
    with pytest.raises(CheckpointError, match=r"fc.weight \(5, 128\) vs \(10, 128\).*num_classes"):
        load_model(model=f"{model_file}:build", checkpoint=tmp_path / "five.pt")


def test_prefix_kept_when_the_model_itself_has_it():
    state = {"model.0.weight": torch.zeros(1)}
    assert strip_prefixes(state, ["model.0.weight"]) == (state, [])
    assert strip_prefixes(state, ["0.weight"])[1] == ["model."]


def test_pickled_module_refused_unless_trusted(tmp_path):
    torch.save(nn.Sequential(nn.Conv2d(3, 2, 3)), tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="unpickling it would run code.*--trust-checkpoint"):
        load_model(checkpoint=tmp_path / "whole.pt")
    loaded = load_model(checkpoint=tmp_path / "whole.pt", trust_checkpoint=True)
    assert "whole pickled Sequential (trusted)" in loaded.message
    assert isinstance(loaded.model, nn.Sequential)


def test_weights_without_a_model_and_bad_specs(model_file, tmp_path):
    torch.save(_net(model_file).state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="no model to put them in.*--model"):
        load_model(checkpoint=tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"found no weights.*keys: 'epoch'"):
        extract_state_dict({"epoch": 1})
    with pytest.raises(CheckpointError, match="did you mean 'resnet18'"):
        build_from_spec("resnet81")
    with pytest.raises(CheckpointError, match="does not take these arguments"):
        build_from_spec(f"{model_file}:build", {"depth": 3})


def test_timm_missing_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_timm(name, *a, **k):
        if name == "timm":
            raise ImportError("No module named 'timm'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    monkeypatch.delitem(__import__("sys").modules, "timm", raising=False)
    with pytest.raises(CheckpointError, match=r"pip install 'deconvviz\[timm\]'"):
        build_from_spec("timm:resnet18")


def test_parse_model_args_and_normalize():
    assert parse_model_args(["num_classes=10", "aux=false", "name=abc", "s=(1, 2)"]) == {
        "num_classes": 10,
        "aux": False,
        "name": "abc",
        "s": (1, 2),
    }
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_model_args(["oops"])
    assert parse_normalize("0.5,0.25,0.4,0.2") == ((0.5, 0.4), (0.25, 0.2))
    assert parse_normalize("none") is None
    with pytest.raises(InputError, match="pairs"):
        parse_normalize("0.5")
    with pytest.raises(InputError, match="neither a name"):
        parse_normalize("imagenett")


def test_normalized_keeps_names_and_projects_exactly():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    wrapped = Normalized(net, mean, std)
    assert [n for n, _ in wrapped.named_modules()] == [n for n, _ in net.named_modules()]
    assert list(wrapped.state_dict()) == list(net.state_dict())
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    net.double()
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.equal(wrapped(x), net((x - m) / s))
    with attach(wrapped) as dn:
        ours = dn.project(x, "layer2.1", channel=3)
    with attach(net) as dn:
        theirs = dn.project((x - m) / s, "layer2.1", channel=3)
    torch.testing.assert_close(ours, theirs / s, rtol=1e-10, atol=1e-12)
    wrapped.train()
    assert net.training and wrapped.training
    wrapped.eval()
    assert not net.training


COMMANDS = ("reconstruct", "occlude", "stats", "report")


def _run_commands(tmp_path: Path, model_file: Path, ckpt: Path, *opts: str) -> list[str]:
    """reconstruct, occlude, stats and report on one checkpoint; their stderr lines."""
    from PIL import Image

    data = tmp_path / "data"
    if not data.exists():
        write_cifar_npz(data / "cifar10.npz", n_train=8, n_test=12, size=16)
        Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "img.png")
    common = ["--checkpoint", str(ckpt), "--model", f"{model_file}:build"]
    common += ["--model-arg", "num_classes=10", "--image-size", "16", *opts]
    extras = {
        "reconstruct": ["--data-dir", str(data), "--layer", "conv2", "--top", "2"],
        "occlude": ["--image", str(tmp_path / "img.png"), "--size", "4", "--stride", "4"],
        "stats": ["--data-dir", str(data)],
        "report": ["--data-dir", str(data), "--section", "stats", "--section", "reconstructions"],
    }
    said = []
    for name in COMMANDS:
        out = tmp_path / ckpt.stem / name
        res = CliRunner().invoke(
            cli, [name, *common, *extras[name], "--out", str(out), "--no-progress"]
        )
        assert res.exit_code == 0, (name, res.output, res.stderr)
        assert any(out.rglob("*.png")), name
        said.append(res.stderr.strip())
    stats = json.loads((tmp_path / ckpt.stem / "stats" / "stats.json").read_text())
    assert stats["layers"] and all(s["count"] > 0 for s in stats["layers"].values())
    assert (tmp_path / ckpt.stem / "report" / "index.html").is_file()
    return said


def test_every_command_runs_on_a_model_file_and_a_module_prefixed_checkpoint(model_file, tmp_path):
    """The issue's case: the author's model file, a {"state_dict": {"module.": ...}} dict, a
    normalised model, through reconstruct, occlude, stats and report, no user code."""
    from deconvviz.base.images import load_images

    net = _net(model_file).eval()
    ckpt = tmp_path / "net.th"
    prefixed = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"best_prec1": 91.7, "state_dict": prefixed}, ckpt)
    said = _run_commands(tmp_path, model_file, ckpt, "--normalize", "cifar10")
    for line in said:
        assert line.startswith("net.th: a dict with the weights under 'state_dict'")
        assert "stripped 'module.' (DataParallel/DDP)" in line
        assert "inputs normalised with mean (0.4914, 0.4822, 0.4465)" in line
    # the model saw normalised pixels: the occlusion's unoccluded probability, independently
    x = load_images([tmp_path / "img.png"], 3, 16)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    with torch.no_grad():
        p = net((x - mean) / std).softmax(1)
    saved = torch.load(tmp_path / "net" / "occlude" / "occlusion.pt", weights_only=True)
    t = int(saved["target"][0])
    assert t == int(p.argmax())
    torch.testing.assert_close(saved["base_prob"][0], p[0, t], rtol=1e-5, atol=1e-6)
    # the same command with the wrong architecture says what is wrong, in one line
    res = CliRunner().invoke(
        cli,
        ["stats", "--checkpoint", str(ckpt), "--model", "torchvision.models:resnet18"]
        + ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "bad")],
    )
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: the weights in") and res.stderr.count("\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize("layout", [*LAYOUT_WORDS, "pickled"])
def test_every_command_runs_on_every_layout(model_file, tmp_path, layout):
    net = _net(model_file)
    ckpt = tmp_path / f"{layout}.pt"
    opts: list[str] = []
    if layout == "pickled":  # a whole model, saved the way its author imports it
        import importlib
        import sys

        sys.path.insert(0, str(model_file.parent))
        try:
            module = importlib.import_module(model_file.stem)
            torch.save(module.build(), ckpt)
        finally:
            sys.path.remove(str(model_file.parent))
            sys.modules.pop(model_file.stem, None)
        opts = ["--trust-checkpoint"]
        want = "a whole pickled model (trusted unpickling)"
    else:
        torch.save(_layouts(net.state_dict())[layout], ckpt)
        want = LAYOUT_WORDS[layout][0]
    for line in _run_commands(tmp_path, model_file, ckpt, *opts):
        assert want in line


def test_your_model_page_python_blocks_run():
    import re

    page = Path(__file__).resolve().parents[1] / "docs" / "your-model.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    assert blocks
    for i, code in enumerate(blocks):
        exec(compile(code, f"your-model.md[block {i}]", "exec"), {})  # noqa: S102
