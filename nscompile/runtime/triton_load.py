"""Server load K from Triton's own statistics, for servers that send no ``nscompile-load`` header.

Triton Inference Server reports no slowdown factor, but it counts, per model, the requests it
answered and the nanoseconds they spent queued and computing (``GET /v2/models/stats``, the
statistics extension; ``nscompile serve`` answers it too). Two polls a moment apart give, for
the requests answered in between (d = the difference):

- per-request time t = (d queue + d compute) / d count, and per-request compute c = d compute / d count;
- K_stats = (t + f) / (idle + f), where idle is the fastest per-request compute seen so far
  (Triton runs each model in its own instances, so the queue is what other clients add, and
  compute above its idle value is CPU contention) and f = ``floor_ms`` keeps timer noise on a
  sub-millisecond model from reading as load; requests of several models are pooled.

Where the metrics endpoint answers (Triton's default: ``:8002/metrics`` beside ``:8000``),
queue pressure joins in:
``nv_inference_pending_request_count`` per model (requests waiting for an instance), and
K_queue = (pending + 1) / instances, the wait a request arriving now would see, as
``nscompile serve`` computes it. K = max(1, K_stats, K_queue).

Needs httpx only; safe to share between threads.
"""

from __future__ import annotations

import re
import threading
import time
from urllib.parse import urlsplit

import httpx

_COMPUTE_KEYS = ("compute_input", "compute_infer", "compute_output")
_PENDING = re.compile(r'^nv_inference_pending_request_count\{([^}]*)\}\s+([0-9.eE+-]+)\s*$', re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class TritonLoad:
    """Reads K for a set of models from a KServe v2 server's statistics (and metrics).

    Args:
        client: the httpx client to poll with.
        base_url: the server's base URL ("http://10.0.0.2:8000").
        models: the model names whose requests count (a build's suffix models).
        metrics_url: Triton's Prometheus endpoint, "" for none; default: port 8002 of the
            same host when the server is on Triton's default port 8000, else none (a guessed
            port could be another program's).
        timeout_s: per poll.
        gap_s: the shortest time between the two polls (a fresh first poll is followed by a
            sleep this long).
        max_age_s: a previous poll younger than this is the first of the two polls.
        floor_ms: additive smoothing of the slowdown ratio.
    """

    #: How often a runner re-reads the load of a server that sends no load header.
    refresh_s = 1.0

    def __init__(self, client: httpx.Client, base_url: str, models: list[str], *, metrics_url: str | None = None,
                 timeout_s: float = 2.0, gap_s: float = 0.1, max_age_s: float = 5.0, floor_ms: float = 1.0):
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.models = set(models)
        if metrics_url is None:
            parts = urlsplit(self.base_url)
            host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
            metrics_url = f"{parts.scheme}://{host}:8002/metrics" if parts.port == 8000 else ""
        self.metrics_url = metrics_url or None
        self.timeout_s, self.gap_s, self.max_age_s, self.floor_ms = timeout_s, gap_s, max_age_s, floor_ms
        self._previous: tuple[float, dict] | None = None
        self._idle_ms: dict[str, float] = {}  # model -> fastest per-request compute seen
        self._instances: dict[str, int] = {}
        self._metrics_retry_at = 0.0
        self._lock = threading.Lock()
        #: The parts of the last reading, for records and tests.
        self.last: dict = {}

    def read(self) -> float | None:
        """Poll the server and return K >= 1, or None when it has no statistics endpoint.

        Raises:
            httpx.HTTPError: the server is unreachable.
        """
        with self._lock:
            now = time.monotonic()
            first = self._previous
            if first is None or now - first[0] > self.max_age_s:
                first = (now, self._poll_stats())
                if first[1] is None:
                    return None
                time.sleep(self.gap_s)
            elif now - first[0] < self.gap_s:  # too short a window holds too few requests to judge
                time.sleep(self.gap_s - (now - first[0]))
            second = (time.monotonic(), self._poll_stats())
            if second[1] is None:
                return None
            self._previous = second
            k_stats = self._slowdown(first[1], second[1])
            k_queue = self._queue_pressure()
            self.last = {"stats": k_stats, "queue": k_queue, "window_s": second[0] - first[0]}
            return max(1.0, k_stats, k_queue or 1.0)

    def _poll_stats(self) -> dict | None:
        """model -> (count, queue ns, compute ns), summed over versions; None on 404."""
        r = self.client.get(f"{self.base_url}/v2/models/stats", timeout=self.timeout_s)
        if r.status_code in (400, 404):
            return None
        r.raise_for_status()
        totals: dict[str, tuple[int, int, int]] = {}
        for entry in r.json().get("model_stats") or []:
            name = entry.get("name")
            if name not in self.models:
                continue
            stats = entry.get("inference_stats") or {}
            count = int((stats.get("success") or {}).get("count", 0))
            queue = int((stats.get("queue") or {}).get("ns", 0))
            compute = sum(int((stats.get(k) or {}).get("ns", 0)) for k in _COMPUTE_KEYS)
            c, q, x = totals.get(name, (0, 0, 0))
            totals[name] = (c + count, q + queue, x + compute)
        return totals

    def _slowdown(self, before: dict, after: dict) -> float:
        """Request-weighted mean of (t + f) / (idle + f) over the window's requests."""
        total = reference = 0.0
        for name, (count, queue, compute) in after.items():
            c0, q0, x0 = before.get(name, (0, 0, 0))
            n = count - c0
            if n <= 0:  # no request in the window (or the server restarted: counters went back)
                continue
            compute_ms = (compute - x0) / n / 1e6
            idle = self._idle_ms[name] = min(self._idle_ms.get(name, compute_ms), compute_ms)
            total += ((queue - q0) + (compute - x0)) / 1e6 + n * self.floor_ms
            reference += n * (idle + self.floor_ms)
        return total / reference if reference > 0 else 1.0

    def _queue_pressure(self) -> float | None:
        """max over models of (pending + 1) / instances, or None without a metrics endpoint."""
        now = time.monotonic()
        if self.metrics_url is None or now < self._metrics_retry_at:
            return None
        try:
            r = self.client.get(self.metrics_url, timeout=self.timeout_s)
            r.raise_for_status()
        except httpx.HTTPError:
            self._metrics_retry_at = now + 30.0  # not exposed, or not reachable from here: ask rarely
            return None
        pending: dict[str, float] = {}
        for labels, value in _PENDING.findall(r.text):
            name = dict(_LABEL.findall(labels)).get("model")
            if name in self.models:
                pending[name] = pending.get(name, 0.0) + float(value)
        if not pending:
            return None
        return max((p + 1.0) / self._instance_count(name) for name, p in pending.items())

    def _instance_count(self, model: str) -> int:
        """Instances of a model, from its configuration's instance groups (1 when it says none)."""
        if model not in self._instances:
            count = 0
            try:
                r = self.client.get(f"{self.base_url}/v2/models/{model}/config", timeout=self.timeout_s)
                for group in (r.json().get("instance_group") or []) if r.status_code == 200 else []:
                    count += int(group.get("count", 1)) * max(1, len(group.get("gpus") or []))
            except (httpx.HTTPError, ValueError, TypeError, AttributeError):
                pass
            self._instances[model] = max(1, count)
        return self._instances[model]
