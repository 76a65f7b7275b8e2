"""ImageFolder trees and flat folders of images: order, labels, resizing, bad files, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from deconvviz.base.images import load_images
from deconvviz.sources.datasets import SkippedFilesWarning, find_image_folder
from deconvviz_cli.main import cli


def _tree(root: Path) -> dict[str, list[Path]]:
    """val/<cls>/ with JPEG, PNG and WebP files of different sizes, plus one broken file."""
    rng = np.random.default_rng(0)
    made: dict[str, list[Path]] = {}
    for c, cls in enumerate(["zebra", "apple"]):
        folder = root / "val" / cls
        folder.mkdir(parents=True)
        for j, (ext, size) in enumerate([("png", (20, 12)), ("jpg", (16, 16)), ("webp", (9, 30))]):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            path = folder / f"img{j}_{c}.{ext}"
            Image.fromarray(arr).save(path)
            made.setdefault(cls, []).append(path)
    (root / "val" / "zebra" / "broken.jpg").write_bytes(b"not an image at all")
    return made


def test_image_folder_labels_order_resize_and_skipped_files(tmp_path):
    made = _tree(tmp_path)
    with pytest.warns(SkippedFilesWarning, match=r"skipped 1 of 7 files .*zebra/broken.jpg"):
        ds = find_image_folder(tmp_path, "test", channels=3, image_size=8)
    assert ds is not None and ds.name == "imagefolder"
    assert ds.classes == ["apple", "zebra"]  # sorted, as torchvision's ImageFolder numbers them
    assert [p.name for p in ds.files] == sorted(p.name for p in made["apple"]) + sorted(
        p.name for p in made["zebra"]
    )
    assert ds.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert [p.name for p in ds.skipped] == ["broken.jpg"]
    x, y = ds[2]
    assert x.shape == (3, 8, 8) and y == 0
    # the same pixels as the one image loader of every command (centre crop, bicubic)
    torch.testing.assert_close(x, load_images([ds.files[2]], 3, 8)[0])
    # max_images files spread over the listing (apple x3, then zebra's broken.jpg and x3):
    # both classes, not the first class's first files
    some = find_image_folder(tmp_path, "test", channels=1, image_size=8, max_images=3)
    assert some is not None and len(some) == 3 and some[0][0].shape == (1, 8, 8)
    assert some.targets.tolist() == [0, 0, 1]


def test_flat_folder_has_no_labels_and_takes_the_first_images_size(tmp_path):
    for i, size in enumerate([(10, 10), (20, 14)]):
        Image.new("RGB", size, (10 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    ds = find_image_folder(tmp_path)
    assert ds is not None and ds.name == "images" and ds.classes == []
    assert ds.targets.tolist() == [-1, -1]
    assert ds[1][0].shape == (3, 10, 10)
    assert find_image_folder(tmp_path / "nothing") is None


@pytest.mark.filterwarnings("ignore::deconvviz.sources.datasets.SkippedFilesWarning")
def test_reconstruct_and_stats_on_an_image_folder(tmp_path):
    _tree(tmp_path / "data")
    common = ["--model", "torchvision.models:resnet18", "--model-arg", "num_classes=2"]
    common += ["--checkpoint", str(tmp_path / "w.pt"), "--image-size", "32"]
    common += ["--normalize", "imagenet"]
    torch.manual_seed(0)
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "w.pt")
    runner = CliRunner()
    res = runner.invoke(
        cli,
        ["reconstruct", *common, "--data-dir", str(tmp_path / "data"), "--layer", "layer1.0.conv1"]
        + ["--channel", "0", "--top", "2", "--max-images", "4", "--workers", "1"]
        + ["--out", str(tmp_path / "rec"), "--no-progress"],
    )
    assert res.exit_code == 0, res.output
    assert "top-2 of 3 images" in res.stdout  # the broken file among the 4 picked is left out
    assert any((tmp_path / "rec").rglob("*.png"))
    res = runner.invoke(
        cli,
        ["stats", *common, "--data-dir", str(tmp_path / "data"), "--max-images", "5"]
        + ["--layer", "layer1.0.relu", "--out", str(tmp_path / "st"), "--no-progress"],
    )
    assert res.exit_code == 0, res.output
    assert "5 images" in (tmp_path / "st" / "stats.md").read_text()  # 5 spread: none broken
