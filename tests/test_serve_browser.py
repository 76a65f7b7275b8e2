"""The ``deconvviz serve`` page in a real headless Chromium (Playwright driving the system one).

A uvicorn server runs in a thread on 127.0.0.1 (a free port). The test opens the page, picks a
dataset image, clicks a unit, and checks that the projection is shown (``naturalWidth > 0``) and
that the array the server computed for that view equals ``Deconvnet.project``; then it clicks
another unit and checks that the back button restores the first. With ``DECONVVIZ_SCREENSHOT``
set to a path it saves a screenshot there (docs/images/serve.png is made this way).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("chromium is not installed", allow_module_level=True)

import deconvviz  # noqa: E402
from deconvviz.serve.app import create_app  # noqa: E402
from deconvviz.serve.explorer import Explorer  # noqa: E402
from deconvviz.sources.datasets import load_sample  # noqa: E402
from deconvviz.sources.pretrained import load_pretrained  # noqa: E402
from serve_server import running  # noqa: E402


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _shown(page) -> dict:
    """What the projection image shows once it has loaded."""
    page.wait_for_function(
        "() => { const i = document.getElementById('projection');"
        " return i.dataset.ready === '1' && i.complete && i.naturalWidth > 0; }",
        timeout=30_000,
    )
    return page.evaluate(
        "() => { const i = document.getElementById('projection');"
        " return {w: i.naturalWidth, h: i.naturalHeight, ...i.dataset}; }"
    )


def test_pick_an_image_click_a_unit_see_its_projection_and_go_back(tmp_path):
    model, info = load_pretrained()
    data = load_sample()
    ex = Explorer(model, data, classes=info["classes"], title="zfnet-cifar (shipped)")
    app = create_app(ex, cache_dir=tmp_path / "cache")
    with running(app) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/?layer=relu2", wait_until="load")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            # pick dataset image 12 from the thumbnails
            page.click("#thumbs img[data-image='12']")
            page.wait_for_function("() => location.search.includes('image=12')")
            page.wait_for_selector("#cells .cell[data-unit='40']", timeout=30_000)
            page.wait_for_function(
                "() => document.getElementById('current').src.endsWith('/12.png')"
            )
            # click unit 40 of relu2
            page.click("#cells .cell[data-unit='40']")
            first = _shown(page)
            assert first["w"] == 32 and first["h"] == 32
            assert (first["image"], first["layer"], first["unit"]) == ("12", "relu2", "40")
            served = _get(
                f"{base}/api/projection?image=12&layer=relu2&unit=40&rule=deconvnet&format=json"
            )
            x = data[12][0].unsqueeze(0)
            with deconvviz.attach(model) as dn:
                want = dn.project(x, "relu2", 40, position=tuple(served["position"]))[0]
            got = np.asarray(served["values"], dtype=np.float32)
            assert np.allclose(got, want.numpy(), atol=1e-6 * float(want.abs().max()))
            # and the pixels the page shows are that array, 0 as grey (read back from the page)
            rgba = page.evaluate(
                "() => { const i = document.getElementById('projection');"
                " const c = document.createElement('canvas');"
                " c.width = i.naturalWidth; c.height = i.naturalHeight;"
                " const g = c.getContext('2d'); g.drawImage(i, 0, 0);"
                " return Array.from(g.getImageData(0, 0, c.width, c.height).data); }"
            )
            shown = np.asarray(rgba, dtype=np.int64).reshape(32, 32, 4)[..., :3]
            w = want.double().numpy()
            expect = np.round(np.clip(0.5 + w / (2 * np.abs(w).max()), 0, 1) * 255)
            assert np.abs(shown - expect.transpose(1, 2, 0)).max() <= 1
            assert page.locator("#top5 li").count() == 5
            # the top-k strip appears once the background scan is done
            page.wait_for_selector("#topk .strip img", timeout=60_000)
            # another unit, then back: the first unit's view comes back
            page.click("#cells .cell[data-unit='7']")
            page.wait_for_function(
                "() => document.getElementById('projection').dataset.unit === '7'"
                " && document.getElementById('projection').dataset.ready === '1'"
            )
            page.go_back()
            page.wait_for_function(
                "() => document.getElementById('projection').dataset.unit === '40'"
                " && document.getElementById('projection').dataset.ready === '1'",
                timeout=30_000,
            )
            assert "unit=40" in page.url
            assert page.eval_on_selector("#cells .selected", "e => e.dataset.unit") == "40"
            # occlusion, drawn row by row
            page.click("#occlude-class")
            page.wait_for_function(
                "() => document.getElementById('occlusion').dataset.done === '1'",
                timeout=30_000,
            )
            assert int(page.eval_on_selector("#occlusion", "e => e.dataset.rows")) > 1
            # an upload (the file input the drop zone also feeds) becomes the page's image
            from PIL import Image

            png = tmp_path / "upload.png"
            arr = (data[3][0] * 255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(arr).save(png)
            page.set_input_files("#file", str(png))
            page.wait_for_function("() => /image=u[0-9a-f]+/.test(location.search)")
            page.wait_for_function(
                "() => document.getElementById('current-caption').textContent === 'uploaded image'"
            )
            page.go_back()  # and back to dataset image 12, unit 40
            page.wait_for_function("() => location.search.includes('image=12')")
            page.wait_for_function(
                "() => document.getElementById('projection').dataset.ready === '1'"
                " && document.getElementById('projection').dataset.image === '12'",
                timeout=30_000,
            )
            shot = os.environ.get("DECONVVIZ_SCREENSHOT")
            if shot:
                # the occlusion map went with the image change; draw it for this image again
                page.click("#occlude-class")
                page.wait_for_function(
                    "() => document.getElementById('occlusion').dataset.done === '1'"
                    " && !document.getElementById('occlusion').hidden",
                    timeout=30_000,
                )
                page.mouse.move(0, 0)
                page.screenshot(path=shot, full_page=False)
            assert not errors, errors
        finally:
            browser.close()


def test_before_a_click_no_broken_image_and_a_bad_url_falls_back_with_one_message(tmp_path):
    model, info = load_pretrained()
    ex = Explorer(model, load_sample(), classes=info["classes"], title="zfnet-cifar (shipped)")
    app = create_app(ex, scan=False)
    first = next(iter(ex.layers))
    with running(app) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # a plain start: the projection waits for a click, with a hint, not a broken image
            page.goto(f"{base}/", wait_until="load")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.wait_for_function(
                "() => document.getElementById('grid').naturalWidth > 0", timeout=30_000
            )
            assert not page.locator("#projection").is_visible()
            assert page.locator("#projection-caption").inner_text() == "click a unit"
            # no image without a source is shown (each would be a broken-image icon)
            empty = page.evaluate(
                "() => Array.from(document.images).filter(i => i.offsetParent !== null"
                " && !i.getAttribute('src')).map(i => i.id || i.alt)"
            )
            assert empty == [], empty
            assert not page.locator("#occlusion").is_visible()  # an empty canvas until asked
            assert not page.locator("#url-error").is_visible()
            # an unknown layer (and unit) in the URL: the first layer, one message
            page.goto(f"{base}/?layer=relu9&unit=3", wait_until="load")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            assert page.eval_on_selector("#layer", "e => e.value") == first
            assert f"layer={first}" in page.url and "relu9" not in page.url
            page.wait_for_function(
                "() => document.getElementById('grid').naturalWidth > 0", timeout=30_000
            )
            text = page.inner_text("body")
            assert text.count("relu9") == 1, text
            assert page.locator("#url-error").is_visible()
            assert first in page.inner_text("#url-error")
            assert not page.locator("#projection").is_visible()
            # a click shows the projection and clears the message
            page.click("#cells .cell[data-unit='3']")
            shown = _shown(page)
            assert (shown["layer"], shown["unit"]) == (first, "3")
            assert page.locator("#projection").is_visible()
            assert not page.locator("#url-error").is_visible()
            assert not errors, errors
        finally:
            browser.close()
