"""``nscompile serve``: the cloud side, a KServe v2 server over a build's ``cloud/``.

The repository is also a valid Triton Inference Server model repository
(``tritonserver --model-repository build/NAME/cloud``; a build made with
``--triton-backend python`` runs on Triton's Python backend, e.g. the ``tritonserver`` of the
``nvidia-pytriton`` wheel, see :mod:`nscompile.serve.triton_env`). Against Triton, SplitRunner
works unchanged (binary infer, ``/config`` for the model hash) but Triton sends no
``nscompile-load`` header and has no ``/v2/nscompile/*`` endpoints, so the runner starts from
``initial_bandwidth_mbps``, refines the bandwidth from its own transfers, and reads the load
from Triton itself (:mod:`nscompile.runtime.triton_load`, re-read about once a second):

- recent slowdown: ``GET /v2/models/stats`` polled twice; with d = the difference between the
  polls, per-request time = (d queue.ns + d compute.ns) / d success.count, against the fastest
  per-request compute seen (Triton runs each model in its own instances, so queueing is what
  other clients add). ``nscompile serve`` answers the same ``/stats`` endpoint, so the same
  poller works against both;
- queue pressure, where the metrics endpoint answers (``:8002/metrics`` beside ``:8000``):
  ``nv_inference_pending_request_count{model=...}``; K_queue = (pending + 1) / instance count,
  as here;
- RTT: time ``GET /v2/health/ready``.

On SIGTERM the server drains (:mod:`nscompile.serve.drain`): not ready, still answering for
``drain_s`` seconds, then it finishes what is in flight and exits 0.

Usage:

    from nscompile.serve import create_app, serve
    serve("build/alexnet/cloud", host="0.0.0.0", port=8000, workers=2)
"""

from __future__ import annotations

from pathlib import Path

#: Seconds a stopping server gives the requests still in flight (after the drain period).
GRACEFUL_SHUTDOWN_S = 30


def create_app(repository: str | Path, **options):
    """Build the FastAPI application; see :func:`nscompile.serve.app.create_app`."""
    from nscompile.serve.app import create_app as _create

    return _create(repository, **options)


def serve(
    repository: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "warning",
    **options,
) -> None:
    """Serve a repository until interrupted.

    Args:
        repository: the ``cloud/`` directory of a build.
        host: address to bind.
        port: TCP port.
        workers: server processes (each loads its own sessions and reports its own load).
        log_level: uvicorn's log level.
        **options: passed to :func:`nscompile.serve.app.create_app` (max_body_bytes,
            concurrency, max_queue, threads, drain_s: seconds to keep answering after
            SIGTERM, see :mod:`nscompile.serve.drain`).

    Raises:
        NscompileError: the repository is missing or broken (checked before binding).
    """
    import json
    import os

    import uvicorn

    from nscompile.serve.app import ENV_OPTIONS, create_app as _create
    from nscompile.serve.http_limits import http_protocol
    from nscompile.serve.repository import read_repository

    read_repository(repository)  # fail with a clear message before any worker starts
    if workers <= 1:
        uvicorn.run(_create(repository, **options), host=host, port=port, log_level=log_level,
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, http=http_protocol())
        return
    from uvicorn.supervisors import Multiprocess

    # Several processes need an import string; the options travel in the environment.
    os.environ[ENV_OPTIONS] = json.dumps({"repository": str(Path(repository).resolve()), **options})
    config = uvicorn.Config(
        "nscompile.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers, log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, http=http_protocol(),
    )
    Multiprocess(config, sockets=[tcp_socket(host, port)]).run()


def tcp_socket(host: str, port: int):
    """A bound listening-ready TCP socket whose accepted connections get TCP_NODELAY.

    uvicorn's own multi-worker socket is made with protocol 0, so asyncio skips
    TCP_NODELAY on its connections; a response written as headers then body then
    waits ~40 ms for the client's delayed ACK (Nagle). Creating the socket with
    IPPROTO_TCP avoids that.
    """
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        from nscompile.errors import NscompileError

        raise NscompileError(f"cannot listen on {host}:{port} ({exc}); pick another --port or --host") from None
    sock.set_inheritable(True)
    return sock
