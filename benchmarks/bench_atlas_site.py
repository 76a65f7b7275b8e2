"""Benchmark: how fast the atlas site's pages load at 25,000 units (issue 21).

    python benchmarks/bench_atlas_site.py [--units 25000] [--out /tmp/atlas25k] [--repeats 3]

Writes a synthetic atlas straight through :func:`deconvviz.export.atlas.write_atlas` (no model:
made-up
top-k and 4 x 4 projections; 12 layers, the largest with 4,096 units, ``--units`` in all; reuses
``--out`` when it already holds the site), then opens the index, the first and the fifth page of
the largest layer and one unit page in headless Chromium (Playwright, ``/usr/bin/chromium``) and
reports, per page, the time from navigation to the ``load`` event (median of ``--repeats``),
and its ``<img>`` and element counts. Goal: every page loads in under a second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(out: Path, units: int) -> dict[str, int]:
    sys.path.insert(0, str(ROOT / "tests"))
    from deconvviz.export.atlas import write_atlas
    from test_atlas_site_scale import synthetic_atlas

    sizes = [64, 256, 512, 1024, 2048, 4096] * 2
    layers = {f"stage{i}": n for i, n in enumerate(sizes)}
    layers["stage11"] = max(1, units - sum(sizes[:-1]))
    if not (out / "index.html").exists():
        scan, projs = synthetic_atlas(layers, k=1)
        start = time.perf_counter()
        write_atlas(out, scan, projs)
        print(f"wrote {sum(layers.values())} units in {time.perf_counter() - start:.0f} s")
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=25_000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/deconvviz-atlas25k"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    layers = build(args.out, args.units)
    big = max(layers, key=lambda name: layers[name])
    pages = ["index.html", f"layers/{big}.html", f"layers/{big}~p5.html", f"units/{big}/0.html"]
    from playwright.sync_api import sync_playwright

    print(f"{'page':<28}{'load':>9}{'<img>':>7}{'elements':>10}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        for name in pages:
            url = (args.out / name).as_uri()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                page.goto(url, wait_until="load")
                times.append(time.perf_counter() - start)
            imgs = page.evaluate("document.images.length")
            elements = page.evaluate("document.getElementsByTagName('*').length")
            print(f"{name:<28}{statistics.median(times) * 1000:>7.0f}ms{imgs:>7}{elements:>10}")
        browser.close()


if __name__ == "__main__":
    main()
