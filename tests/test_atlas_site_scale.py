"""The atlas site at scale: thousands of units, written straight through the site writer (no
model run), paginated layer pages, and a headless browser that loads them."""

from __future__ import annotations

import gc
import json
import re
import time
import weakref
from pathlib import Path

import pytest
import torch

from browser import CHROMIUM, run_check
from deconvviz.analyses.scan import Scan
from deconvviz.analyses.topk import TopActivations, TopProjections
from deconvviz.base.errors import InputError
from deconvviz.export.atlas import write_atlas


def synthetic_atlas(layers: dict[str, int], k: int = 2, tile: int = 4) -> tuple[Scan, list]:
    """A scan and projections of ``layers`` (name -> units), made up: ``k`` entries per unit of
    ``tile x tile`` pixels, the whole image as the receptive field."""
    g = torch.Generator().manual_seed(0)
    tops, projs = {}, []
    for name, units in layers.items():
        values = torch.rand(units, k, generator=g).sort(dim=1, descending=True).values
        values[::7] = -values[::7]  # some dead units
        indices = torch.randint(0, 50, (units, k), generator=g)
        positions = torch.zeros(units, k, 2, dtype=torch.long)
        boxes = torch.tensor([0, 0, tile, tile]).repeat(units, k, 1)
        top = TopActivations(name, values, indices, positions, boxes, (tile, tile), None)
        recs = torch.randn(units, k, 3, tile, tile, generator=g)
        patches = torch.rand(units, k, 3, tile, tile, generator=g)
        tops[name] = top
        projs.append(TopProjections(top, recs, patches, "deconvnet"))
    return Scan(tops, 50, k), projs


CHECK = """<!DOCTYPE html><html><body>
<iframe id="f" width="1200" height="800"></iframe>
<pre id="deconvviz-check"></pre>
<script>
var pages = %s, log = [], f = document.getElementById("f"), i = 0;
function visit() {
  if (i === pages.length) {
    document.getElementById("deconvviz-check").textContent = JSON.stringify(log);
    return;
  }
  f.onload = function () {
    var d = f.contentDocument, imgs = Array.from(d.images);
    var shown = imgs.filter(function (el) {
      var r = el.getBoundingClientRect(); return r.top < 800 && r.bottom > 0;
    });
    setTimeout(function () {
      log.push({page: pages[i], elements: d.getElementsByTagName("*").length,
        images: imgs.length, lazy: imgs.filter(function (el) {
          return el.getAttribute("loading") === "lazy"; }).length,
        shown: shown.length,
        broken: shown.filter(function (el) {
          return el.complete && el.naturalWidth === 0; }).length,
        links: Array.from(d.links).map(function (a) { return a.getAttribute("href"); })});
      i += 1; visit();
    }, 300);
  };
  f.src = pages[i];
}
visit();
</script></body></html>"""


def _check_site(out: Path, pages: list[str], tmp_path: Path) -> list[dict]:
    check = out / "_check.html"
    check.write_text(CHECK % json.dumps(pages))
    return json.loads(run_check(check, tmp_path / "profile", budget_ms=30000))


def _assert_paginated(out: Path, layer: str, units: int, per_page: int) -> None:
    """Every unit is on exactly one page of its layer, each page holds at most ``per_page`` units
    and links to every other page, and each unit's page links back to the page that shows it."""
    n_pages = -(-units // per_page)
    names = [f"{layer}.html"] + [f"{layer}~p{p}.html" for p in range(2, n_pages + 1)]
    assert sorted(p.name for p in (out / "layers").glob(f"{layer}*.html")) == sorted(names)
    seen: list[int] = []
    for p, name in enumerate(names):
        text = (out / "layers" / name).read_text()
        cells = [int(c) for c in re.findall(r'id="u(\d+)"', text)]
        assert len(cells) <= per_page
        assert cells == list(range(p * per_page, min(units, (p + 1) * per_page)))
        seen += cells
        others = set(names) - {name}
        assert others <= set(re.findall(r'href="([^"#]+)"', text))
    assert seen == list(range(units))
    last = units - 1
    unit = (out / "units" / layer / f"{last}.html").read_text()
    assert f'href="../../layers/{names[last // per_page]}#u{last}"' in unit


@pytest.fixture(scope="module")
def paged(tmp_path_factory):
    """A site of two layers, one of 300 units on 128-unit pages (3 pages), and what it wrote."""
    out = tmp_path_factory.mktemp("paged") / "site"
    scan, projs = synthetic_atlas({"big": 300, "small": 3})
    return out, write_atlas(out, scan, projs, units_per_page=128)


def test_layer_pages_are_paginated_and_every_unit_links_to_its_page(paged):
    out, site = paged
    _assert_paginated(out, "big", 300, 128)
    _assert_paginated(out, "small", 3, 128)
    summary = json.loads((out / "atlas.json").read_text())
    assert summary["layers"][0]["pages"] == [
        "layers/big.html",
        "layers/big~p2.html",
        "layers/big~p3.html",
    ]
    assert len(site.images) == 303  # one strip per unit
    assert (out / "layers" / "big~p3.html") in site.pages


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_browser_loads_index_and_paginated_layer_pages_with_bounded_dom(paged, tmp_path):
    out, _ = paged
    log = _check_site(out, ["index.html", "layers/big.html", "layers/big~p3.html"], tmp_path)
    index, first, last = log
    assert "layers/big.html" in index["links"] and "layers/small.html" in index["links"]
    assert first["images"] == 2 * 128 and last["images"] == 2 * (300 - 256)
    for page in (first, last):
        assert page["lazy"] == page["images"]  # every picture loads lazily
        assert page["shown"] > 0 and page["broken"] == 0
        assert "big~p2.html" in page["links"]
    assert index["elements"] < 200


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_site_of_25000_units_loads_with_bounded_dom(tmp_path):
    # ResNet50-like: 25,000 units over 12 layers, the largest with 4,096 units
    layers = {f"stage{i}": n for i, n in enumerate([64, 256, 512, 1024, 2048, 4096] * 2)}
    layers["stage11"] = 25_000 - sum(v for k, v in layers.items() if k != "stage11")
    assert sum(layers.values()) == 25_000
    scan, projs = synthetic_atlas(layers, k=1)
    out = tmp_path / "site"
    start = time.perf_counter()
    write_atlas(out, scan, projs)
    wrote = time.perf_counter() - start
    big = max(layers, key=lambda name: layers[name])
    pages = ["index.html", f"layers/{big}.html", f"layers/{big}~p5.html", f"units/{big}/0.html"]
    log = _check_site(out, pages, tmp_path)
    index, first, fifth, unit = log
    assert index["images"] == 0 and index["elements"] < 400
    for page in (first, fifth):
        assert page["images"] <= 2 * 256 and page["elements"] < 4000
        assert page["broken"] == 0 and page["lazy"] == page["images"]
    assert unit["images"] == 2
    print(f"wrote the 25,000-unit site in {wrote:.0f} s")


def _parts(proj: TopProjections, size: int) -> list[TopProjections]:
    n = proj.top.channels
    return [
        TopProjections(
            proj.top,
            proj.reconstructions[s : s + size].clone(),
            proj.patches[s : s + size].clone(),
            proj.rule,
            tuple(range(s, min(n, s + size))),
        )
        for s in range(0, n, size)
    ]


def test_layers_given_in_parts_write_the_same_site_and_each_part_is_let_go(tmp_path):
    scan, projs = synthetic_atlas({"a": 10, "b": 7}, k=3)
    whole = tmp_path / "whole"
    write_atlas(whole, scan, projs)
    parts = [p for proj in projs for p in _parts(proj, 4)]
    parts.insert(0, parts.pop(3))  # layers' parts interleaved: a's 0-3, b's 0-3, ...
    refs: list[weakref.ref] = []

    def stream():
        while parts:
            part = parts.pop(0)
            refs.append(weakref.ref(part))
            yield part
            del part
            gc.collect()
            assert refs[-1]() is None  # the writer held nothing of the part it wrote

    in_parts = tmp_path / "parts"
    write_atlas(in_parts, scan, stream())
    files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(in_parts) for p in in_parts.rglob("*") if p.is_file())
    for f in files:
        assert (whole / f).read_bytes() == (in_parts / f).read_bytes(), f


def test_a_layer_missing_channels_or_given_twice_is_refused(tmp_path):
    scan, projs = synthetic_atlas({"a": 6}, k=2)
    first, second = _parts(projs[0], 3)
    with pytest.raises(InputError, match="hold 3 of its 6 channels"):
        write_atlas(tmp_path / "s1", scan, [first])
    with pytest.raises(InputError, match="twice"):
        write_atlas(tmp_path / "s2", scan, [first, first])
