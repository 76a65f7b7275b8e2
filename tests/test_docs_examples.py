"""The code blocks of the API reference run as written (they carry their own asserts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("page", ["api.md"])
def test_api_reference_examples_run(page, capsys):
    blocks = _blocks(DOCS / page)
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{page}[block {i}]", "exec"), namespace)  # noqa: S102
        except Exception as exc:  # pragma: no cover - the message says which block
            pytest.fail(f"{page} block {i} failed: {type(exc).__name__}: {exc}\n{code}")
