"""deconvviz.analyses.scan: one pass, every layer, exact top-k (batch size, resume, 2 gloo
processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import deconvviz
from deconvviz.analyses.scan import _read_state, scan, select_top
from deconvviz.base._util import spread
from deconvviz.base.errors import CheckpointError, InputError, LayerError
from scan_models import scan_data, scan_model

LAYERS = {"0": 1, "4": 5, "6": 7}  # scanned layer -> length of the Sequential prefix that makes it
ROOT = Path(__file__).resolve().parents[1]


def _same(a, b, exact=True):
    assert a.layers == b.layers
    for name in a.layers:
        x, y = a[name], b[name]
        if exact:
            assert torch.equal(x.values, y.values), name
        else:  # float32 kernels may round differently in batches of another size
            torch.testing.assert_close(x.values, y.values, rtol=1e-5, atol=1e-6)
        assert torch.equal(x.indices, y.indices), name
        assert torch.equal(x.positions, y.positions), name
        assert torch.equal(x.boxes, y.boxes), name


def _brute_force(model, images, layer, k):
    """Every activation of the layer in float64; per channel the best image maxima, sorted by
    (value desc, image index asc), each at its first maximal position."""
    with torch.no_grad():
        acts = model[: LAYERS[layer]](images.double())
    n, c, h, w = acts.shape
    out = []
    for ch in range(c):
        cands = []
        for i in range(n):
            flat = acts[i, ch].flatten().tolist()
            best = max(flat)
            cands.append((-best, i, flat.index(best)))
        cands.sort()
        out.append([(-v, i, (p // w, p % w)) for v, i, p in cands[:k]])
    return out


def test_scan_equals_brute_force_in_float64():
    model, data = scan_model(torch.float64), scan_data(dtype=torch.float64)
    res = scan(model, data, "conv", k=6, batch_size=8, progress=False)
    assert res.layers == ["0", "4", "6"] and res.images == len(data) and res.k == 6
    for layer in res.layers:
        want = _brute_force(model, data.tensors[0], layer, 6)
        top = res[layer]
        got = [
            [
                (v, i, tuple(p))
                for v, i, p in zip(
                    top.values[c].tolist(),
                    top.indices[c].tolist(),
                    top.positions[c].tolist(),
                    strict=True,
                )
            ]
            for c in range(top.channels)
        ]
        assert got == want, layer
    # the dead channel ties everywhere: lowest image indices, first position
    assert res["4"].indices[3].tolist() == [0, 1, 2, 3, 4, 5]
    assert res["4"].positions[3].tolist() == [[0, 0]] * 6
    # the receptive-field box of each activation
    rf = res["4"].receptive_field
    r, c = res["4"].positions[0, 0].tolist()
    assert tuple(res["4"].boxes[0, 0].tolist()) == rf.box(r, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scan_does_not_depend_on_batch_size_or_input_kind(dtype):
    model, data = scan_model(dtype), scan_data(dtype=dtype)
    ref = scan(model, data, "conv", k=5, batch_size=1, progress=False)
    exact = dtype == torch.float64
    for bs in (7, 64):
        _same(ref, scan(model, data, "conv", k=5, batch_size=bs, progress=False), exact)
    _same(ref, scan(model, DataLoader(data, batch_size=5), "conv", k=5, progress=False), exact)
    batches = (b for b in DataLoader(data, batch_size=9))
    _same(ref, scan(model, batches, "conv", k=5, progress=False), exact)
    as_list = list(data.tensors[0].split(9))  # a list is read as a list of batches
    _same(ref, scan(model, as_list, "conv", k=5, progress=False), exact)


def test_top_activations_is_the_one_layer_case_and_matches_brute_force():
    model, data = scan_model(torch.float64), scan_data(dtype=torch.float64)
    top = deconvviz.top_activations(model, DataLoader(data, batch_size=4), "4", k=4, progress=False)
    one = scan(model, data, ["4"], k=4, progress=False)["4"]
    assert torch.equal(top.values, one.values) and torch.equal(top.indices, one.indices)
    want = _brute_force(model, data.tensors[0], "4", 4)
    assert top.indices.tolist() == [[i for _, i, _ in row] for row in want]


def test_fewer_images_than_k_and_max_images():
    model, data = scan_model(), scan_data()
    res = scan(model, data, ["6"], k=5, max_images=3, progress=False)
    top = res["6"]
    assert res.images == 3
    assert (top.indices[:, 3:] == -1).all() and torch.isinf(top.values[:, 3:]).all()
    # the 3 images are spread over the dataset, not its first 3
    assert set(top.indices[:, :3].flatten().tolist()) == set(spread(len(data), 3))


def test_select_top_is_order_free():
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 3, (4, 20), generator=g).double()  # many ties
    index = torch.stack([torch.randperm(20, generator=g) for _ in range(4)])
    pos = torch.randint(0, 9, (4, 20), generator=g)
    v, i, p = select_top(values, index, pos, 7)
    perm = torch.randperm(20, generator=g)
    v2, i2, p2 = select_top(values[:, perm], index[:, perm], pos[:, perm], 7)
    assert torch.equal(v, v2) and torch.equal(i, i2) and torch.equal(p, p2)
    for row in range(4):
        want = sorted(zip((-values[row]).tolist(), index[row].tolist(), strict=True))[:7]
        assert i[row].tolist() == [b for _, b in want]


class _Interrupting(torch.utils.data.Dataset):
    def __init__(self, data, after):
        self.data, self.after, self.calls = data, after, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.calls += 1
        if self.after is not None and self.calls > self.after:
            raise KeyboardInterrupt
        return self.data[i]


def test_resumed_scan_equals_uninterrupted(tmp_path):
    model, data = scan_model(), scan_data()
    ref = scan(model, data, "conv", k=5, batch_size=4, progress=False)
    state = tmp_path / "scan.pt"
    with pytest.raises(KeyboardInterrupt):
        scan(
            model,
            _Interrupting(data, 14),
            "conv",
            k=5,
            batch_size=4,
            progress=False,
            state=state,
            save_every=100,
        )
    saved = _read_state(state)
    assert saved["done"] == 12  # three whole batches, written on the interrupt
    rest = _Interrupting(data, None)
    res = scan(model, rest, "conv", k=5, batch_size=4, progress=False, state=state, resume=True)
    _same(ref, res)
    assert res.images == len(data)
    assert rest.calls == len(data)  # the 12 done read again (their digests checked), the rest
    # a finished state resumes to the same result without scanning any batch
    again = _Interrupting(data, len(data) + 1)  # the check reads every image, the geometry 1
    _same(
        ref,
        scan(model, again, "conv", k=5, batch_size=4, progress=False, state=state, resume=True),
    )
    # another model is refused
    other = scan_model()
    with torch.no_grad():
        other[0].bias.add_(1.0)
    with pytest.raises(CheckpointError, match="another model"):
        scan(other, data, "conv", k=5, progress=False, state=state, resume=True)


def test_scan_errors():
    model, data = scan_model(), scan_data()
    with pytest.raises(InputError, match="shuffle=False"):
        scan(model, DataLoader(data, shuffle=True), "conv", progress=False)
    with pytest.raises(InputError, match="positive integer"):
        scan(model, data, "conv", k=0, progress=False)
    with pytest.raises(LayerError, match="nope"):
        scan(model, data, ["nope"], progress=False)
    with pytest.raises(InputError, match="empty"):
        scan(model, torch.utils.data.TensorDataset(torch.zeros(0, 3, 16, 16)), progress=False)
    with pytest.raises(LayerError, match="not scanned"):
        scan(model, data, ["0"], k=2, progress=False)["4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gloo_processes_equal_one_process_bit_for_bit(tmp_path):
    out = tmp_path / "res"
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE="2",
        OMP_NUM_THREADS="1",
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "_scan_worker.py"), str(out)],
            cwd=ROOT,
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    # The workers run with one thread (OMP_NUM_THREADS=1); the reference must too, or the
    # float32 sums may be ordered differently and "bit for bit" depends on the machine's cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = scan(scan_model(), scan_data(), "conv", k=5, batch_size=6, progress=False)
    finally:
        torch.set_num_threads(threads)
    for r in range(2):
        got = torch.load(f"{out}.rank{r}", weights_only=True)
        assert got["_images"] == len(scan_data())
        for name in ref.layers:
            v, i, p = got[name]
            assert torch.equal(v, ref[name].values), name
            assert torch.equal(i, ref[name].indices), name
            assert torch.equal(p, ref[name].positions), name


def test_max_images_are_spread_evenly_over_the_dataset():
    assert spread(12, 5) == [0, 2, 4, 7, 9]  # p * 12 // 5
    assert spread(1000, 10) == list(range(0, 1000, 100))  # one per class of a sorted dataset
    assert spread(5, 5) is None and spread(5, 9) is None and spread(5, None) is None
