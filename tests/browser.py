"""Headless Chromium for the browser tests: open a check page, read back what its script wrote.

A check page is an HTML file (beside the pages it inspects, so relative links resolve) whose
script writes its findings as text into ``<pre id="deconvviz-check">``; :func:`run_check` loads it
with ``--dump-dom`` and returns that text.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and Path("/usr/bin/chromium").exists():
    CHROMIUM = "/usr/bin/chromium"

MARK = '<pre id="deconvviz-check">'


def run_check(check: Path, profile: Path, budget_ms: int) -> str:
    """Load ``check`` in headless Chromium (``budget_ms`` of virtual time, a fresh profile in
    ``profile``), delete it afterwards, and return the text its script left in the marker."""
    assert CHROMIUM is not None, "chromium is not installed"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--allow-file-access-from-files",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        check.as_uri(),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    finally:
        check.unlink()
    dom = done.stdout
    start = dom.find(MARK)
    assert start >= 0, f"no result from chromium (rc {done.returncode}): {done.stderr[-500:]}"
    text = html.unescape(dom[start + len(MARK) : dom.index("</pre>", start)])
    assert text, f"the check page's script did not finish: {done.stderr[-500:]}"
    return text


LEGIBILITY = """<script>
// As displayed: the font size of every visible text, and for every figure whose smallest text
// is known (data-text-px, pixels in the PNG) that text's size at the width the page shows it.
window.addEventListener("load", function () {
  var text = [], figs = [];
  var walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  var n;
  while ((n = walker.nextNode())) {
    var el = n.parentElement;
    if (!n.textContent.trim() || !el || el.closest("script,style,#deconvviz-check")) continue;
    var box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    text.push([parseFloat(getComputedStyle(el).fontSize), n.textContent.trim().slice(0, 60)]);
  }
  Array.from(document.images).forEach(function (i) {
    var px = parseFloat(i.getAttribute("data-text-px") || "0");
    if (px > 0 && i.naturalWidth > 0) {
      figs.push([px * i.getBoundingClientRect().width / i.naturalWidth, i.getAttribute("src")]);
    }
  });
  var pre = document.createElement("pre");
  pre.id = "deconvviz-check";
  pre.textContent = JSON.stringify({text: text, figures: figs, width: window.innerWidth});
  document.body.appendChild(pre);
});
</script>"""
"""A script for a check page (insert it before ``</body>``): it reports the displayed font size
of every visible text and, for each ``<img data-text-px>``, its smallest text as displayed."""


def legibility(page: Path, profile: Path) -> dict:
    """:data:`LEGIBILITY`'s findings on ``page`` (a copy with the script, beside it, is loaded)."""
    import json

    check = page.with_name("_legibility_check.html")
    check.write_text(page.read_text().replace("</body>", LEGIBILITY + "</body>"))
    return json.loads(run_check(check, profile, budget_ms=10000))
