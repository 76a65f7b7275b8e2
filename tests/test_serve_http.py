"""``deconvviz serve``'s HTTP API, through Starlette's test client, against independent oracles.

The served model is the shipped zfnet-cifar on the shipped 500-image sample. Every answer is
checked against a computation that does not go through the server: the network run module by
module (it is a plain chain up to ``pool5``), ``Deconvnet.project``, ``deconvviz.occlusion``
and a brute-force top-k over all 500 images.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("httpx")

with warnings.catch_warnings():  # starlette >= 1.0 prefers httpx2 for its client; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

import deconvviz  # noqa: E402
from deconvviz.serve.app import create_app  # noqa: E402
from deconvviz.serve.explorer import MAX_UPLOAD_BYTES, Explorer  # noqa: E402
from deconvviz.serve.worker import ModelWorker, Superseded  # noqa: E402
from deconvviz.sources.datasets import load_sample  # noqa: E402
from deconvviz.sources.pretrained import load_pretrained  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*starlette.testclient.*")

CHAIN = ["conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2", "pool2", "conv3", "bn3"]


def _chain(model, x, upto):
    """The network's output at ``upto``, run module by module (the oracle)."""
    with torch.no_grad():
        for name in CHAIN[: CHAIN.index(upto) + 1]:
            x = getattr(model, name)(x.clone())
    return x


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model, info = load_pretrained()
    data = load_sample()
    ex = Explorer(model, data, classes=info["classes"], title="zfnet-cifar")
    app = create_app(ex, cache_dir=tmp_path_factory.mktemp("cache"))
    with TestClient(app) as client:
        assert ex.wait_scan(120), ex.scan
        yield client, ex, model, data


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


def test_model_summary_lists_every_feature_map_layer(served):
    client, ex, model, _ = served
    s = client.get("/api/model").json()
    names = [layer["name"] for layer in s["layers"]]
    assert names[:7] == CHAIN[:7] and "relu5" in names and "fc6" not in names
    x = torch.zeros(1, 3, 32, 32)
    for layer in s["layers"][:8]:
        assert tuple(layer["shape"]) == tuple(_chain(model, x, layer["name"]).shape[1:])
    from deconvviz.engine.rules import rule_names

    assert s["rules"] == list(rule_names())
    assert s["classes"][0] == "airplane" and s["images"] == 500


def test_predict_is_the_softmax_top5(served):
    client, _, model, data = served
    x = data[7][0].unsqueeze(0)
    with torch.no_grad():
        p = torch.softmax(model.double()(x.double()), 1)[0]
    model.float()
    top = client.get("/api/predict?image=7").json()["top"]
    want = p.argsort(descending=True)[:5].tolist()
    assert [t["class"] for t in top] == want
    assert np.allclose([t["prob"] for t in top], p[want].numpy(), atol=1e-5)


def test_activations_give_every_map_its_max_and_position(served):
    client, _, model, data = served
    r = client.get("/api/activations?image=11&layer=relu2").json()
    maps = _chain(model, data[11][0].unsqueeze(0), "relu2")[0]
    c, h, w = maps.shape
    assert r["channels"] == c and r["map"] == [h, w]
    assert np.allclose(r["max"], maps.flatten(1).max(1).values.numpy(), atol=1e-5)
    for u in (0, 17, 99):
        row, col = r["position"][u]
        assert float(maps[u, row, col]) == pytest.approx(float(maps[u].max()), abs=1e-5)
    assert r["silent"] == [bool(v <= 0) for v in maps.flatten(1).max(1).values]
    assert isinstance(r["dead"], list)  # the scan is done
    from base64 import b64decode

    png = b64decode(r["grid"].split(",", 1)[1])
    assert _png_size(png) == (r["cols"] * (w + 1) - 1, r["rows"] * (h + 1) - 1)


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_projection_equals_deconvnet_project(served, rule):
    client, _, model, data = served
    r = client.get(f"/api/projection?image=5&layer=relu3&unit=12&rule={rule}&format=json").json()
    x = data[5][0].unsqueeze(0)
    maps = _chain(model, x, "bn3").clamp(min=0)[0, 12]
    a = int(maps.flatten().argmax())
    assert r["position"] == [a // maps.shape[1], a % maps.shape[1]]
    assert r["value"] == pytest.approx(float(maps.max()), abs=1e-5)
    with deconvviz.attach(model, rule=rule) as dn:
        want = dn.project(x, "relu3", 12, position=tuple(r["position"]))[0]
    got = np.asarray(r["values"], dtype=np.float32)
    assert got.shape == tuple(want.shape) and np.abs(got).max() > 0
    assert np.allclose(got, want.numpy(), atol=1e-6 * float(want.abs().max()))
    png = client.get(f"/api/projection?image=5&layer=relu3&unit=12&rule={rule}")
    assert png.headers["content-type"] == "image/png" and _png_size(png.content) == (32, 32)


def test_projection_at_a_given_position(served):
    client, _, model, data = served
    r = client.get("/api/projection?image=2&layer=relu1&unit=3&position=4,9&format=json").json()
    with deconvviz.attach(model) as dn:
        want = dn.project(data[2][0].unsqueeze(0), "relu1", 3, position=(4, 9))[0]
    assert r["position"] == [4, 9]
    assert np.allclose(np.asarray(r["values"]), want.numpy(), atol=1e-6)


def test_topk_is_the_brute_force_top9(served):
    client, _, model, data = served
    r = client.get("/api/topk?layer=relu2&unit=21").json()
    x = torch.stack([data[i][0] for i in range(len(data))])
    best = _chain(model, x, "relu2")[:, 21].flatten(1).max(1).values.double()
    order = sorted(range(len(best)), key=lambda i: (-float(best[i]), i))[:9]
    assert [e["image"] for e in r["top"]] == order
    assert np.allclose([e["value"] for e in r["top"]], best[order].numpy(), atol=1e-5)
    assert r["strip"].startswith("data:image/png;base64,") and r["source"] == "scan"


def test_topk_says_scanning_until_the_scan_is_done():
    model, _ = load_pretrained()
    ex = Explorer(model, load_sample("test"))
    with TestClient(create_app(ex, scan=False)) as client:
        r = client.get("/api/topk?layer=relu1&unit=0")
    assert r.status_code == 409 and r.json()["error"] == "scanning 0/100"


def _events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_occlusion_streams_the_rows_of_deconvviz_occlusion(served):
    client, _, model, data = served
    ev = _events(client.get("/api/occlusion?image=4&target=class&size=8&stride=4").text)
    assert ev[0][0] == "meta" and ev[-1][0] == "done"
    rows = [e[1]["values"] for e in ev if e[0] == "row"]
    want = deconvviz.occlusion(model, data[4][0].unsqueeze(0), size=8, stride=4, progress=False)
    assert ev[0][1]["cls"] == int(want.target[0])
    assert np.allclose(np.asarray(rows), want.prob[0].numpy(), atol=1e-5)
    # a unit: the total rectified activation of its map (bn2 rectified is relu2), by hand
    c = 7
    ev = _events(
        client.get(f"/api/occlusion?image=4&target=unit&layer=bn2&unit={c}&size=8&stride=4").text
    )
    rows = [e[1]["values"] for e in ev if e[0] == "row"]
    base = data[4][0].unsqueeze(0)
    starts = list(range(0, 25, 4))
    want_rows = []
    for y0 in starts:
        row = []
        for x0 in starts:
            xo = base.clone()
            xo[..., y0 : y0 + 8, x0 : x0 + 8] = 0.5
            row.append(float(_chain(model, xo, "relu2")[0, c].sum()))
        want_rows.append(row)
    assert np.allclose(np.asarray(rows), np.asarray(want_rows), rtol=1e-5, atol=1e-4)


def test_upload_of_a_dataset_image_predicts_the_same(served):
    from PIL import Image

    client, _, _, data = served
    arr = (data[9][0] * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    r = client.post("/api/upload", content=buf.getvalue())
    assert r.status_code == 200, r.text
    up = client.get(f"/api/predict?image={r.json()['id']}").json()
    ds = client.get("/api/predict?image=9").json()
    assert [t["class"] for t in up["top"]] == [t["class"] for t in ds["top"]]
    assert np.allclose([t["prob"] for t in up["top"]], [t["prob"] for t in ds["top"]])


def _bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (its data is never decoded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


BAD = [
    # (what, method, path, body, status, words in the one-line error)
    ("decompression bomb", "post", "/api/upload", _bomb(30000, 30000), 400, ["pixel limit"]),
    ("bomb under Pillow's limit", "post", "/api/upload", _bomb(8000, 8000), 400, ["pixel limit"]),
    ("not an image", "post", "/api/upload", b"hello, not an image", 400, ["not an image"]),
    ("empty upload", "post", "/api/upload", b"", 400, ["empty"]),
    ("too many bytes", "post", "/api/upload", b"0" * (MAX_UPLOAD_BYTES + 1), 413, ["limit"]),
    (
        "unknown layer",
        "get",
        "/api/activations?image=0&layer=nope",
        None,
        400,
        ["unknown layer", "relu1", "pool5"],
    ),
    (
        "unknown unit",
        "get",
        "/api/projection?image=0&layer=relu1&unit=64",
        None,
        400,
        ["unknown unit", "0..63"],
    ),
    ("unit not a number", "get", "/api/topk?layer=relu1&unit=x", None, 400, ["0..63"]),
    (
        "unknown rule",
        "get",
        "/api/projection?image=0&layer=relu1&unit=1&rule=lrp",
        None,
        400,
        ["unknown rule", "deconvnet", "guided", "gradient"],
    ),
    ("unknown image", "get", "/api/predict?image=500", None, 400, ["0..499"]),
    ("image as a path", "get", "/api/predict?image=../../etc/passwd", None, 400, ["0..499"]),
    ("upload id unknown", "get", "/api/predict?image=u0123", None, 404, ["upload it again"]),
    (
        "position outside",
        "get",
        "/api/projection?image=0&layer=relu1&unit=1&position=40,0",
        None,
        400,
        ["outside"],
    ),
    (
        "bad occlusion target",
        "get",
        "/api/occlusion?image=0&target=pixel",
        None,
        400,
        ["class, unit"],
    ),
    ("unknown class", "get", "/api/images?class=zebra", None, 400, ["airplane"]),
    (
        "bad format",
        "get",
        "/api/projection?image=0&layer=relu1&unit=1&format=svg",
        None,
        400,
        ["png, json"],
    ),
    # 0 and negatives are refused, not replaced by the defaults
    ("occluder size 0", "get", "/api/occlusion?image=0&size=0", None, 400, ["size", "1..32"]),
    ("occluder size -3", "get", "/api/occlusion?image=0&size=-3", None, 400, ["size", "1..32"]),
    ("stride 0", "get", "/api/occlusion?image=0&size=8&stride=0", None, 400, ["stride", "1..32"]),
    ("occluder too big", "get", "/api/occlusion?image=0&size=100", None, 400, ["size", "1..32"]),
    ("negative limit", "get", "/api/images?limit=-5", None, 400, ["limit", "1..500"]),
    ("zero limit", "get", "/api/images?limit=0", None, 400, ["limit", "1..500"]),
    ("negative offset", "get", "/api/images?offset=-1", None, 400, ["offset", "0 or more"]),
    # a missing required parameter is named as missing, with what to give
    ("no layer", "get", "/api/activations?image=0", None, 400, ["layer is missing", "relu1"]),
    ("empty layer", "get", "/api/topk?layer=&unit=1", None, 400, ["layer is missing"]),
    ("no layer, topk", "get", "/api/topk?unit=1", None, 400, ["layer is missing", "relu1"]),
    ("no unit", "get", "/api/topk?layer=relu1", None, 400, ["unit is missing", "0..63"]),
    (
        "no unit, projection",
        "get",
        "/api/projection?image=0&layer=relu1",
        None,
        400,
        ["unit is missing", "0..63"],
    ),
    ("no image", "get", "/api/predict", None, 400, ["image is missing", "0..499"]),
    (
        "no image, projection",
        "get",
        "/api/projection?layer=relu1&unit=1",
        None,
        400,
        ["image is missing"],
    ),
    ("no image, activations", "get", "/api/activations?layer=relu1", None, 400, ["missing"]),
    ("no image, occlusion", "get", "/api/occlusion", None, 400, ["image is missing"]),
    (
        "no layer, occlusion",
        "get",
        "/api/occlusion?image=0&target=unit&unit=1",
        None,
        400,
        ["layer is missing"],
    ),
    (
        "no unit, occlusion",
        "get",
        "/api/occlusion?image=0&target=unit&layer=relu1",
        None,
        400,
        ["unit is missing"],
    ),
    ("text upload", "post", "/api/upload", b"just some text\n", 400, ["PNG, JPEG"]),
    (
        "truncated PNG",
        "post",
        "/api/upload",
        _bomb(8, 8)[:40],
        400,
        ["not an image Pillow can read"],
    ),
    ("unknown endpoint", "get", "/api/nope", None, 404, ["/api/nope", "/api/projection"]),
    ("unknown nested endpoint", "get", "/api/model/x/y", None, 404, ["/api/model/x/y"]),
    ("wrong method", "get", "/api/upload", None, 405, ["GET", "/api/upload (POST)"]),
    ("wrong method, POST", "post", "/api/model", b"", 405, ["POST"]),
]


@pytest.mark.parametrize("what,method,path,body,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_naming_the_fix(served, what, method, path, body, status, words):
    client = served[0]
    r = client.post(path, content=body) if method == "post" else client.get(path)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert "\n" not in err and "Traceback" not in err
    for w in words:
        assert w in err, (what, err)
    # no Python reprs leak into a message: None, <... object at 0x...>
    assert "None" not in err and " at 0x" not in err and "BytesIO" not in err, (what, err)


def _form(parts: list[tuple[str, str | None, bytes]], boundary: str) -> bytes:
    """A multipart/form-data body as curl -F writes it: (name, filename, content) parts."""
    out = b""
    for name, filename, content in parts:
        out += f"--{boundary}\r\n".encode()
        disp = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disp += f'; filename="{filename}"'
        out += disp.encode() + b"\r\n"
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_a_form_upload_takes_its_file_part_as_a_raw_upload_would(served):
    from PIL import Image

    client, _, _, data = served
    arr = (data[9][0] * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    # the file holds CRLFs and dashes near its ends, as binary files do
    assert b"\xff\xd9" in jpeg[-2:]
    raw = client.post("/api/upload", content=jpeg)
    assert raw.status_code == 200, raw.text
    boundary = "------------------------d74496d66958873e"
    body = _form([("note", None, b"a field\r\n--x"), ("file", "photo.jpg", jpeg)], boundary)
    form = client.post(
        "/api/upload",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert form.status_code == 200, form.text
    # the same bytes give the same id (a digest of the decoded image)
    assert form.json()["id"] == raw.json()["id"]
    # and through the client's own form encoder (as curl -F does)
    again = client.post("/api/upload", files={"file": ("photo.jpg", jpeg, "image/jpeg")})
    assert again.status_code == 200 and again.json()["id"] == raw.json()["id"], again.text
    # a form without a file part, or without a boundary: one line saying what to send
    bad = client.post(
        "/api/upload",
        content=_form([("note", None, b"x")], boundary),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert bad.status_code == 400 and "no file part" in bad.json()["error"]
    bad = client.post("/api/upload", content=body, headers={"content-type": "multipart/form-data"})
    assert bad.status_code == 400 and "boundary" in bad.json()["error"]
    # the byte cap holds for a form upload too
    big = _form([("file", "big.bin", b"0" * MAX_UPLOAD_BYTES)], boundary)
    r = client.post(
        "/api/upload",
        content=big,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413, r.text


def test_static_404s_stay_plain_text(served):
    r = served[0].get("/static/nope.js")
    assert r.status_code == 404 and r.text == "Not Found"


TRAVERSAL = [
    "/api/images/..%2F..%2F..%2Fetc%2Fpasswd.png",
    "/api/images/%2Fetc%2Fpasswd.png",
    "/static/../../../../../etc/passwd",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/../app.py",
    "/static/..%2Fapp.py",
    "/atlas/../../etc/passwd",
    "/../../etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSAL)
def test_no_request_reads_outside_the_served_folders(served, path):
    r = served[0].get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert b"root:" not in r.content and b"create_app" not in r.content


def test_the_page_and_its_files_are_served(served):
    client = served[0]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # offline: no CDN
    js = client.get("/static/app.js").text
    assert "AbortController" in js and "pushState" in js and "EventSource" in js


def test_the_worker_drops_a_superseded_request():
    worker = ModelWorker("test")
    gate = threading.Event()
    try:
        blocker = worker.submit(gate.wait)
        old = worker.submit(lambda: "old", stream="tab/projection", seq=1)
        other = worker.submit(lambda: "other", stream="tab/topk", seq=1)
        new = worker.submit(lambda: "new", stream="tab/projection", seq=2)
        assert not worker.idle.is_set()
        gate.set()
        blocker.result(10)
        with pytest.raises(Superseded):
            old.result(10)
        assert new.result(10) == "new" and other.result(10) == "other"
        assert worker.dropped == 1
        worker.idle.wait(10)
        assert worker.idle.is_set()
    finally:
        gate.set()
        worker.close()


def test_no_hook_is_left_on_the_model_after_the_server_stops():
    model, info = load_pretrained()
    ex = Explorer(model, load_sample("test"), classes=info["classes"])
    with TestClient(create_app(ex, scan=False)) as client:
        assert client.get("/api/projection?image=0&layer=relu2&unit=3").status_code == 200
        assert client.get("/api/activations?image=0&layer=relu2").status_code == 200
        ev = client.get("/api/occlusion?image=0&target=unit&layer=relu2&unit=3&size=16&stride=16")
        assert ev.text.rstrip().endswith("{}")
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), m
        assert not getattr(m, "_backward_pre_hooks", None), m
    assert not torch.nn.modules.module._global_forward_hooks
    assert all(p.grad is None for p in model.parameters())


def test_atlas_gives_the_topk_and_links_its_pages(tmp_path):
    from deconvviz.analyses.scan import project_layer, scan
    from deconvviz.export.atlas import write_atlas

    model, _ = load_pretrained()
    data = load_sample("test")
    res = scan(model, data, ["relu1"], 4, progress=False)
    write_atlas(tmp_path, res, [project_layer(model, data, res["relu1"], progress=False)])
    ex = Explorer(model, data, atlas=tmp_path)
    with TestClient(create_app(ex)) as client:
        r = client.get("/api/topk?layer=relu1&unit=6").json()
        assert [e["image"] for e in r["top"]] == res["relu1"].indices[6].tolist()
        assert r["source"] == "atlas" and r["atlas_page"] == "units/relu1/6.html"
        page = client.get(f"/atlas/{r['atlas_page']}")
        assert page.status_code == 200 and "unit 6" in page.text
        other = client.get("/api/topk?layer=relu2&unit=0")
        assert other.status_code == 400 and "relu1" in other.json()["error"]
        assert client.get("/atlas/../../../etc/passwd").status_code == 404


def test_a_request_superseded_by_a_newer_one_from_the_page_is_not_computed():
    model, info = load_pretrained()
    ex = Explorer(model, load_sample("test"), classes=info["classes"])
    app = create_app(ex, scan=False)
    gate = threading.Event()
    answers: dict[int, tuple[int, str]] = {}
    with TestClient(app) as client:
        worker = app.state.worker
        blocker = worker.submit(gate.wait)  # the model is busy

        def ask(seq: int, unit: int) -> None:
            r = client.get(f"/api/projection?image=1&layer=relu2&unit={unit}&client=tab1&seq={seq}")
            answers[seq] = (r.status_code, r.text[:200])

        old = threading.Thread(target=ask, args=(1, 3))
        old.start()
        while worker.idle.is_set() or worker._pending < 2:  # the old request is queued
            gate.wait(0.01)
        new = threading.Thread(target=ask, args=(2, 4))
        new.start()
        while worker._pending < 3:
            gate.wait(0.01)
        done_before = worker.done
        gate.set()
        blocker.result(30)
        old.join(30)
        new.join(30)
    assert answers[1][0] == 409 and "superseded" in answers[1][1]
    assert answers[2][0] == 200
    assert worker.dropped == 1 and worker.done - done_before == 2  # the blocker, the newer one


def test_on_loopback_other_host_names_are_refused():
    model, _ = load_pretrained()
    ex = Explorer(model, load_sample("test"))
    app = create_app(ex, scan=False, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/api/model").status_code == 200
        assert client.get("/api/model", headers={"Host": "evil.example"}).status_code == 400


def test_the_background_scan_resumes_after_a_stop_and_equals_a_fresh_scan(tmp_path, capfd):
    import time

    from deconvviz.analyses.scan import _read_state, scan

    model, _ = load_pretrained()
    data = load_sample()
    idle = threading.Event()
    idle.set()
    first = Explorer(model, data)
    first.start_scan(idle, tmp_path, batch_size=16)
    deadline = time.monotonic() + 120
    while first.scan.done < 100:  # type: ignore[union-attr]
        assert time.monotonic() < deadline and first.scan.error is None, first.scan
        time.sleep(0.01)
    first.close()  # Ctrl-C: the scan stops and saves its state
    assert not first.scan.finished  # type: ignore[union-attr]
    saved = _read_state(Path(first.scan.state))["done"]  # type: ignore[union-attr, arg-type]
    assert 0 < saved < len(data)
    capfd.readouterr()

    second = Explorer(model, data)
    second.start_scan(idle, tmp_path, batch_size=16)
    while not second.scan.finished:  # type: ignore[union-attr]
        assert time.monotonic() < deadline and second.scan.error is None, second.scan
        time.sleep(0.005)
    # it went on from the saved state (after re-reading those images to check them)
    assert f"resuming from {saved} of {len(data)} images" in capfd.readouterr().err
    fresh = scan(model, data, list(second.layers), 9, progress=False)
    for layer in ("relu1", "relu5"):
        got, want = second._scan_result[layer], fresh[layer]
        assert torch.equal(got.indices, want.indices), layer
        assert torch.allclose(got.values, want.values), layer
    second.close()
