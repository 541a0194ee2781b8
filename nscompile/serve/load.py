"""How busy the server is, in the unit the plan's rows use: a slowdown factor K >= 1.

K = max(recent slowdown, queue pressure):
- recent slowdown: over the last ``window_s`` seconds, the median (one stalled request
  is not load) of
  (queue + compute + c) / (idle + c) per request, where idle is the model's profiled idle
  time (refined by the fastest request seen, see ModelEntry.idle_reference) and c = ``floor_ms``: a difference under a millisecond is timer noise on a tiny
  model, not load;
- queue pressure: (others in flight + 1) / concurrency, what a request arriving now
  would wait for if every slot is taken.

Counters are per server process: with ``--workers N`` each worker reports its own.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class LoadTracker:
    """In-flight count and recent slowdown of one server process.

    Args:
        concurrency: inference slots (requests computed at the same time).
        window_s: how far back "recent" reaches.
        floor_ms: additive smoothing of the slowdown ratio.
    """

    def __init__(self, concurrency: int, window_s: float = 2.0, floor_ms: float = 1.0, max_samples: int = 256):
        self.concurrency = max(1, concurrency)
        self.window_s = window_s
        self.floor_ms = floor_ms
        self.in_flight = 0
        self.running = 0
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    def enter(self) -> None:
        """A request was admitted."""
        with self._lock:
            self.in_flight += 1

    def exit(self) -> None:
        """A request finished (answered or failed)."""
        with self._lock:
            self.in_flight -= 1

    def record(self, idle_ms: float | None, total_ms: float) -> None:
        """Note one request's queue + compute time against its model's idle time."""
        if idle_ms is None:
            return
        ratio = (total_ms + self.floor_ms) / (idle_ms + self.floor_ms)
        with self._lock:
            self._samples.append((time.monotonic(), ratio))

    def slowdown(self) -> float:
        """Median slowdown of the requests of the last window (1.0 when there were none)."""
        cutoff = time.monotonic() - self.window_s
        with self._lock:
            while self._samples and self._samples[0][0] < cutoff:
                self._samples.popleft()
            if not self._samples:
                return 1.0
            ratios = sorted(r for _, r in self._samples)
        n = len(ratios)
        return ratios[n // 2] if n % 2 else 0.5 * (ratios[n // 2 - 1] + ratios[n // 2])

    def load(self, exclude_self: bool = False) -> float:
        """The slowdown factor K a new request should expect (>= 1)."""
        others = self.in_flight - (1 if exclude_self else 0)
        return max(1.0, self.slowdown(), (others + 1) / self.concurrency)

    def snapshot(self) -> dict:
        """The load report ``GET /v2/nscompile/load`` returns."""
        return {
            "load": round(self.load(), 4),
            "slowdown": round(self.slowdown(), 4),
            "in_flight": self.in_flight,
            "queue_depth": max(0, self.in_flight - self.running),
            "concurrency": self.concurrency,
        }
