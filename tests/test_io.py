"""Atomic writing: a file appears whole or not at all, and an old version survives a failure."""

from __future__ import annotations

import os
import stat

import pytest

from deconvviz.base._io import atomic_write, write_json, write_text


def test_written_file_has_normal_permissions_and_no_leftovers(tmp_path):
    path = write_text(tmp_path / "sub" / "a.txt", "hello")
    assert path.read_text() == "hello"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_failed_write_keeps_the_previous_version(tmp_path):
    path = write_json(tmp_path / "m.json", {"v": 1})

    def half_then_crash(fh):
        fh.write(b'{"v": 2')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_crash)
    assert path.read_text() == '{\n  "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"], "the temporary file was removed"
