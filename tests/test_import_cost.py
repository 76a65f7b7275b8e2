"""``import deconvviz`` loads the computing layers only: no matplotlib, no captum."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import json, sys
import deconvviz
heavy = sorted(m for m in ("matplotlib", "captum") if m in sys.modules)
missing = [n for n in deconvviz.__all__ if not hasattr(deconvviz, n)]
listed = [n for n in deconvviz.__all__ if n not in dir(deconvviz)]
print(json.dumps({"heavy": heavy, "missing": missing, "listed": listed}))
"""


def _probe() -> dict[str, list[str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT / "cli"), env.get("PYTHONPATH", "")]
    )
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_deconvviz_loads_neither_matplotlib_nor_captum_and_every_name_resolves():
    got = _probe()
    # dir() lists every public name before any is used; hasattr() then resolves them all,
    # the lazy ones (filter_grid, Report, write_report) included
    assert got["listed"] == []
    assert got["heavy"] == []
    assert got["missing"] == []


def test_lazy_names_are_the_defining_modules_objects():
    import deconvviz
    from deconvviz.export.report import Report, write_report
    from deconvviz.render.filters import filter_grid

    assert deconvviz.filter_grid is filter_grid
    assert deconvviz.Report is Report and deconvviz.write_report is write_report
    assert "filter_grid" in dir(deconvviz)
