"""The atlas: the CLI command end to end, the site's links and images, and a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from browser import CHROMIUM, legibility, run_check
from deconvviz.analyses.scan import scan
from deconvviz.sources.checkpoint import load_run
from deconvviz.sources.data import load_dataset
from deconvviz_cli.main import cli

DEAD = 5  # conv2 unit made dead: zero weights, negative bias
MODEL_PY = """
from torch import nn


def make():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 36, 10),
    )
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("atlas")
    rng = np.random.default_rng(0)
    data = root / "data"
    data.mkdir()
    np.savez_compressed(
        data / "cifar10.npz",
        x_train=rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
        y_train=np.arange(4, dtype=np.uint8),
        x_test=rng.integers(0, 256, (14, 16, 16, 3), dtype=np.uint8),
        y_test=(np.arange(14) % 10).astype(np.uint8),
        label_names=np.array([f"c{i}" for i in range(10)]),
    )
    (root / "tiny.py").write_text(MODEL_PY)
    torch.manual_seed(0)
    model = _factory(root)()
    with torch.no_grad():
        model[3].weight[DEAD].zero_()
        model[3].bias[DEAD] = -1.0
    torch.save(model.state_dict(), root / "tiny.pt")
    out = root / "site"
    res = CliRunner().invoke(
        cli,
        [
            "atlas",
            "-c",
            str(root / "tiny.pt"),
            "--model",
            f"{root / 'tiny.py'}:make",
            "--data-dir",
            str(data),
            "--dataset",
            "cifar10",
            "-k",
            "4",
            "--batch-size",
            "5",
            "--out",
            str(out),
            "--no-progress",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    return root, out, res.stdout


def _factory(root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("atlas_tiny_model", root / "tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key):
                self.refs.append((tag, a[key]))


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text())
    return p


def test_atlas_command_writes_every_page_and_matches_the_scan(site):
    root, out, stdout = site
    assert stdout.strip().splitlines() == [
        f"wrote the atlas of 2 layers, 10 units (top-4 of 14 images) to {out / 'index.html'}"
    ]
    run = load_run(root / "tiny.pt", model_factory=f"{root / 'tiny.py'}:make")
    data = load_dataset(root / "data", "cifar10", split="test")
    ref = scan(run.model, data, "conv", k=4, progress=False)
    meta = json.loads((out / "atlas.json").read_text())
    assert [d["layer"] for d in meta["layers"]] == ["0", "3"]
    for d in meta["layers"]:
        top = ref[d["layer"]]
        assert d["channels"] == top.channels
        assert [u["indices"] for u in d["units"]] == top.indices.tolist()
        assert [u["positions"] for u in d["units"]] == top.positions.tolist()
        np.testing.assert_allclose([u["values"] for u in d["units"]], top.values.numpy())
        assert d["dead"] == [c for c in range(top.channels) if float(top.values[c, 0]) <= 0]
        for c in range(top.channels):
            assert (out / "units" / d["layer"] / f"{c}.html").is_file()
        assert len(d["dead"]) < top.channels
    assert DEAD in meta["layers"][1]["dead"]
    page = (out / "units" / "3" / f"{DEAD}.html").read_text()
    assert '<span class="tag">dead</span>' in page
    # the index lists units, dead units and receptive fields per layer
    index = (out / "index.html").read_text()
    assert re.search(r">3</a></td><td>6</td><td>\d+</td><td>\d+x\d+ px</td>", index)
    # the unit page shows values and image indices of its top activations
    unit0 = (out / "units" / "0" / "0.html").read_text()
    first = int(ref["0"].indices[0, 0])
    assert f"#1: value {float(ref['0'].values[0, 0]):.4g}<br>image {first}," in unit0


def test_every_link_and_image_of_the_site_resolves(site):
    _, out, _ = site
    pages = sorted(out.rglob("*.html"))
    assert len(pages) == 1 + 2 + 10
    parsed = {p: _parse(p) for p in pages}
    dead = []
    for page, links in parsed.items():
        for tag, ref in links.refs:
            parts = urlsplit(ref)
            assert not parts.scheme and not ref.startswith("/"), f"{page}: non-relative {ref}"
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if not target.is_file() or parts.fragment and parts.fragment not in parsed[target].ids:
                dead.append((page.name, ref))
            elif tag == "img":
                from PIL import Image

                with Image.open(target) as im:
                    assert im.width > 0 and im.height > 0
    assert dead == []
    # every page of a layer is reachable from the index, every unit from its layer
    index = parsed[out / "index.html"]
    assert {r for _, r in index.refs if r.startswith("layers/")} == {
        "layers/0.html",
        "layers/3.html",
    }
    layer = parsed[out / "layers" / "3.html"]
    units = {r for _, r in layer.refs if r.startswith("../units/")}
    assert len(units) == 6
    # images load lazily, with their size given
    text = (out / "layers" / "3.html").read_text()
    imgs = re.findall(r"<img [^>]*>", text)
    assert len(imgs) == 2 * 6
    assert all('loading="lazy"' in i and "width=" in i and "height=" in i for i in imgs)


HARNESS = """<!DOCTYPE html><html><body>
<iframe id="f" src="index.html" width="1200" height="800"></iframe>
<pre id="deconvviz-check"></pre>
<script>
var f = document.getElementById("f"), log = [], step = 0;
function images(doc) {
  return Promise.all(Array.from(doc.images).map(function (el) {
    return new Promise(function (done) {
      var im = new Image();
      im.onload = function () { done([el.getAttribute("src"), im.naturalWidth,
        el.complete ? el.naturalWidth : -1]); };
      im.onerror = function () { done([el.getAttribute("src"), 0, -1]); };
      im.src = el.src;
    });
  }));
}
var next = [
  function (d) { return d.querySelector('a[href^="layers/"]'); },
  function (d) { return d.querySelector('a[href^="../units/"]'); },
  function (d) { return d.querySelector('a[href*="../layers/"]'); },
  function (d) { return d.querySelector('a[href$="index.html"]'); },
  null
];
f.onload = function () {
  var d = f.contentDocument, here = f.contentWindow.location.pathname;
  images(d).then(function (r) {
    log.push({page: here, title: d.title, images: r});
    var pick = next[step++];
    if (pick) { var a = pick(d); if (a) { a.click(); return; } log.push({stuck: here}); }
    document.getElementById("deconvviz-check").textContent = JSON.stringify(log);
  });
};
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_browser_walks_index_layer_unit_and_back(site, tmp_path):
    _, out, _ = site
    check = out / "_check.html"
    check.write_text(HARNESS)
    text = run_check(check, tmp_path / "profile", budget_ms=20000)
    log = json.loads(text)
    pages = [Path(unquote(e["page"])).relative_to(out).as_posix() for e in log]
    assert pages == [
        "index.html",
        "layers/0.html",
        "units/0/0.html",
        "layers/0.html",
        "index.html",
    ]
    for entry in log:
        broken = [src for src, width, _ in entry["images"] if width == 0]
        assert broken == [], entry["page"]
        # images the browser did load (the lazy ones in view) are real pictures
        assert all(shown != 0 for _, _, shown in entry["images"]), entry["page"]
    assert len(log[1]["images"]) == 2 * 4 and len(log[2]["images"]) == 2 * 4


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_every_label_is_legible_as_displayed(site, tmp_path):
    _, out, _ = site
    for i, page in enumerate(["index.html", "layers/0.html", "units/0/0.html"]):
        found = legibility(out / page, tmp_path / f"profile{i}")
        assert found["text"], page
        small = [t for t in found["text"] if t[0] < 11]
        assert small == [], page
        assert [f for f in found["figures"] if f[0] < 11] == [], page


TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))


@pytest.mark.slow
@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun is not installed")
def test_torchrun_two_processes_write_the_same_site(site, tmp_path):
    root, out, _ = site
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "src"), str(repo / "cli")])
    two = tmp_path / "two"
    cmd = [TORCHRUN, "--nproc_per_node=2", f"--master_port={free}", "-m", "deconvviz_cli"]
    cmd += ["atlas", "-c", str(root / "tiny.pt"), "--model", f"{root / 'tiny.py'}:make"]
    cmd += ["--data-dir", str(root / "data"), "--dataset", "cifar10", "-k", "4"]
    cmd += ["--batch-size", "5", "--out", str(two), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (two / "atlas.json").read_bytes() == (out / "atlas.json").read_bytes()
    for png in sorted((out / "img").rglob("*.png")):
        assert (two / png.relative_to(out)).read_bytes() == png.read_bytes(), png
