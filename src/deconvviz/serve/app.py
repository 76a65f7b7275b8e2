"""The web app of ``deconvviz serve``: the HTTP API of ``docs/serve.md`` and the page.

Routes only: every answer is computed by :class:`~deconvviz.serve.explorer.Explorer` on the
:class:`~deconvviz.serve.worker.ModelWorker` thread. Requests may carry ``client`` (the page's
id) and ``seq`` (a number that grows with each request of one kind): a request whose turn comes
after a newer one of the same client and kind is answered ``409 superseded`` without being
computed. Bad input is a ``400`` whose JSON ``error`` is one line naming the valid values; an
unknown image is ``404``; a top-k asked for during the background scan is ``409`` with
``"scanning x/y"``.

Files are served only from the package's ``static/`` folder and the ``--atlas`` folder, through
Starlette's ``StaticFiles`` (which refuses paths that leave them); dataset images are addressed
by index, never by path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from deconvviz.base.errors import DeconvvizError
from deconvviz.serve.explorer import MAX_UPLOAD_BYTES, Explorer, NotFound, NotReady
from deconvviz.serve.worker import ModelWorker, Superseded

__all__ = ["create_app", "static_dir"]


def static_dir() -> Path:
    """The page's files (``index.html``, ``app.js``, ``style.css``), shipped as package data."""
    return Path(str(resources.files("deconvviz.serve").joinpath("static")))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def _int(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise DeconvvizError(f"{name} must be an integer, got {raw!r}") from None


def _position(request: Request) -> tuple[int, int] | None:
    raw = request.query_params.get("position")
    if not raw:
        return None
    try:
        r, c = (int(v) for v in raw.split(","))
    except ValueError:
        raise DeconvvizError(f"position must be ROW,COL, got {raw!r}") from None
    return (r, c)


def _form_file(content_type: str, body: bytes) -> bytes:
    """The first file part of a ``multipart/form-data`` body (``curl -F file=@photo.jpg``).

    A plain split on the boundary (RFC 7578): the body is already within the upload's byte
    limit, and the part's bytes then go through the same checks as a raw upload.
    """
    from email.message import Message

    how = "send the image with curl -F file=@photo.jpg, or as the raw request body"
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise DeconvvizError(f"the multipart/form-data upload has no boundary; {how}")
    delimiter = b"--" + boundary.encode("latin-1")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = [
            line for line in head.split(b"\r\n") if line.lower().startswith(b"content-disposition:")
        ]
        if disposition and b"filename" in disposition[0].lower():
            # the part's bytes end with the CRLF that precedes the next delimiter
            return content[:-2] if content.endswith(b"\r\n") else content
    raise DeconvvizError(f"the multipart/form-data upload holds no file part; {how}")


def _stream(request: Request, kind: str) -> tuple[str | None, int | None]:
    client = request.query_params.get("client")
    seq = _int(request, "seq")
    return (f"{client}/{kind}" if client else None), seq


ENDPOINTS = (
    "/api/model, /api/images, /api/images/{id}.png, /api/upload (POST), /api/predict, "
    "/api/activations, /api/projection, /api/topk, /api/occlusion"
)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods: JSON under ``/api/`` (as every API error), Starlette's
    plain text elsewhere (static files)."""
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith("/api/"):
        return PlainTextResponse(str(exc.detail), exc.status_code, headers=exc.headers)
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}; endpoints: {ENDPOINTS}"
    else:
        message = f"no endpoint {request.url.path}; endpoints: {ENDPOINTS}"
    return JSONResponse(
        {"error": message}, status_code=exc.status_code, headers=exc.headers or None
    )


def _guard(handler: Any) -> Any:
    """``handler`` as an endpoint whose errors are the API's JSON answers (409, 404, 400)."""

    async def endpoint(request: Request) -> Response:
        try:
            result: Response = await handler(request)
            return result
        except Superseded as exc:
            return _error(409, f"superseded: {exc}")
        except NotReady as exc:
            return _error(409, str(exc))
        except NotFound as exc:
            return _error(404, str(exc))
        except DeconvvizError as exc:
            return _error(400, str(exc))

    endpoint.__name__ = handler.__name__
    return endpoint


def _q(request: Request, name: str) -> Any:
    """A query parameter, or None; the explorer checks each one and names the valid values."""
    return request.query_params.get(name)


class _Api:
    """The endpoints of docs/serve.md over one explorer and the thread that runs its model."""

    def __init__(self, explorer: Explorer, work: ModelWorker) -> None:
        self.explorer, self.work = explorer, work

    async def run(self, fn: Any, *args: Any, request: Request | None = None, kind: str = "") -> Any:
        stream, seq = _stream(request, kind) if request is not None else (None, None)
        return await self.work.run(fn, *args, stream=stream, seq=seq)

    async def model(self, request: Request) -> Response:
        return JSONResponse(self.explorer.summary())

    async def images(self, request: Request) -> Response:
        offset, limit = _int(request, "offset", 0), _int(request, "limit", 60)
        assert offset is not None and limit is not None
        return JSONResponse(self.explorer.images(_q(request, "class"), offset, limit))

    async def image_png(self, request: Request) -> Response:
        # no model work: a thread of the pool, so thumbnails never wait behind the model
        png = await run_in_threadpool(self.explorer.image_png, request.path_params["image"])
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def upload(self, request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            return _error(
                413, f"the upload is {declared} bytes, over the {MAX_UPLOAD_BYTES} byte limit"
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_UPLOAD_BYTES:
                return _error(413, f"the upload is over the {MAX_UPLOAD_BYTES} byte limit")
        data = bytes(body)
        ctype = request.headers.get("content-type", "")
        if ctype.lower().startswith("multipart/form-data"):
            data = _form_file(ctype, data)
        key = await run_in_threadpool(self.explorer.add_upload, data)
        return JSONResponse({"id": key})

    async def predict(self, request: Request) -> Response:
        image = _q(request, "image")
        return JSONResponse(
            await self.run(self.explorer.predict, image, request=request, kind="predict")
        )

    async def activations(self, request: Request) -> Response:
        image, layer = _q(request, "image"), _q(request, "layer")
        out = await self.run(
            self.explorer.activations, image, layer, request=request, kind="activations"
        )
        return JSONResponse(out)

    async def projection(self, request: Request) -> Response:
        fmt = _q(request, "format") or "png"
        if fmt not in ("png", "json"):
            raise DeconvvizError(f"unknown format {fmt!r}; valid formats: png, json")

        def compute() -> tuple[Any, dict[str, Any], bytes | None]:
            rec, meta = self.explorer.projection(
                _q(request, "image"),
                _q(request, "layer"),
                _q(request, "unit"),
                _q(request, "rule") or "deconvnet",
                _position(request),
            )
            return rec, meta, self.explorer.projection_png(rec) if fmt == "png" else None

        rec, meta, png = await self.run(compute, request=request, kind="projection")
        if png is not None:
            headers = {
                "X-Deconvviz-Position": ",".join(str(v) for v in meta["position"]),
                "X-Deconvviz-Value": repr(meta["value"]),
            }
            return Response(png, media_type="image/png", headers=headers)
        arr = rec.detach().float().cpu().contiguous().numpy()
        meta.update(
            shape=list(arr.shape),
            dtype="float32",
            sha256=hashlib.sha256(arr.tobytes()).hexdigest(),
            values=arr.tolist() if arr.size <= 1_000_000 else None,
        )
        return JSONResponse(meta)

    async def topk(self, request: Request) -> Response:
        layer, unit = _q(request, "layer"), _q(request, "unit")
        rule = _q(request, "rule") or "deconvnet"
        out = await self.run(self.explorer.topk, layer, unit, rule, request=request, kind="topk")
        return JSONResponse(out)

    async def occlusion(self, request: Request) -> Response:
        plan = await self.run(
            self.explorer.occlusion_plan,
            _q(request, "image"),
            _q(request, "target") or "class",
            _q(request, "layer"),
            _q(request, "unit"),
            _q(request, "class"),
            _int(request, "size"),
            _int(request, "stride"),
        )
        return StreamingResponse(
            self._occlusion_events(request, plan),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    async def _occlusion_events(self, request: Request, plan: dict[str, Any]) -> AsyncIterator[str]:
        """The occlusion map as server-sent events: ``meta``, one ``row`` per occluder row as
        it is computed, then ``done`` (or ``stop`` when a newer request superseded it)."""
        stream, seq = _stream(request, "occlusion")
        meta = {k: v for k, v in plan.items() if k != "x"}
        yield f"event: meta\ndata: {json.dumps(meta)}\n\n"
        for r in range(len(plan["ys"])):
            if await request.is_disconnected():
                return
            try:
                row = await self.work.run(
                    self.explorer.occlusion_row, plan, r, stream=stream, seq=seq
                )
            except Superseded:
                yield 'event: stop\ndata: {"error": "superseded"}\n\n'
                return
            yield f"event: row\ndata: {json.dumps({'row': r, 'values': row})}\n\n"
        yield "event: done\ndata: {}\n\n"

    def routes(self) -> list[Any]:
        api = [
            ("/api/model", self.model),
            ("/api/images", self.images),
            ("/api/images/{image:str}.png", self.image_png),
            ("/api/predict", self.predict),
            ("/api/activations", self.activations),
            ("/api/projection", self.projection),
            ("/api/topk", self.topk),
            ("/api/occlusion", self.occlusion),
        ]
        routes: list[Any] = [Route("/", _index)]
        routes += [Route(path, _guard(handler)) for path, handler in api]
        routes += [
            Route("/api/upload", _guard(self.upload), methods=["POST"]),
            Mount("/static", StaticFiles(directory=static_dir()), name="static"),
        ]
        if self.explorer.atlas is not None:
            routes += [
                Route("/atlas", _atlas_root),
                Mount(
                    "/atlas", StaticFiles(directory=self.explorer.atlas, html=True), name="atlas"
                ),
            ]
        return routes


async def _index(request: Request) -> Response:
    return FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})


async def _atlas_root(request: Request) -> Response:
    return RedirectResponse("/atlas/index.html")


def create_app(
    explorer: Explorer,
    worker: ModelWorker | None = None,
    *,
    scan: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    allowed_hosts: list[str] | None = None,
) -> Starlette:
    """The Starlette app serving ``explorer``.

    Args:
        explorer: the model, data and top-k source.
        worker: the thread that runs model work (default: a new one, closed with the app).
        scan: start the background scan (when there is no atlas) on startup.
        cache_dir: where the scan keeps its resumable state (None: not kept).
        progress: show the scan's progress bar on stderr.
        allowed_hosts: answer only requests whose ``Host`` is one of these (``400`` otherwise):
            on a loopback address this stops a web page from reaching the server through DNS
            rebinding.
    """
    own = worker is None
    work = worker or ModelWorker(str(explorer.device))

    def shutdown() -> None:
        explorer.close()  # stops the scan (saving its state)
        if own:
            work.close()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if scan:
            explorer.start_scan(work.idle, cache_dir, progress=progress)
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, shutdown)

    middleware = []
    if allowed_hosts:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    app = Starlette(
        routes=_Api(explorer, work).routes(),
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={404: _http_error, 405: _http_error},
    )
    app.state.explorer = explorer
    app.state.worker = work
    return app
