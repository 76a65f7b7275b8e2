"""Whole results or none: hostile names, colliding file names, two runs, a full disk."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from browser import CHROMIUM
from deconvviz.analyses.scan import project_layer, scan
from deconvviz.base.errors import BusyError
from deconvviz.export.atlas import write_atlas
from deconvviz.sources.datasets import SkippedFilesWarning, find_image_folder

# A module name, a class folder and a file name that run script if a page inserts them as HTML
# (no '.' in the module name: PyTorch refuses it; no '/' in file names)
HOSTILE_MODULE = "<img src=x onerror=\"document['body']['dataset']['pwned']='module'\">"
HOSTILE_CLASS = "<svg onload=\"document['body']['dataset']['pwned']='class'\">"
HOSTILE_FILE = "<img src=y onerror=\"document['body']['dataset']['pwned']='file'\">"
ROOT = Path(__file__).resolve().parents[1]
COLLIDING = ["conv a", "conv/a", "κ", "λ"]  # safe_name: conv_a twice, layer twice


def _model() -> nn.Module:
    torch.manual_seed(0)
    names = [HOSTILE_MODULE, *COLLIDING]
    layers: list[tuple[str, nn.Module]] = []
    c = 3
    for i, name in enumerate(names):
        layers.append((name, nn.Conv2d(c, 4, 3, padding=1)))
        layers.append((f"relu{i}", nn.ReLU()))
        c = 4
    layers.append(("pool", nn.MaxPool2d(2)))
    # two outputs: the two classes the hostile folder keeps (its "..hidden" one is skipped)
    layers += [("flat", nn.Flatten()), ("fc", nn.Linear(4 * 8 * 8, 2))]
    return nn.Sequential(OrderedDict(layers)).eval()


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "data"
    rng = np.random.default_rng(0)
    for ci, cls in enumerate([HOSTILE_CLASS, "plain", "..hidden"]):
        (root / cls).mkdir(parents=True)
        for j in range(3):
            name = (HOSTILE_FILE if j == 0 else f"img{j}") + f"{ci}.png"
            arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / name)
    return root


def test_an_image_folder_says_which_class_folders_it_left_out_and_why(hostile_folder):
    with pytest.warns(SkippedFilesWarning, match=r"'\.\.hidden' \(hidden: its name starts"):
        ds = find_image_folder(hostile_folder, image_size=16)
    assert ds is not None and len(ds) == 6 and HOSTILE_CLASS in ds.classes


def _dom(page: Path, profile: Path) -> str:
    """The page's DOM after Chromium loaded it and ran whatever script it has."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "<body" in done.stdout, done.stderr[-500:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_hostile_names_show_as_text_and_run_no_script_in_report_and_atlas(hostile_folder, tmp_path):
    from deconvviz.export.report import write_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFilesWarning)
        ds = find_image_folder(hostile_folder, image_size=16)
    assert ds is not None
    model = _model()
    res = scan(model, ds, [HOSTILE_MODULE, *COLLIDING], k=2, progress=False)
    atlas = tmp_path / "atlas"
    write_atlas(
        atlas,
        res,
        (project_layer(model, ds, res[layer], progress=False) for layer in res.layers),
        title=f"atlas of {HOSTILE_MODULE}",
        about={"dataset": str(ds.source), "classes": ", ".join(ds.classes), "file": HOSTILE_FILE},
    )
    report = write_report(
        tmp_path / "report",
        model,
        ds,
        sections=["filters", "evidence"],
        layers=[HOSTILE_MODULE],
        progress=False,
        max_images=6,
    )
    # every layer has its own pages: the colliding names did not overwrite each other
    pages = sorted((atlas / "layers").glob("*.html"))
    assert len(pages) == len(res.layers) == 5
    headings = {re.search(r"<h1>(.*?)</h1>", p.read_text()).group(1) for p in pages}
    assert headings == {html.escape(n) for n in res.layers}
    unit_dirs = sorted(p.name for p in (atlas / "units").iterdir())
    assert len(unit_dirs) == len(set(unit_dirs)) == 5
    layer_page = atlas / json.loads((atlas / "atlas.json").read_text())["layers"][0]["page"]
    unit_page = next((atlas / "units").glob("*/0.html"))
    for page, expect in [
        (report.index, [HOSTILE_MODULE]),
        (atlas / "index.html", [HOSTILE_MODULE, HOSTILE_CLASS, HOSTILE_FILE]),
        (layer_page, [HOSTILE_MODULE]),
        (unit_page, []),
    ]:
        dom = _dom(page, tmp_path / "profile")
        assert "data-pwned" not in dom, f"script ran in {page}"
        assert "<svg" not in dom and 'src="x"' not in dom and 'src="y"' not in dom, page
        text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
        for name in expect:
            assert name in text, f"{name!r} not shown as text in {page}"


def test_layer_file_names_are_injective():
    from deconvviz.base._util import safe_names

    names = ["conv a", "conv/a", "conv_a", "κ", "λ", "layer", "A", "a", "features.3"]
    files = safe_names(names)
    assert len({f.lower() for f in files.values()}) == len(names)
    assert files["features.3"] == "features.3"  # no collision: the plain spelling
    for f in files.values():
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", f) and not f.startswith(".")
    # the suffix is a hash of the name: the same name gets the same file in every run
    assert files["κ"].endswith(hashlib.sha256("κ".encode()).hexdigest()[:6])


# ---------------------------------------------------------------------- two runs, one folder


def _tiny_scan():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).eval()
    data = torch.utils.data.TensorDataset(torch.rand(6, 3, 8, 8))
    res = scan(model, data, ["0"], k=2, progress=False)
    return model, data, res


def test_a_second_live_run_into_a_busy_folder_is_refused_in_one_line(tmp_path):
    model, data, res = _tiny_scan()
    out = tmp_path / "site"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / ".site.lock"
        lock.write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename, "since": 0}))
        with pytest.raises(BusyError, match=f"in use by another run \\(pid {other.pid}") as err:
            write_atlas(out, res, [project_layer(model, data, res["0"], progress=False)])
        assert "\n" not in str(err.value) and not out.exists()
    finally:
        other.kill()
        other.wait()
    # its owner died (kill -9, crash): the stale lock is taken over
    write_atlas(out, res, [project_layer(model, data, res["0"], progress=False)])
    assert (out / "index.html").exists() and not lock.exists()


MODEL_PY = """
from torch import nn


def make():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
"""


def _atlas_inputs(tmp_path: Path) -> list[str]:
    """A tiny model file, its weights and a 6-image CIFAR-10 npz: the atlas command's args."""
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    np.savez_compressed(
        tmp_path / "data" / "cifar10.npz",
        x_train=rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
        y_train=np.arange(4, dtype=np.uint8),
        x_test=rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8),
        y_test=np.arange(6, dtype=np.uint8),
        label_names=np.array([f"c{i}" for i in range(10)]),
    )
    (tmp_path / "tiny.py").write_text(MODEL_PY)
    torch.manual_seed(0)
    torch.save(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).state_dict(),
        tmp_path / "tiny.pt",
    )
    return [
        "atlas",
        "-c",
        str(tmp_path / "tiny.pt"),
        "--model",
        f"{tmp_path / 'tiny.py'}:make",
        "--data-dir",
        str(tmp_path / "data"),
        "--dataset",
        "cifar10",
        "-k",
        "2",
        "--out",
        str(tmp_path / "site"),
        "--no-progress",
    ]


def test_cli_atlas_refuses_a_folder_another_run_holds_in_one_line(tmp_path):
    from click.testing import CliRunner

    from deconvviz_cli.main import cli

    args = _atlas_inputs(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".site.lock").write_text(
            json.dumps({"pid": other.pid, "host": os.uname().nodename, "since": 0})
        )
        got = CliRunner().invoke(cli, args)
    finally:
        other.kill()
        other.wait()
    assert got.exit_code == 1, got.output
    lines = got.output.strip().splitlines()
    assert len(lines) == 1 and f"in use by another run (pid {other.pid}" in lines[0]
    assert not (tmp_path / "site").exists()
    got = CliRunner().invoke(cli, args)  # the owner is gone: its lock is stale, taken over
    assert got.exit_code == 0, got.output
    assert not (tmp_path / ".site.lock").exists()


# ---------------------------------------------------------------------- a full disk


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def test_a_full_disk_leaves_the_previous_atlas_and_report_whole(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "3m"):
        pytest.skip("needs root to mount a small tmpfs (the full-disk test)")
    try:
        from deconvviz.export.report import write_report

        model, data, res = _tiny_scan()
        site = disk / "site"
        write_atlas(site, res, [project_layer(model, data, res["0"], progress=False)])
        before = _tree(site)
        rep = disk / "report"
        write_report(rep, model, data, sections=["filters"], progress=False)
        report_before = _tree(rep)
        # fill the disk but for a few kilobytes
        filler = disk / "filler"
        with open(filler, "wb") as fh, pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        with open(filler, "r+b") as fh:
            fh.truncate(os.path.getsize(filler) - 20_000)
        big, bdata, bres = _bigger_scan()
        with pytest.raises(OSError, match="No space left on device") as err:
            write_atlas(site, bres, [project_layer(big, bdata, bres["0"], progress=False)])
        assert str(site) in str(err.value)
        assert _tree(site) == before, "the previous atlas changed"
        with pytest.raises(OSError, match="No space left on device"):
            write_report(rep, big, bdata, sections=["filters"], progress=False)
        assert _tree(rep) == report_before, "the previous report changed"
        left = sorted(p.name for p in disk.iterdir())
        assert left == ["filler", "report", "site"], f"partial results left: {left}"
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _bigger_scan():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU()).eval()
    data = torch.utils.data.TensorDataset(torch.rand(12, 3, 32, 32))
    return model, data, scan(model, data, ["0"], k=6, progress=False)


# ---------------------------------------------------------------------- a lost torchrun peer

PEER_THAT_LEAVES = """
import torch.distributed as dist
dist.init_process_group("gloo")
print("joined", flush=True)
"""  # joins the group, then exits without taking part: a stopped peer


PEER_THAT_STALLS = """
import time
import torch.distributed as dist
dist.init_process_group("gloo")
print("joined", flush=True)
time.sleep(90)
"""  # joins, then never answers (a stopped process): only --timeout ends the wait


@pytest.mark.parametrize(
    "peer",
    [PEER_THAT_LEAVES, pytest.param(PEER_THAT_STALLS, marks=pytest.mark.slow)],
    ids=["leaves", "stalls"],
)
def test_a_lost_torchrun_peer_is_one_line_within_the_timeout(tmp_path, peer):
    import socket as sock

    with sock.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "cli")]),
    )
    args = _atlas_inputs(tmp_path) + ["--timeout", "20"]
    rank0 = subprocess.Popen(
        [sys.executable, "-m", "deconvviz_cli", *args],
        env=dict(env, RANK="0", LOCAL_RANK="0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    other = subprocess.Popen(
        [sys.executable, "-c", peer],
        env=dict(env, RANK="1", LOCAL_RANK="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = rank0.communicate(timeout=120)  # well before gloo's default of 30 minutes
    finally:
        other.kill()
        joined = other.communicate()[0]
    assert "joined" in joined
    assert rank0.returncode == 1, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-2000:]
    assert "lost a peer process" in lines[0] and "a bug" not in lines[0], lines[0]


def test_the_lock_is_reentrant_in_its_thread_only_and_the_current_folder_is_refused(
    tmp_path, monkeypatch
):
    import threading

    from deconvviz.base._io import atomic_dir, lock
    from deconvviz.base.errors import InputError

    path = tmp_path / ".site.lock"
    seen: list[str] = []
    with lock(path, "the site"), lock(path, "the site"):  # nested in one thread: fine

        def other() -> None:
            try:
                with lock(path, "the site"):
                    seen.append("entered")
            except BusyError as exc:
                seen.append(str(exc))

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(seen) == 1 and "in use by another run" in seen[0]
    assert not path.exists()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="current folder"), atomic_dir("."):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []
