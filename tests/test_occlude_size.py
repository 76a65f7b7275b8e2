"""``occlude`` feeds the model the size it takes: --image-size, else the model's own, else a
size whose forward pass fits the engine's memory budget (one image loader throughout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import deconvviz.base._util as util
from deconvviz.analyses.occlusion import input_size_within
from deconvviz.sources.checkpoint import save_run
from deconvviz.sources.models import ZFNetCifar
from deconvviz_cli.main import cli

FULLY_CONV = """
from torch import nn


def make():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    )
"""


def _png(path: Path, h: int, w: int) -> Path:
    rng = np.random.default_rng(h * w)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def zf_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zf")
    torch.manual_seed(0)
    net = ZFNetCifar(width=8, hidden=16)
    save_run(root / "run", net, {"model": net.config, "dataset": "cifar10", "seed": 0}, {})
    return root / "run"


def _occlude(args: list[str]) -> tuple[int, str, dict]:
    got = CliRunner().invoke(cli, ["occlude", *args, "--size", "8", "--stride", "8"])
    out = Path(args[args.index("--out") + 1])
    saved = torch.load(out / "occlusion.pt", weights_only=True) if got.exit_code == 0 else {}
    return got.exit_code, got.output, saved


@pytest.mark.parametrize(("side", "given"), [(64, None), (1024, 32), (20, 32), (700, None)])
def test_occlude_feeds_a_model_of_fixed_size_its_size(zf_run, tmp_path, side, given):
    image = _png(tmp_path / "img.png", side, side + side // 3)
    args = ["-c", str(zf_run), "--image", str(image), "--out", str(tmp_path / "o")]
    code, output, saved = _occlude(args + (["--image-size", str(given)] if given else []))
    assert code == 0, output
    assert tuple(saved["image_size"]) == (32, 32)  # the model's, whatever the file's size


def test_occlude_scales_an_image_too_big_for_the_budget(tmp_path, monkeypatch):
    (tmp_path / "net.py").write_text(FULLY_CONV)
    ns: dict = {}
    exec(compile(FULLY_CONV, "net.py", "exec"), ns)
    torch.manual_seed(0)
    model = ns["make"]()
    torch.save(model.state_dict(), tmp_path / "net.pt")
    budget = 2**20  # 1 MiB: a 600x800 image's forward pass (~15 MB) does not fit
    monkeypatch.setattr(util, "DEFAULT_MAX_MEMORY", budget)
    image = _png(tmp_path / "big.png", 600, 800)
    want = input_size_within(model, (600, 800), 3, memory_budget=budget)
    assert want[0] * want[1] < 600 * 800 and abs(want[1] / want[0] - 800 / 600) < 0.05
    args = ["-c", str(tmp_path / "net.pt"), "--model", f"{tmp_path / 'net.py'}:make"]
    args += ["--image", str(image), "--out", str(tmp_path / "o")]
    code, output, saved = _occlude(args)
    assert code == 0, output
    assert tuple(saved["image_size"]) == want
    # with --image-size the user's size wins
    code, output, saved = _occlude([*args, "--image-size", "48"])
    assert code == 0, output
    assert tuple(saved["image_size"]) == (48, 48)


def test_input_size_within_measures_the_forward_pass():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    # per input pixel: 8 channels x 4 bytes, twice (conv, relu), + the whole model's output,
    # + the input 3 times: 8*4*3 + 3*4*3 = 132 bytes
    assert input_size_within(net, (100, 100), 3, memory_budget=132 * 100 * 100) == (100, 100)
    h, w = input_size_within(net, (200, 100), 3, memory_budget=132 * 100 * 50)
    assert (h, w) == (100, 50)
