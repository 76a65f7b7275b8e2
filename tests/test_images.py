"""One image loader (deconvviz.base.images): one policy, and every command feeds the model the same
tensor for the same file."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import pillow_modes
from deconvviz.base.images import fit_image, load_image, load_images
from deconvviz.sources.checkpoint import save_run
from deconvviz.sources.datasets import FolderDataset
from deconvviz.sources.models import LeNet5
from deconvviz_cli.main import cli

_SEEN = 7
"""Exit status of the stand-in computations once they have the input."""


def _photo(path: Path, size: tuple[int, int] = (40, 25)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8), "RGB").save(path)
    return path


def test_load_image_centre_crops_then_resizes_bicubic(tmp_path):
    path = _photo(tmp_path / "wide.png", (20, 50))  # H 20, W 50: the sides are cropped
    with Image.open(path) as im:
        want = im.convert("L").crop((15, 0, 35, 20)).resize((8, 8), Image.Resampling.BICUBIC)
    got = load_image(path, channels=1, size=8)
    assert got.shape == (1, 8, 8) and got.dtype == torch.float32
    torch.testing.assert_close(got[0], torch.from_numpy(np.asarray(want, np.float32) / 255))
    torch.testing.assert_close(load_images([path], 1, 8)[0], got)
    with Image.open(path) as im:
        assert fit_image(im, (20, 50)) is im  # already that size: untouched


def test_a_folder_dataset_reads_items_as_the_loader_does(tmp_path):
    path = _photo(tmp_path / "a.png")
    ds = FolderDataset([path], [0], ["a"], channels=3, image_size=16)
    torch.testing.assert_close(ds[0][0], load_image(path, 3, 16))


def test_occlude_and_reconstruct_feed_the_model_the_same_tensor(tmp_path, monkeypatch):
    # the modules, not the same-named functions deconvviz re-exports
    occlusion_module = importlib.import_module(
        "deconvviz.export.measures"
    )  # where occlude calls it
    reconstruct_module = importlib.import_module("deconvviz.export.reconstructions")
    torch.manual_seed(0)
    model = LeNet5(in_channels=1, image_size=28, init="pytorch")
    run = tmp_path / "run"
    save_run(run, model, {"model": model.config}, {"final_test_acc": 0.1})
    image = _photo(tmp_path / "cat.png", (37, 29))
    seen: dict[str, torch.Tensor] = {}

    def catch(name: str):
        def stand_in(model, x, *args, **kwargs):
            seen[name] = x.detach().cpu().clone()
            raise SystemExit(_SEEN)

        return stand_in

    monkeypatch.setattr(occlusion_module, "occlusion", catch("occlude"))
    monkeypatch.setattr(reconstruct_module, "reconstruct_images", catch("reconstruct"))
    for command in ("occlude", "reconstruct"):
        args = [command, "--checkpoint", str(run), "--image", str(image), "--out", str(tmp_path)]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == _SEEN, (command, res.output)
    assert seen["occlude"].shape == (1, 1, 28, 28)
    torch.testing.assert_close(seen["occlude"], seen["reconstruct"], rtol=0, atol=0)
    torch.testing.assert_close(seen["occlude"], load_images([image], 1, 28), rtol=0, atol=0)


@pytest.mark.parametrize("case", list(pillow_modes.CASES))
def test_every_pillow_mode_is_read_like_the_reference(case, tmp_path):
    mode, make, tol = pillow_modes.CASES[case]
    path, ref = make(tmp_path)
    with Image.open(path) as im:
        assert im.mode == mode  # the case really exercises that mode
    got = load_image(path).double().numpy()
    got = got[0] if got.shape[0] == 1 else got.transpose(1, 2, 0)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol)
    # asked for the other channel count and a size, it still reads the same picture
    want_c = 3 if ref.ndim == 2 else 1
    resized = load_image(path, channels=want_c, size=(ref.shape[0] * 2, ref.shape[1] * 2))
    assert resized.shape[0] == want_c and 0.0 <= float(resized.min()) <= float(resized.max()) <= 1
    grey_ref = ref if ref.ndim == 2 else ref @ np.array([0.299, 0.587, 0.114])
    assert float(resized.double().mean()) == pytest.approx(float(grey_ref.mean()), abs=0.03)
