"""A new analysis is one module plus one registration: this file is that module.

``channel_means`` (the mean of each channel of one layer over the images) is defined and
registered here, and nothing else in the project is edited: the report writes its section, the
CLI has its command ``deconvviz channel-means`` (options from the registration), and
``run_analysis`` writes its figure and numbers. The means are checked against the layer computed
by hand in float64."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import Tensor, nn

import deconvviz
from deconvviz.analyses.registry import (
    Analysis,
    Option,
    ReportSection,
    analyses,
    get_analysis,
    register_analysis,
    unregister_analysis,
)
from deconvviz.base.errors import InputError
from deconvviz.export.analyses import report_figures, run_analysis
from deconvviz.sources.models import LeNet5

# ---------------------------------------------------------------- the example analysis module


@dataclass(frozen=True)
class ChannelMeans:
    layer: str
    means: Tensor  # [C]

    def to_dict(self) -> dict[str, Any]:
        return {"analysis": "channel-means", "layer": self.layer, "means": self.means.tolist()}


def channel_means(
    model: nn.Module, x: Tensor, y: Tensor | None = None, layer: str = "conv1"
) -> ChannelMeans:
    acts = deconvviz.layer_output(model, x, layer)
    return ChannelMeans(layer, acts.double().mean(dim=(0, *range(2, acts.dim()))).cpu())


def channel_means_figure(result: ChannelMeans) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    ax.bar(range(len(result.means)), result.means.numpy())
    ax.set_title(f"mean of each channel of {result.layer}")
    return fig


def _register() -> None:
    register_analysis(
        Analysis(
            name="channel-means",
            result=ChannelMeans,
            compute=channel_means,
            figure=channel_means_figure,
            options=(Option("--layer", str, "conv1", "Layer whose channels to average."),),
            images=3,
            summary=lambda r: f"{len(r.means)} channels of {r.layer}",
            report=(
                ReportSection(
                    "Mean of each channel", "channel_means", lambda i: channel_means(i.model, i.x)
                ),
            ),
            help="Mean of each channel of one layer over the images.",
        )
    )


# ------------------------------------------------------------------------------------- tests


@pytest.fixture
def registered() -> Iterator[None]:
    _register()
    try:
        yield
    finally:
        unregister_analysis("channel-means")  # the other tests see the shipped ones only


def _oracle(model: LeNet5, x: Tensor) -> np.ndarray:
    """conv1 by hand in float64 (the layer's own weights, no deconvviz code)."""
    conv = model.conv1
    out = torch.nn.functional.conv2d(
        x.double(), conv.weight.double(), conv.bias.double(), conv.stride, conv.padding
    )
    return out.mean(dim=(0, 2, 3)).detach().numpy()


def test_the_shipped_analyses_are_registered_with_their_commands() -> None:
    names = {a.name: a for a in analyses()}
    assert {"invariance", "correspondence", "sanity", "sensitivity"} <= set(names)
    assert all(names[n].command == n for n in ("invariance", "correspondence", "sanity"))
    assert "channel-means" not in names
    with pytest.raises(InputError, match="no analysis named 'nope'"):
        get_analysis("nope")


def test_a_registered_analysis_gets_a_report_section(registered, tmp_path) -> None:
    torch.manual_seed(0)
    lenet = LeNet5(in_channels=1, image_size=8, num_classes=4).eval()
    g = torch.Generator().manual_seed(1)
    data = [(torch.rand(1, 8, 8, generator=g), i % 4) for i in range(12)]
    out = report_figures(lenet, data, tmp_path, n_images=3, progress=False)
    assert [p.stem for _, p in out][-1] == "channel_means"  # after the shipped ones
    assert ("Mean of each channel", tmp_path / "channel_means.png") in out
    info = json.loads((tmp_path / "channel_means.json").read_text())
    assert info["dataset_indices"] == [0, 6, 11]
    x = torch.stack([data[i][0] for i in (0, 6, 11)])
    np.testing.assert_allclose(info["means"], _oracle(lenet, x), rtol=1e-5, atol=1e-6)


def test_run_analysis_writes_figure_and_numbers(registered, tmp_path) -> None:
    torch.manual_seed(0)
    lenet = LeNet5(in_channels=1, image_size=8, num_classes=4).eval()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    written = run_analysis("channel-means", lenet, x, None, tmp_path, info={"note": "hi"})
    assert written.line == f"wrote {tmp_path / 'channel-means.png'}: 32 channels of conv1"
    with Image.open(written.paths[0]) as im:
        assert im.format == "PNG"
    info = json.loads((tmp_path / "channel-means.json").read_text())
    assert info["note"] == "hi" and info["layer"] == "conv1"
    np.testing.assert_allclose(info["means"], _oracle(lenet, x), rtol=1e-5, atol=1e-6)


def test_a_registered_analysis_is_a_command(registered, tmp_path) -> None:
    from deconvviz.sources.checkpoint import save_run
    from deconvviz_cli.main import cli

    torch.manual_seed(0)
    lenet = LeNet5(in_channels=1, image_size=8, num_classes=4).eval()
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split in ("Train", "Test"):
        for label in range(4):
            folder = data / split / str(label)
            folder.mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"Image{i:05d}.png")
    run = tmp_path / "run"
    save_run(run, lenet, {"model": lenet.config, "dataset": "cifar10-course"}, {})
    runner = CliRunner()
    helped = runner.invoke(cli, ["channel-means", "--help"], catch_exceptions=False)
    assert helped.exit_code == 0 and "--layer" in helped.output and "Mean of each" in helped.output
    out = tmp_path / "out"
    res = runner.invoke(
        cli,
        ["channel-means", "-c", str(run), "--data-dir", str(data), "--out", str(out),
         "--layer", "conv1", "--index", "0", "--index", "3", "--no-progress"],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines() == [
        f"wrote {out / 'channel-means.png'}: 32 channels of conv1"
    ]
    info = json.loads((out / "channel-means.json").read_text())
    assert info["dataset_indices"] == [0, 3] and info["checkpoint"] == str(run)
    assert len(info["means"]) == lenet.conv1.out_channels == 32
