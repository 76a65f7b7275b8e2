"""Scan resume under faults: interrupted at every point, edited states, changed data, two runs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from deconvviz.analyses.scan import _MISSING, _read_state, scan, select_top
from deconvviz.base.errors import BusyError, CheckpointError
from scan_models import scan_data, scan_model

ROOT = Path(__file__).resolve().parents[1]


def _faults(signals: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_scan_fault_worker.py"), signals],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["failures"] == []
    # 5 batches x 3 layers, 5 boundaries, 3 saves x 3 points
    assert report["per_kind"] == {
        "layer": 15,
        "boundary": 5,
        "save-half": 3,
        "save-whole": 3,
        "save-renamed": 3,
    }
    return report


@pytest.mark.slow
def test_resume_equals_uninterrupted_at_every_interruption_point_and_signal():
    """SIGINT, SIGTERM and kill -9 at every batch boundary, between the layers of every batch
    and at three points inside every state save: the resumed scan equals the uninterrupted one
    byte for byte, the state saved on Ctrl-C counts exactly the batches every layer took, and
    no temporary or lock file is left (tests/_scan_fault_worker.py): 29 points x 3 signals."""
    report = _faults("SIGINT,SIGTERM,SIGKILL")
    assert report["scenarios"] == 3 * report["points"] == 87


def test_resume_equals_uninterrupted_after_ctrl_c_at_every_interruption_point():
    """The same at all 29 points with SIGINT (Ctrl-C: the scan saves and re-raises), the
    default run's share of the test above (kill -9 and SIGTERM: the slow one)."""
    report = _faults("SIGINT")
    assert report["scenarios"] == report["points"] == 29


def test_select_top_keeps_an_image_once_even_when_fed_twice():
    g = torch.Generator().manual_seed(3)
    values = torch.randn(3, 6, generator=g)
    index = torch.arange(6).expand(3, 6).clone()
    pos = torch.randint(0, 9, (3, 6), generator=g)
    once = select_top(values, index, pos, 4)
    twice = select_top(values.repeat(1, 2), index.repeat(1, 2), pos.repeat(1, 2), 4)
    for a, b in zip(once, twice, strict=True):
        assert torch.equal(a, b)
    few = select_top(values.repeat(1, 2)[:, :4], index.repeat(1, 2)[:, :4], pos[:, :4], 6)[1]
    for row in few.tolist():  # 4 distinct images: the rest are empty slots, not repeats
        real = [i for i in row if i != _MISSING]
        assert len(real) == len(set(real)) == 4


def _interrupted_state(tmp_path, data, model=None):
    """A state file holding 8 of the images (2 batches of 4)."""
    model = model or scan_model()
    state = tmp_path / "scan.pt"
    part = TensorDataset(data.tensors[0][:8], data.tensors[1][:8])

    class Stop(TensorDataset):
        def __getitem__(self, i):
            if i >= 8:
                raise KeyboardInterrupt
            return part[i]

    with pytest.raises(KeyboardInterrupt):
        scan(model, Stop(*data.tensors), "conv", k=3, batch_size=4, progress=False, state=state)
    assert _read_state(state)["done"] == 8
    return model, state


def _resume(model, data, state):
    return scan(model, data, "conv", k=3, batch_size=4, progress=False, state=state, resume=True)


def test_resume_refuses_an_image_changed_in_the_part_already_scanned(tmp_path):
    data = scan_data(20)
    model, state = _interrupted_state(tmp_path, data)
    x = data.tensors[0].clone()
    x[5] = x[5].flip(-1)  # the middle of the scanned part
    with pytest.raises(CheckpointError, match="images of the scan state .* changed") as err:
        _resume(model, TensorDataset(x, data.tensors[1]), state)
    assert "\n" not in str(err.value)
    ref = scan(model, data, "conv", k=3, batch_size=4, progress=False)
    res = _resume(model, data, state)
    for name in ref.layers:
        assert torch.equal(ref[name].indices, res[name].indices)


def _rewrite(state: Path, edit) -> None:
    """Edit a state's contents and write it back with a valid checksum (a crafted state)."""
    raw = state.read_bytes()
    head, _, payload = raw.partition(b"\n")
    saved = torch.load(io.BytesIO(payload), weights_only=True)
    edit(saved)
    buf = io.BytesIO()
    torch.save(saved, buf)
    payload = buf.getvalue()
    parts = head.split(b" ")
    parts[5] = hashlib.sha256(payload).hexdigest().encode()
    state.write_bytes(b" ".join(parts) + b"\n" + payload)


def _set(saved, what, value):
    layer = saved["layers"]["0"]
    layer[what] = layer[what].clone()
    layer[what][0, 0] = value


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda s: _set(s, "index", 10**6), "outside the images done"),
        (lambda s: _set(s, "index", 12), "outside the images done"),  # not yet scanned
        (lambda s: _set(s, "index", -5), "outside the images done"),
        (lambda s: _set(s, "values", -1e30), "out of order"),
        (lambda s: _set(s, "pos", 10**6), "does not fit layer"),
        (lambda s: _set(s, "pos", -1), "negative position"),
        (lambda s: s.update(done=7), "whole number of batches"),
        (lambda s: s.update(done=12), "image digests"),
        (lambda s: s["layers"].pop("4"), "KeyError"),
        (lambda s: s["layers"]["0"].update(index=s["layers"]["0"]["index"][:, :2]), "shapes"),
    ],
)
def test_resume_refuses_an_inconsistent_state_in_one_line(tmp_path, edit, why):
    data = scan_data(20)
    model, state = _interrupted_state(tmp_path, data)
    _rewrite(state, edit)
    with pytest.raises(CheckpointError, match=why) as err:
        _resume(model, data, state)
    assert "\n" not in str(err.value) and "delete it" in str(err.value)


def test_resume_refuses_any_flipped_bit_of_the_state(tmp_path):
    data = scan_data(20)
    model, state = _interrupted_state(tmp_path, data)
    good = state.read_bytes()
    head = good.index(b"\n") + 1
    for at in range(head, len(good), max(1, (len(good) - head) // 40)):
        bad = bytearray(good)
        bad[at] ^= 1 << (at % 8)
        state.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match="checksum"):
            _resume(model, data, state)


def test_resume_refuses_a_state_of_an_older_format(tmp_path):
    state = tmp_path / "scan.pt"
    torch.save({"version": 1, "digest": "x", "done": 0, "layers": {}}, state)
    with pytest.raises(CheckpointError, match="not a scan state of this deconvviz version"):
        _resume(scan_model(), scan_data(8), state)


def test_folder_dataset_digest_holds_every_file_size_and_time(tmp_path):
    from PIL import Image

    from deconvviz.sources.datasets import FolderDataset

    files = []
    for i in range(12):
        path = tmp_path / "img" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        g = torch.Generator().manual_seed(i)
        arr = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(path)
        files.append(path)
    ds = FolderDataset(files, [0] * 12, ["a"], channels=3, image_size=16)
    model, state = scan_model(), tmp_path / "scan.pt"
    scan(model, ds, "conv", k=2, batch_size=4, progress=False, state=state, max_images=12)
    os.utime(files[6], ns=(1, 1))  # a file in the middle touched: its time differs
    with pytest.raises(CheckpointError, match="files changed"):
        scan(model, ds, "conv", k=2, batch_size=4, progress=False, state=state, resume=True)


def test_a_second_live_scan_on_the_same_state_is_refused_and_a_dead_ones_lock_taken(tmp_path):
    state = tmp_path / "scan.pt"
    lock_file = tmp_path / "scan.pt.lock"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_file.write_text(json.dumps({"pid": child.pid, "host": socket.gethostname()}))
        with pytest.raises(BusyError, match=f"pid {child.pid}") as err:
            scan(scan_model(), scan_data(8), "conv", k=2, progress=False, state=state)
        assert "\n" not in str(err.value)
    finally:
        child.kill()
        child.wait()
    # the owner is dead now: its lock is taken over, the scan runs, the lock goes after
    (tmp_path / ".scan.pt.abc.tmp").write_bytes(b"half a state")  # left by a kill -9
    scan(scan_model(), scan_data(8), "conv", k=2, progress=False, state=state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.pt"]
