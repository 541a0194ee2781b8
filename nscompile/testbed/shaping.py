"""The device's side of the emulated link, in user space: round-trip time and, as a fallback, bandwidth.

This kernel has no netem, so the round-trip time is always added here: an httpx
transport that waits ``rtt_ms`` before each request goes out. The device keeps one
HTTP/1.1 connection open, so one request-response exchange costs one round trip, as on
a real link after the handshake.

Bandwidth is shaped by ``tc tbf`` on the veth link when the testbed has root and
namespaces (:mod:`nscompile.testbed.link`). Without them this transport also shapes:
it delays the request by ``body bytes * 8 / uplink`` and the answer by
``body bytes * 8 / downlink``, the transfer times of a link of that rate with no
slow start or header overhead.

Only httpx and the standard library: it runs on the (emulated) device.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx

#: Bytes of HTTP headers added to each transfer (rough, both directions similar).
HEADER_BYTES = 200


class LinkState:
    """The conditions the transport applies; change them at any time from any thread.

    Attributes:
        rtt_ms: added round-trip time.
        up_mbps, down_mbps: user-space shaping rates (None: not shaped here, e.g. tc does it).
    """

    def __init__(self, rtt_ms: float = 0.0, up_mbps: float | None = None, down_mbps: float | None = None):
        self._lock = threading.Lock()
        self.rtt_ms, self.up_mbps, self.down_mbps = rtt_ms, up_mbps, down_mbps

    def set(self, rtt_ms: float, up_mbps: float | None = None, down_mbps: float | None = None) -> None:
        """Switch to new conditions (effective from the next request)."""
        with self._lock:
            self.rtt_ms, self.up_mbps, self.down_mbps = float(rtt_ms), up_mbps, down_mbps

    def snapshot(self) -> tuple[float, float | None, float | None]:
        """(rtt_ms, up_mbps, down_mbps) as one consistent triple."""
        with self._lock:
            return self.rtt_ms, self.up_mbps, self.down_mbps


def transfer_s(nbytes: int, mbps: float | None) -> float:
    """Seconds to move ``nbytes`` at ``mbps`` (0 when not shaped)."""
    if not mbps or mbps <= 0:
        return 0.0
    return nbytes * 8.0 / (mbps * 1e6)


class EmulatedLinkTransport(httpx.BaseTransport):
    """An httpx transport that adds the link's RTT (and, in fallback mode, its transfer times).

    Args:
        state: the conditions to apply.
        inner: the real transport (default: HTTPTransport with TCP_NODELAY).
    """

    def __init__(self, state: LinkState, inner: httpx.BaseTransport | None = None):
        self.state = state
        self.inner = inner or httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        rtt_ms, up, down = self.state.snapshot()
        body = request.read()
        # Waiting before sending stands for both half-trips: the answer cannot come sooner either way.
        delay = rtt_ms / 1000.0 + transfer_s(len(body) + HEADER_BYTES, up)
        if delay > 0:
            time.sleep(delay)
        response = self.inner.handle_request(request)
        try:
            content = response.read()
        finally:
            response.close()
        wait = transfer_s(len(content) + HEADER_BYTES, down)
        if wait > 0:
            time.sleep(wait)
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in ("content-encoding", "transfer-encoding", "content-length")]
        return httpx.Response(response.status_code, headers=headers, content=content, request=request,
                              extensions={"http_version": response.extensions.get("http_version", b"HTTP/1.1")})

    def close(self) -> None:
        self.inner.close()


def make_client(state: LinkState, timeout_s: float = 120.0) -> httpx.Client:
    """An httpx client whose every request crosses the emulated link."""
    return httpx.Client(transport=EmulatedLinkTransport(state), timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)))
