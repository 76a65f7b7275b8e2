"""examples/quickstart.ipynb runs top to bottom, offline, and its results display as pictures."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_executes_without_error(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    env_path = os.pathsep.join([str(ROOT / "src"), str(ROOT / "cli")])
    nb.cells.insert(
        0,
        nbformat.v4.new_code_cell(
            f"import sys; sys.path[:0] = {env_path.split(os.pathsep)!r}\n"
            "import matplotlib; matplotlib.use('Agg')"
        ),
    )
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on any error
    pngs = [
        base64.b64decode(out["data"]["image/png"])
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "data" in out and "image/png" in out["data"]
    ]
    # projections, top-k (twice), occlusion (twice), statistics, and the projected image
    assert len(pngs) >= 7
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 1000 for p in pngs)
    html = [
        out["data"]["text/html"]
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if "data" in out and "text/html" in out["data"]
    ]
    assert sum("layer4.1.conv2" in h for h in html) == 1  # the ResNet's layer table


def test_result_objects_display_themselves(quadrant_dataset):
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    import deconvviz

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 4)
    ).eval()
    ds = quadrant_dataset(n_per_class=2, size=8)
    x = torch.stack([ds[i][0] for i in range(2)])
    results = [
        deconvviz.reconstruct_images(model, x, ["0"], progress=False)["0"],
        deconvviz.reconstruct_dataset(model, ds, ["0"], k=2, progress=False)["0"],
        deconvviz.occlusion(model, x, size=4, stride=4, progress=False),
        deconvviz.activation_stats(model, DataLoader(ds, batch_size=4), ["1"], progress=False)["1"],
    ]
    for res in results:
        png = res._repr_png_()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000, type(res).__name__
