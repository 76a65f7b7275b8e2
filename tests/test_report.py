"""The HTML report: every section's figures are written and linked, the manifest records the
run, and the page renders in a real browser (headless Chromium) with every image loaded."""

from __future__ import annotations

import dataclasses
import html.parser
import json
import os
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import deconvviz
from browser import CHROMIUM, legibility, run_check
from deconvviz.base.errors import InputError, LayerError
from deconvviz.export.report import SECTIONS, write_report
from deconvviz.export.report_page import MIN_TEXT_PX
from deconvviz.sources.data import ImageDataset


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        for m in self.children():
            x = m(x)
        return x


class TinyRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(16, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def hidden_states(self, x: Tensor) -> Tensor:
        return self.rnn(x[:, 0])[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.hidden_states(x)[:, -1])


def _dataset(channels: int = 3, n: int = 10) -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (n, channels, 16, 16), generator=gen, dtype=torch.uint8)
    return ImageDataset(
        data, torch.arange(n) % 3, ["cat", "dog <b>", "ship"], name="tiny", split="test"
    )


HISTORY = {"train_loss": [[1, 1.1], [2, 1.0], [3, 0.9]], "test_acc": [[0, 0.3], [3, 0.4]]}


class _Images(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.srcs.append(a["src"])  # type: ignore[arg-type]
        if tag == "a" and a.get("href") and not a["href"].startswith("#"):  # type: ignore[union-attr]
            self.links.append(a["href"])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The whole report, written (as ``deconvviz report --out "my report/out"`` would) to a
    *relative* folder whose name has a space; the paths returned are made absolute."""
    torch.manual_seed(0)
    model = TinyCNN().eval()
    base = tmp_path_factory.mktemp("report")
    cwd = os.getcwd()
    os.chdir(base)
    try:
        rep = write_report(
            Path("my report") / "out",
            model,
            _dataset(),
            config={"model": {"model": "tiny"}, "seed": 7, "lr": 0.001},
            metrics={"history": HISTORY, "final_test_acc": 0.4, "status": "ok"},
            k=2,
            images=2,
            occlusion_size=4,
            occlusion_stride=4,
            progress=False,
        )
    finally:
        os.chdir(cwd)
    assert not rep.out_dir.is_absolute()
    return dataclasses.replace(
        rep, out_dir=base / rep.out_dir, index=base / rep.index, manifest=base / rep.manifest
    )


def _referenced(folder: Path) -> list[str]:
    """Every file index.html (img src, a href) and manifest.json (figures) refer to, as paths
    relative to the report folder (URL references unquoted)."""
    parser = _Images()
    parser.feed((folder / "index.html").read_text())
    refs = [urllib.parse.unquote(u) for u in parser.srcs + parser.links]
    manifest = json.loads((folder / "manifest.json").read_text())
    return refs + [f["path"] for f in manifest["figures"]]


def _assert_whole(folder: Path) -> int:
    """Every referenced file exists inside ``folder``; returns how many there are."""
    root = folder.resolve()
    refs = _referenced(folder)
    for ref in refs:
        assert not ref.startswith(("/", "http:", "https:", "file:")), ref
        target = (root / ref).resolve()
        assert target.is_relative_to(root), f"{ref} points outside the report folder"
        assert target.is_file(), f"{ref} is referenced but not in the report folder"
    return len(refs)


@pytest.mark.parametrize(
    "spelling", ["relative", "absolute", "dotdot", "spaces", "relative-dotdot-spaces"]
)
def test_every_reference_is_a_file_inside_the_report_for_any_out(tmp_path, monkeypatch, spelling):
    # relative --out used to give analyses links like figures/analyses/<out>/figures/analyses/...
    import deconvviz.export.analyses

    def quick_report_figures(model, dataset, out_dir, progress=True, layers=None):
        # what the real one does (the module fixture runs it), minus the minutes of analyses:
        # write into out_dir and return the paths as written
        from deconvviz.base._io import save_image

        png = save_image(Path(out_dir) / "invariance_translate.png", Image.new("L", (30, 30)))
        return [("Invariance", png)]

    monkeypatch.setattr(deconvviz.export.analyses, "report_figures", quick_report_figures)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    out = {
        "relative": "rep",
        "absolute": str(tmp_path / "rep"),
        "dotdot": "sub/../rep",
        "spaces": str(tmp_path / "my rep #1"),
        "relative-dotdot-spaces": "sub/../my rep/out 2",
    }[spelling]
    torch.manual_seed(0)
    rep = write_report(
        out,
        TinyCNN().eval(),
        _dataset(n=4),
        k=2,
        images=1,
        sections=["filters", "reconstructions", "analyses"],
        progress=False,
    )
    assert rep.skipped == ()
    folder = tmp_path / out
    assert rep.index.resolve() == (folder / "index.html").resolve()
    sections = {f.section for f in rep.figures}
    assert sections == {"filters", "reconstructions", "analyses"}
    assert _assert_whole(folder) >= 2 * len(rep.figures) + 1  # img + link each, manifest.json
    for f in rep.figures:
        assert not f.path.startswith(("/", "..")) and "analyses/" + str(out) not in f.path


def test_links_are_url_quoted():
    from deconvviz.export.report_page import url as _url

    assert _url("figures/a b#1%.png") == "figures/a%20b%231%25.png"
    assert urllib.parse.unquote(_url("figures/a b#1%.png")) == "figures/a b#1%.png"


def test_report_writes_and_links_every_section(report):
    page = report.index.read_text()
    parser = _Images()
    parser.feed(page)
    assert report.skipped == ()
    sections = {f.section for f in report.figures}
    expected = {key for key, _ in SECTIONS}
    if not hasattr(deconvviz, "analyses") and "analyses" not in sections:
        expected.discard("analyses")
    assert expected <= sections
    # every inline figure is an <img> on the page, and every <img> is a real PNG in the folder;
    # the Fig. 2 grids are per-unit tiles (one per live unit) linking the whole-layer picture
    srcs = [urllib.parse.unquote(src) for src in parser.srcs]
    tiles = [s for s in srcs if s.startswith("figures/reconstructions/")]
    assert sorted(set(srcs) - set(tiles)) == sorted(f.path for f in report.figures if f.inline)
    for layer in ("conv1", "conv2"):
        info = json.loads((report.out_dir / f"figures/reconstructions/{layer}.json").read_text())
        live = [c for c in info["channels"] if c not in info["dead"]]
        assert sorted(t for t in tiles if f"/{layer}/" in t) == sorted(
            f"figures/reconstructions/{layer}/ch{c}.png" for c in live
        )
        assert f"figures/reconstructions/{layer}.png" in parser.links
    _assert_whole(report.out_dir)
    for src in srcs:
        assert not src.startswith(("/", "http")), src  # relative: the folder can be moved
        with Image.open(report.out_dir / src) as im:
            assert im.format == "PNG" and im.width > 20 and im.height > 20
    for href in parser.links:
        assert (report.out_dir / href).is_file(), href
    recs = [f for f in report.figures if f.section == "reconstructions"]
    assert [Path(f.path).name for f in recs] == ["conv1.png", "conv2.png"]
    assert (report.out_dir / "figures" / "reconstructions" / "conv2.json").is_file()
    stats = json.loads((report.out_dir / "figures" / "activation_stats.json").read_text())
    assert list(stats) == ["relu1", "relu2"]
    assert "h_conv1_stats: mean = " in page
    assert "dog &lt;b&gt;" in page or "dog <b>" not in page  # text is escaped
    assert not list(report.out_dir.rglob(".*.tmp"))


def test_manifest_records_versions_config_seed_and_figures(report):
    manifest = json.loads(report.manifest.read_text())
    assert manifest["seed"] == 7 and manifest["config"]["lr"] == 0.001
    assert manifest["deconvviz"] == deconvviz.__version__
    assert manifest["versions"]["torch"] == torch.__version__
    for pkg in ("captum", "numpy", "matplotlib", "python"):
        assert manifest["versions"][pkg]
    assert manifest["dataset"]["size"] == 10 and manifest["dataset"]["name"] == "tiny"
    assert manifest["metrics"] == {"final_test_acc": 0.4, "status": "ok"}
    assert [f["path"] for f in manifest["figures"]] == [f.path for f in report.figures]
    stats = next(s for s in manifest["sections"] if s["key"] == "stats")
    assert stats["lines"][0].startswith("h_conv1_stats: mean = ")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    # A copy of the page beside the original (same relative paths) with a script that records,
    # after the load event, whether every image loaded.
    # The report was written with a relative --out holding a space (the fixture).
    assert " " in str(report.out_dir)
    script = """<script>
window.addEventListener("load", function () {
  var r = Array.from(document.images).map(function (i) {
    return [i.src, i.complete && i.naturalWidth > 0]; });
  Array.from(document.querySelectorAll("a[href]")).forEach(function (a) {
    if (a.getAttribute("href").charAt(0) !== "#") { r.push([a.href, true]); } });
  var pre = document.createElement("pre");
  pre.id = "deconvviz-check"; pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>"""
    page = report.index.read_text()
    check = report.out_dir / "_check.html"
    eager = '<script>document.querySelectorAll("img").forEach(i => { i.loading = "eager"; });'
    check.write_text(page.replace("</body>", eager + "</script>" + script + "</body>"))
    result = json.loads(run_check(check, tmp_path / "profile", budget_ms=10000))
    # every inline figure and unit tile once as <img> and once as <a>, the whole-layer
    # pictures as links, plus the link to manifest.json
    parser = _Images()
    parser.feed(page)
    assert len(result) == len(parser.srcs) + len(parser.links)
    assert [src for src, ok in result if not ok] == []  # naturalWidth == 0: a broken picture
    inside = report.out_dir.resolve().as_uri() + "/"
    assert [url for url, _ in result if not url.startswith(inside)] == []


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_every_label_is_legible_as_displayed(report, tmp_path):
    # measured in the page at chromium's headless width (800 px), not in the PNGs
    found = legibility(report.index, tmp_path / "profile")
    assert found["width"] <= 1000
    small = [t for t in found["text"] if t[0] < MIN_TEXT_PX]
    assert small == []
    assert len(found["figures"]) >= 8  # stats, filters' RMS, evidence, occlusion, compare...
    shrunk = [f for f in found["figures"] if f[0] < MIN_TEXT_PX - 0.01]
    assert shrunk == []
    # the Fig. 2 labels are text in the page, not pixels
    assert any(t[1].startswith("ch 0: ") for t in found["text"])


def test_sections_that_do_not_apply_are_skipped_with_a_reason(tmp_path):
    torch.manual_seed(0)
    rep = write_report(
        tmp_path,
        TinyRNN().eval(),
        _dataset(channels=1),
        k=2,
        images=1,
        sections=["training", "filters", "stats", "reconstructions"],
        progress=False,
    )
    skipped = dict(rep.skipped)
    assert "no training history" in skipped["training"]
    assert "no Conv2d layer" in skipped["filters"]
    assert "Conv2d" in skipped["reconstructions"]
    assert [f.section for f in rep.figures] == ["stats"]  # hidden-state statistics
    page = rep.index.read_text()
    # no training run: the training section is left out of the page (the manifest says why)
    assert "Training curves" not in page and "training history" not in page
    manifest = json.loads(rep.manifest.read_text())
    training = next(s for s in manifest["sections"] if s["key"] == "training")
    assert "no training history" in training["skipped"]
    assert "Skipped: " in page and "no Conv2d layer" in page  # the others still say why
    assert "Hidden-state statistics" in page


def test_a_users_normalised_model_is_named_and_its_normalisation_readable(tmp_path):
    from deconvviz.sources.loading import Normalized

    torch.manual_seed(0)
    model = Normalized(TinyCNN().eval(), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    rep = write_report(
        tmp_path,
        model,
        _dataset(n=4),
        config={"image_size": 8, "normalize": [0.485, 0.229, 0.456, 0.224, 0.406, 0.225]},
        sections=["training", "filters"],
        progress=False,
    )
    parser = _Tables()
    page = rep.index.read_text()
    parser.feed(page)
    assert "<h1>deconvviz report: TinyCNN</h1>" in page and "Normalized" not in page
    summary, config = parser.tables[0], parser.tables[1]
    assert ["model", "TinyCNN"] in summary["rows"]
    assert "seed" not in [row[0] for row in summary["rows"]]  # not a training run: no seed
    assert config["caption"] == "Configuration"
    assert ["normalize mean", "0.485, 0.456, 0.406"] in config["rows"]
    assert ["normalize std", "0.229, 0.224, 0.225"] in config["rows"]
    assert "Training curves" not in page


def test_report_errors(tmp_path):
    model = TinyCNN()
    with pytest.raises(InputError, match="did you mean 'filters'"):
        write_report(tmp_path, model, _dataset(), sections=["filter"], progress=False)
    with pytest.raises(InputError, match="empty"):
        write_report(tmp_path, model, [], progress=False)
    with pytest.raises(InputError, match="did you mean 'guided'"):
        write_report(tmp_path, model, _dataset(), rule="guide", progress=False)
    with pytest.raises(LayerError, match="did you mean 'conv2'"):
        write_report(tmp_path, model, _dataset(), layers=["conv3"], progress=False)
    assert not (tmp_path / "index.html").exists()


def test_report_replaces_existing_files_atomically(tmp_path):
    (tmp_path / "index.html").write_text("old")
    rep = write_report(
        tmp_path, TinyCNN().eval(), _dataset(n=4), sections=["filters"], progress=False
    )
    assert rep.index.read_text().startswith("<!DOCTYPE html>")
    np.testing.assert_array_equal(
        sorted(p.name for p in tmp_path.glob("figures/*")),
        ["filters_conv1.png", "filters_conv1_rms.png"],
    )


class _Tables(html.parser.HTMLParser):
    """Every <table>: its caption, header cells and rows of cell texts (th and td)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self._cell: list[str] | None = None
        self._where = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append({"caption": "", "head": [], "rows": []})
        elif tag in ("thead", "tbody", "caption"):
            self._where = tag
        elif tag == "tr" and self._where == "tbody":
            self.tables[-1]["rows"].append([])
        elif tag in ("th", "td"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None:
            text = "".join(self._cell)
            table = self.tables[-1]
            (table["head"] if self._where == "thead" else table["rows"][-1]).append(text)
            self._cell = None
        elif tag == "caption":
            self._where = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._where == "caption":
            self.tables[-1]["caption"] += data


def test_summary_and_config_are_readable_tables(report):
    parser = _Tables()
    parser.feed(report.index.read_text())
    summary, config = parser.tables[0], parser.tables[1]
    # the summary is a key-value table: no (empty) header row, a name in every first cell
    assert summary["caption"] == "Summary" and summary["head"] == []
    assert [row[0] for row in summary["rows"]] == [
        "model",
        "parameters",
        "dataset",
        "seed",
    ]
    assert all(len(row) == 2 and row[0] and row[1] for row in summary["rows"])
    # the config: one row per setting, nested dicts flattened, no Python dict or k=v string
    assert config["caption"] == "Training configuration"
    assert config["head"] == ["setting", "value"]
    assert config["rows"] == [["model.model", "tiny"], ["seed", "7"], ["lr", "0.001"]]
    for table in parser.tables:
        assert all(h.strip() for h in table["head"])
        for row in table["rows"]:
            assert not any("{" in c or "=" in c for c in row), row


def test_reconstruction_section_lists_dead_feature_maps(report):
    manifest = json.loads(report.manifest.read_text())
    section = next(s for s in manifest["sections"] if s["key"] == "reconstructions")
    assert set(section["dead"]) == {"conv1", "conv2"}
    parser = _Tables()
    parser.feed(report.index.read_text())
    (dead,) = [t for t in parser.tables if t["caption"].startswith("Dead feature maps")]
    assert dead["head"] == ["layer", "dead units (never > 0)", "which"]
    for row in dead["rows"]:
        listed = section["dead"][row[0]]
        assert row[2] == (", ".join(str(c) for c in listed) or "none")
    recs = [f for f in report.figures if f.section == "reconstructions"]
    for f, row in zip(recs, dead["rows"], strict=True):
        assert f.title.endswith(f"dead feature maps (never > 0): {row[2]}")


@pytest.mark.slow  # ~25 s on a shared 2-core machine (two scans and captum's methods)
def test_report_says_where_deconvnet_pictures_hardly_depend_on_the_image(tmp_path):
    from zoo import SliceResNet

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.rand(3, 16, 16, generator=gen), i % 10) for i in range(12)]
    rep = write_report(
        tmp_path,
        SliceResNet().eval(),
        data,
        layers=["layer2.0.conv2"],
        k=4,
        images=2,
        max_channels=4,
        sections=["reconstructions", "compare"],
        progress=False,
    )
    assert rep.skipped == ()
    page = rep.index.read_text()
    assert "layer2.0.conv2: the deconvnet pictures hardly depend on the image" in page
    assert "Mahendran &amp; Vedaldi" in page and "Odena" in page
    # guided backprop beside it, as tiles
    assert "layer2.0.conv2 (guided backprop)" in page
    assert list((tmp_path / "figures" / "reconstructions").glob("layer2.0.conv2_guided*/ch*.png"))
    manifest = json.loads(rep.manifest.read_text())
    (dep,) = next(s for s in manifest["sections"] if s["key"] == "reconstructions")[
        "image_dependence"
    ]
    assert dep["switches"] == 0 and dep["hardly"] and dep["correlation"] > 0.9
    # the comparison: no max pooling at all, and captum cannot see the F.relu calls
    assert "This model has no max pooling" in page
    assert "equals the plain gradient" in page


def test_evidence_says_only_what_it_measured(tmp_path):
    """An untrained net's first-layer filters are not called structured, and one measured layer
    is not called a trend (both were printed whatever the numbers said)."""
    torch.manual_seed(0)
    write_report(
        tmp_path,
        TinyCNN().eval(),
        _dataset(n=9),
        layers=["conv2"],
        sections=["evidence"],
        progress=False,
    )
    page = (tmp_path / "index.html").read_text()
    assert "First-layer filters are structured" not in page
    assert "no smoother than at initialisation" in page
    assert "only one layer was measured" in page and "with depth" not in page


def test_a_datasets_class_names_never_label_a_model_with_other_outputs(tmp_path):
    """A 3-class folder on a 5-output model: the names would pin 'cat' on output 0."""
    from deconvviz.base.errors import ClassNamesWarning

    class Five(TinyCNN):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6 * 4 * 4, 5)

    torch.manual_seed(0)
    with pytest.warns(ClassNamesWarning, match="3 classes but the model has 5 outputs"):
        write_report(tmp_path, Five().eval(), _dataset(n=4), sections=["occlusion"], progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["figures"], "the occlusion section drew nothing"


def test_layers_choose_what_the_statistics_and_the_analyses_measure(tmp_path):
    torch.manual_seed(0)
    rep = write_report(
        tmp_path / "r",
        TinyCNN().eval(),
        _dataset(n=6),
        layers=["conv2"],
        sections=["stats", "analyses"],
        progress=False,
    )
    figures = tmp_path / "r" / "figures"
    stats = json.loads((figures / "activation_stats.json").read_text())
    assert list(stats) == ["conv2"]  # not every conv layer's ReLU
    for stem in ("invariance_translate", "invariance_scale", "correspondence"):
        assert json.loads((figures / "analyses" / f"{stem}.json").read_text())["layers"] == [
            "conv2"
        ], stem
    assert {f.section for f in rep.figures} == {"stats", "analyses"}
