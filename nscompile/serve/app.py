"""The HTTP server: KServe v2 / Open Inference Protocol over a Triton-layout repository.

Endpoints (Triton's spelling, so tritonclient and KServe clients work unchanged):

- ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready`` (503 while draining after SIGTERM,
  see :mod:`nscompile.serve.drain`)
- ``GET /v2/models/{m}[/versions/{v}]``, ``.../ready``, ``.../config`` (model configuration
  extension: the JSON form of config.pbtxt, with the ``nscompile_model_sha256`` parameter
  devices check), ``.../stats`` and ``/v2/models/stats`` (statistics extension subset)
- ``POST /v2/models/{m}[/versions/{v}]/infer`` with the binary tensor data extension
- ``POST /v2/repository/index``, ``POST /v2/repository/models/{m}/load`` and ``.../unload``
  (Triton's model repository extension: create the session now, or drop it to free its memory)
- ``GET /v2/nscompile/load``: ``{"load", "slowdown", "in_flight", "queue_depth", "concurrency"}``;
  ``POST /v2/nscompile/probe``: swallows the body (uplink bandwidth probe) and answers the same.

Every infer answer carries ``nscompile-load`` (slowdown factor K >= 1, see
:mod:`nscompile.serve.load`), ``nscompile-inflight`` and ``nscompile-server-ms`` (queue +
compute time of this request) headers, so a device learns the load for free.

Requests are checked before any work: body size against the cap (413, from
Content-Length before reading), JSON header, tensor names, datatypes, shapes and byte
counts against the model's metadata (400), unknown model or version (404). Inference
runs on a bounded thread pool; admission beyond ``max_queue`` in-flight requests gets a
503 with Retry-After, so one flood cannot stall health checks or other clients.

Sessions are created when the server starts (a model that fails to load answers 503 to
``ready`` and to infer, and the others serve as usual), or on first use where the ASGI
lifespan does not run (in-thread test servers) and for the models ``preload`` leaves out
(a repository larger than memory, such as the testbed's oracle candidates: they are
loaded and unloaded through the repository endpoints). A model loaded while other
requests were in flight profiled its idle time on a busy server, so its requests do not
feed the load report.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import zlib
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

import nscompile
from nscompile.errors import NscompileError
from nscompile.runtime.contract import INFLIGHT_HEADER, LOAD_HEADER, LOAD_PATH, PROBE_PATH, SERVER_MS_HEADER
from nscompile.runtime.protocol import HEADER_LENGTH, ProtocolError, encode_response, read_tensors, split_body
from nscompile.serve.cors import add_cors
from nscompile.serve.drain import CloseWhileDraining, Drain
from nscompile.serve.load import LoadTracker
from nscompile.serve.repository import ModelEntry, read_repository

ENV_OPTIONS = "NSCOMPILE_SERVE_OPTIONS"
logger = logging.getLogger("uvicorn.error")


def _error(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read_body(request: Request, cap: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise ProtocolError(f"Content-Length {length!r} is not an integer") from None
        if n > cap:
            raise ProtocolError(f"the body has {n} bytes, over the server's cap of {cap}; send a smaller request", 413)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise ProtocolError(f"the body is over the server's cap of {cap} bytes; send a smaller request", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):
        d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            body = d.decompress(body, cap + 1)
        except zlib.error as exc:
            raise ProtocolError(f"the {encoding} body does not decompress ({exc})") from None
        if len(body) > cap or d.unconsumed_tail:
            raise ProtocolError(f"the decompressed body is over the server's cap of {cap} bytes", 413)
    elif encoding != "identity":
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none", 415)
    return body


def _check_inputs(entry: ModelEntry, header: dict, tensors: dict[str, np.ndarray]) -> None:
    expected = {t.name: t for t in entry.inputs}
    for name in tensors:
        if name not in expected:
            raise ProtocolError(f"model {entry.name!r} has no input {name!r}; its inputs are {sorted(expected)}")
    for name, meta in expected.items():
        if name not in tensors:
            raise ProtocolError(f"model {entry.name!r} needs input {name!r}; send all of {sorted(expected)}")
        a = tensors[name]
        given = next(e["datatype"] for e in header["inputs"] if e["name"] == name)
        if given != meta.datatype:
            raise ProtocolError(f"input {name!r} of model {entry.name!r} is {meta.datatype}, not {given}")
        if not meta.accepts(a.shape):
            raise ProtocolError(f"input {name!r} of model {entry.name!r} has shape {list(meta.shape)}, not {list(a.shape)}")


def _requested_outputs(entry: ModelEntry, header: dict) -> dict[str, bool]:
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    default_binary = bool(params.get("binary_data_output", False))
    names = {t.name for t in entry.outputs}
    wanted = header.get("outputs")
    if wanted is None:
        return {t.name: default_binary for t in entry.outputs}
    if not isinstance(wanted, list):
        raise ProtocolError("'outputs' must be a list")
    out = {}
    for w in wanted:
        if not isinstance(w, dict) or w.get("name") not in names:
            name = w.get("name") if isinstance(w, dict) else w
            raise ProtocolError(f"model {entry.name!r} has no output {name!r}; its outputs are {sorted(names)}")
        p = w.get("parameters") or {}
        out[w["name"]] = bool(p.get("binary_data", default_binary)) if isinstance(p, dict) else default_binary
    return out


def create_app(
    repository: str | Path,
    *,
    max_body_bytes: int = 64 << 20,
    concurrency: int | None = None,
    max_queue: int = 64,
    threads: int | None = None,
    providers: list | None = None,
    slowdown_floor_ms: float = 1.0,
    drain_s: float = 0.0,
    cors_origins: list[str] | tuple[str, ...] = (),
    preload: list[str] | tuple[str, ...] | None = None,
) -> FastAPI:
    """Build the server application for a model repository.

    Args:
        repository: the ``cloud/`` directory of a build (Triton layout).
        max_body_bytes: requests with a larger body get 413.
        concurrency: inferences computed at the same time (default: CPU count, at most 4).
        max_queue: in-flight requests admitted before answering 503.
        threads: onnxruntime intra-op threads per session (default: onnxruntime's).
        providers: onnxruntime execution providers (default: CPU).
        slowdown_floor_ms: added to both sides of the slowdown ratio, so that jitter on a
            sub-millisecond model does not read as load (see nscompile.serve.load).
        drain_s: after SIGTERM, answer this long (not ready) before shutting down
            (see nscompile.serve.drain); 0 stops at once.
        cors_origins: origins whose pages may call the server (see nscompile.serve.cors);
            empty: no CORS headers.
        preload: the models to load at start-up (None: all); the others load on first use
            or ``POST /v2/repository/models/NAME/load``.

    Returns:
        The FastAPI application (``app.state.models``, ``app.state.load``, ``app.state.drain``
        for inspection).

    Raises:
        NscompileError: the repository is missing or broken.
    """
    models = read_repository(repository)
    unknown = sorted(set(preload or ()) - set(models))
    if unknown:
        raise NscompileError(f"--preload names {unknown[0]!r}, which {repository} does not hold; use one of {sorted(models)}")
    concurrency = concurrency or min(4, os.cpu_count() or 1)
    providers = providers or ["CPUExecutionProvider"]
    load = LoadTracker(concurrency, floor_ms=slowdown_floor_ms)
    limiter = anyio.CapacityLimiter(concurrency)
    drain = Drain(drain_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        for entry in models.values():
            if preload is not None and entry.name not in preload:
                continue
            try:
                await anyio.to_thread.run_sync(entry.ensure_loaded, providers, threads)
            except NscompileError as exc:  # kept in entry.load_error: this model is unavailable, the rest serve
                logger.warning("%s", exc)
        watcher = asyncio.get_running_loop().create_task(drain.watch()) if drain.install() else None
        yield
        if watcher is not None:
            watcher.cancel()

    app = FastAPI(title="nscompile serve", version=nscompile.__version__, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.models, app.state.load, app.state.drain = models, load, drain
    app.add_middleware(CloseWhileDraining, drain=drain)
    add_cors(app, cors_origins)

    @app.exception_handler(ProtocolError)
    async def _protocol_error(_: Request, exc: ProtocolError):
        return _error(str(exc), exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):  # no such route or method: the same JSON shape
        return _error(f"{exc.detail}: {request.method} {request.url.path}", exc.status_code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        return _error(f"malformed request: {exc.errors()[:1]}", 400)

    def model(name: str, version: str | None = None) -> ModelEntry:
        entry = models.get(name)
        if entry is None:
            raise ProtocolError(f"unknown model {name!r}; this server has {sorted(models)}", 404)
        if version not in (None, "", entry.version):
            raise ProtocolError(f"model {name!r} has no version {version!r}; it has {entry.version}", 404)
        return entry

    @app.get("/v2")
    async def server_metadata():
        return {
            "name": "nscompile",
            "version": nscompile.__version__,
            "extensions": ["binary_tensor_data", "model_repository", "model_configuration", "statistics", "nscompile_load"],
        }

    @app.get("/v2/health/live")
    async def live():
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready():
        return Response(status_code=503 if drain.draining else 200)

    @app.get(LOAD_PATH)
    async def load_report():
        return load.snapshot()

    @app.post(PROBE_PATH)
    async def probe(request: Request):
        body = await _read_body(request, max_body_bytes)
        return {**load.snapshot(), "received_bytes": len(body)}

    async def load_now(entry: ModelEntry, own: int) -> None:
        """Create ``entry``'s session off the event loop; ``own``: requests in flight that are this one."""
        busy = load.in_flight > own
        await anyio.to_thread.run_sync(entry.ensure_loaded, providers, threads)
        entry.counts_for_load = not (busy or load.in_flight > own)

    @app.post("/v2/repository/models/{name}/load")
    async def repository_load(name: str):
        entry = model(name)
        if entry.session is None:
            entry.load_error = None  # asked again: try again
            try:
                await load_now(entry, 0)
            except NscompileError as exc:
                return _error(str(exc), 400)
        return Response(status_code=200)

    @app.post("/v2/repository/models/{name}/unload")
    async def repository_unload(name: str):
        model(name).unload()
        return Response(status_code=200)

    @app.post("/v2/repository/index")
    async def index():
        return [
            {"name": m.name, "version": m.version, "state": "UNAVAILABLE" if m.load_error else "READY"}
            for m in models.values()
        ]

    def stats_json(entry: ModelEntry) -> dict:
        s = entry.stats
        return {
            "name": entry.name,
            "version": entry.version,
            "last_inference": s.last_inference_ms,
            "inference_count": s.success,
            "execution_count": s.success,
            "inference_stats": {
                "success": {"count": s.success, "ns": s.queue_ns + s.compute_ns},
                "fail": {"count": s.fail, "ns": 0},
                "queue": {"count": s.success, "ns": s.queue_ns},
                "compute_infer": {"count": s.success, "ns": s.compute_ns},
            },
            "nscompile_idle_ms": entry.idle_ms,
            "nscompile_best_ms": entry.best_ms,
        }

    @app.get("/v2/models/stats")
    async def all_stats():
        return {"model_stats": [stats_json(m) for m in models.values()]}

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):

        @app.get(prefix)
        async def metadata(name: str, version: str | None = None):
            return model(name, version).metadata()

        @app.get(prefix + "/ready")
        async def model_ready(name: str, version: str | None = None):
            entry = model(name, version)
            return Response(status_code=503 if entry.load_error or drain.draining else 200)

        @app.get(prefix + "/config")
        async def config(name: str, version: str | None = None):
            return model(name, version).config_json()

        @app.get(prefix + "/stats")
        async def stats(name: str, version: str | None = None):
            return {"model_stats": [stats_json(model(name, version))]}

        @app.post(prefix + "/infer")
        async def infer(name: str, request: Request, version: str | None = None):
            entry = model(name, version)
            if load.in_flight >= max_queue:
                return _error(f"server busy: {load.in_flight} requests in flight; retry later", 503, {"Retry-After": "1"})
            # Counted from when the body is in: a device uploading over a slow link is not
            # load on the server's compute, and must not push other devices off it.
            body = await _read_body(request, max_body_bytes)
            load.enter()
            try:
                return await _infer(entry, request, body)
            finally:
                load.exit()

    async def _infer(entry: ModelEntry, request: Request, body: bytes) -> Response:
        t0 = time.perf_counter()
        header_length = request.headers.get(HEADER_LENGTH)

        def decode():
            header, binary = split_body(body, header_length)
            tensors = read_tensors(header.get("inputs"), binary)
            _check_inputs(entry, header, tensors)
            return header, tensors, _requested_outputs(entry, header)

        if header_length is None and len(body) > 65536:
            # JSON "data" lists are slow to parse; keep them off the event loop.
            header, tensors, wanted = await anyio.to_thread.run_sync(decode)
        else:
            header, tensors, wanted = decode()
        if entry.session is None:
            try:
                await load_now(entry, 1)
            except NscompileError as exc:
                return _error(str(exc), 503)
        session = entry.session
        started = []

        def compute():
            started.append(time.perf_counter())
            load.running += 1
            try:
                return session.run(list(wanted), tensors)
            finally:
                load.running -= 1

        t1 = time.perf_counter()
        try:
            results = await anyio.to_thread.run_sync(compute, limiter=limiter)
        except Exception as exc:  # onnxruntime rejects a value the metadata cannot describe
            entry.stats.fail += 1
            return _error(f"model {entry.name!r} failed on this input: {str(exc)[:300]}", 400)
        t2 = time.perf_counter()
        queue_ms, compute_ms = (started[0] - t1) * 1e3, (t2 - started[0]) * 1e3
        s = entry.stats
        s.success += 1
        s.queue_ns += int(queue_ms * 1e6)
        s.compute_ns += int(compute_ms * 1e6)
        s.last_inference_ms = int(time.time() * 1000)
        reference = entry.idle_reference(queue_ms + compute_ms)
        if entry.counts_for_load:
            load.record(reference, queue_ms + compute_ms)
        request_id = header.get("id") if isinstance(header.get("id"), str) else None
        out_body, head_len = encode_response(entry.name, entry.version, dict(zip(wanted, results)), wanted, request_id)
        headers = {
            LOAD_HEADER: f"{load.load(exclude_self=True):.4f}",
            INFLIGHT_HEADER: str(load.in_flight - 1),
            SERVER_MS_HEADER: f"{(time.perf_counter() - t0) * 1e3:.4f}",
        }
        if head_len is None:
            return Response(out_body, media_type="application/json", headers=headers)
        headers[HEADER_LENGTH] = str(head_len)
        return Response(out_body, media_type="application/octet-stream", headers=headers)

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` with several workers: options come from the environment."""
    options = json.loads(os.environ[ENV_OPTIONS])
    return create_app(options.pop("repository"), **options)
