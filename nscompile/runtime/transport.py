"""The device's KServe v2 client: check the server's model hash, infer, probe the link.

Speaks the Open Inference Protocol with Triton's binary tensor extension
(:mod:`nscompile.runtime.protocol` encodes the bodies) to ``nscompile serve`` or Triton,
and reads what ``nscompile serve`` adds: the load headers and the ``/v2/nscompile/*``
probe endpoints (:mod:`nscompile.runtime.contract`). It only measures; what the
measurements mean for the estimates is :mod:`nscompile.runtime.policy`'s business.

Needs numpy and httpx only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import httpx
import numpy as np

from nscompile.errors import NscompileError
from nscompile.runtime.contract import LOAD_HEADER, LOAD_PATH, MODEL_SHA_PARAMETER, PROBE_PATH, SERVER_MS_HEADER
from nscompile.runtime.plan import MS_PER_BYTE_AT_1MBPS
from nscompile.runtime.protocol import HEADER_LENGTH, ProtocolError, decode_response, encode_request
from nscompile.runtime.triton_load import TritonLoad

#: What a failing, slow or foreign server raises; the runner absorbs these by running on
#: the device. (A server serving another build raises NscompileError instead: that is a
#: deployment mistake to report, not a failure to hide.)
SERVER_ERRORS = (httpx.HTTPError, ProtocolError, OSError, ValueError, KeyError, TypeError)


@dataclass
class Answer:
    """One infer call: the server's outputs and what the exchange took."""

    outputs: dict[str, np.ndarray]
    encode_ms: float
    post_ms: float  # request sent to answer received: transfers, RTT and the server's time
    server_ms: float | None  # the server's own time (``nscompile-server-ms``), None from Triton
    decode_ms: float
    download_bytes: int
    load: float | None  # the server's slowdown factor (``nscompile-load``), None from Triton


class V2Transport:
    """An inference server as one device sees it.

    Args:
        server_url: base URL, e.g. "http://10.0.0.2:8000".
        model_sha256: the hash of the model this device's plan was built from; every
            server model is checked against it before its first use.
        deadline_s: per-request timeout.
        client: an httpx.Client to use; one is made (and closed by :meth:`close`) if None.
        probe_bytes: (first, max) size of the uplink probe; it grows until one transfer
            takes at least ~20 ms.
        models: the server models this device uses, whose statistics give the load of a
            server that sends no load header (Triton; see :mod:`nscompile.runtime.triton_load`).
    """

    def __init__(self, server_url: str, model_sha256: str, deadline_s: float, client: httpx.Client | None = None,
                 probe_bytes: tuple[int, int] = (4096, 1 << 20), models: list[str] = ()):
        self.server_url = server_url.rstrip("/")
        self.model_sha256 = model_sha256
        self.deadline_s = deadline_s
        self.probe_bytes = probe_bytes
        #: False once the server turned out to have no nscompile probe endpoints (Triton).
        self.probe_supported = True
        self._own_client = client is None
        self._client = client or make_client(deadline_s)
        self._verified: set[str] = set()
        self.triton_load = TritonLoad(self._client, self.server_url, list(models), timeout_s=min(deadline_s, 2.0))

    def close(self) -> None:
        """Close the HTTP client if this transport made it."""
        if self._own_client:
            self._client.close()

    # -- models ----------------------------------------------------------------------

    def verify(self, model: str) -> None:
        """Refuse to pair this plan with a server model built from another network.

        Raises:
            NscompileError: the server does not serve `model`, or serves it from another build.
            One of SERVER_ERRORS: the server did not answer properly.
        """
        r = self._client.get(f"{self.server_url}/v2/models/{model}/config", timeout=self.deadline_s)
        if r.status_code == 404:
            raise NscompileError(
                f"server {self.server_url} does not serve model {model!r}; serve the cloud/ "
                "directory of the same build as this device/"
            )
        r.raise_for_status()
        params = r.json().get("parameters") or {}
        sha = (params.get(MODEL_SHA_PARAMETER) or {}).get("string_value")
        if sha != self.model_sha256:
            raise NscompileError(
                f"server model {model!r} was built from model sha256 {sha or 'unknown'}, this device's "
                f"plan from {self.model_sha256}; deploy device/ and cloud/ of the same build"
            )
        self._verified.add(model)

    def check_server(self, models: list[str]) -> None:
        """Verify every model in `models` now.

        Raises:
            NscompileError: the server is unreachable, or serves other artifacts.
        """
        for model in models:
            try:
                self.verify(model)
            except SERVER_ERRORS as exc:
                raise NscompileError(f"server {self.server_url} is not reachable ({exc}); start it or fix the URL") from None

    def infer(self, model: str, upload: dict[str, np.ndarray]) -> Answer:
        """Run `model` on the server with `upload` as its inputs; verified first on first use.

        Raises:
            NscompileError: the server serves another build's `model`.
            One of SERVER_ERRORS: the server failed; it is verified again next time.
        """
        try:
            if model not in self._verified:
                self.verify(model)
            t0 = time.perf_counter()
            body, headers = encode_request(upload)
            t1 = time.perf_counter()
            r = self._client.post(f"{self.server_url}/v2/models/{model}/infer", content=body, headers=headers,
                                  timeout=self.deadline_s)
            t2 = time.perf_counter()
            if r.status_code != 200:
                raise ProtocolError(f"server answered {r.status_code}: {r.text[:200]}")
            content = r.content
            _, outputs = decode_response(content, r.headers.get(HEADER_LENGTH))
            t3 = time.perf_counter()
        except SERVER_ERRORS:
            self._verified.clear()  # the server may come back with other artifacts
            raise
        return Answer(outputs, (t1 - t0) * 1e3, (t2 - t1) * 1e3, _float(r.headers.get(SERVER_MS_HEADER)),
                      (t3 - t2) * 1e3, len(content), _float(r.headers.get(LOAD_HEADER)))

    # -- probing ---------------------------------------------------------------------

    def ping(self, read_load: bool = True) -> tuple[float, float | None] | None:
        """Time a round trip and read the load: ``(rtt_ms, load or None)``; None if the server is not ready.

        Against ``nscompile serve`` this is its load report, timed twice (the first may pay
        for opening the connection); against any other server ``/v2/health/ready``, after
        which :attr:`probe_supported` is False, and the load from its statistics (two polls,
        :class:`~nscompile.runtime.triton_load.TritonLoad`) when `read_load`.

        Raises:
            One of SERVER_ERRORS: the server did not answer.
        """
        rtts = []
        for _ in range(2):
            t = time.perf_counter()
            r = self._client.get(self.server_url + LOAD_PATH, timeout=self.deadline_s)
            rtts.append((time.perf_counter() - t) * 1e3)
            if r.status_code != 200:
                break
        if r.status_code == 200:
            return min(rtts), _float(r.json().get("load")) or 1.0
        r = self._client.get(f"{self.server_url}/v2/health/ready", timeout=self.deadline_s)
        if r.status_code != 200:
            return None
        rtts.append(r.elapsed.total_seconds() * 1e3)
        self.probe_supported = False
        return min(rtts), self.triton_load.read() if read_load else None

    def measure_uplink(self, rtt_ms: float) -> float | None:
        """One uplink bandwidth sample in Mbit/s from timed uploads; None if the server refused them.

        The upload grows 4x from ``probe_bytes[0]`` until one takes 20 ms beyond the RTT
        (or reaches ``probe_bytes[1]``), then is sent once more: stalls only ever add
        time, so the faster of two equal transfers is the better sample. A 404 means the
        server has no probe endpoint (:attr:`probe_supported` turns False).

        Raises:
            One of SERVER_ERRORS: the server did not answer.
        """
        size, limit = self.probe_bytes
        times: list[float] = []
        for _ in range(16):  # bounded: sizes grow 4x up to `limit`, then one repeat
            payload = bytes(size)
            t = time.perf_counter()
            r = self._client.post(self.server_url + PROBE_PATH, content=payload, timeout=self.deadline_s)
            times.append((time.perf_counter() - t) * 1e3)
            if r.status_code != 200:
                self.probe_supported = r.status_code != 404
                return None
            if times[-1] - rtt_ms < 20.0 and size < limit:
                size, times = min(size * 4, limit), []
            elif len(times) == 2:
                break
        return size * MS_PER_BYTE_AT_1MBPS / max(min(times) - rtt_ms, 0.05)


def make_client(timeout_s: float = 5.0, **transport_options) -> httpx.Client:
    """An httpx client for talking to an inference server from a device.

    TCP_NODELAY matters: httpx writes a request's headers and body separately, and with
    Nagle's algorithm the body's last segment can wait ~40 ms for a delayed ACK.

    Args:
        timeout_s: the per-request timeout (connect: at most 2 s).
        **transport_options: passed to httpx.HTTPTransport.

    Returns:
        The client.
    """
    import socket

    options = list(transport_options.pop("socket_options", []))
    options.append((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
    return httpx.Client(
        transport=httpx.HTTPTransport(socket_options=options, **transport_options),
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 2.0)),
    )


def _float(value: object) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
