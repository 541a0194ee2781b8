"""What the device knows about the network, the server and itself: uplink, RTT, server
load, back-off, and its own slowdown against its profile.

Plain numbers and the standard library; the runner feeds it measurements and reads
estimates back. Bandwidth is smoothed on a log scale because the plan's buckets are
log-spaced: a 10x change should move the estimate as fast as a 2x change does.
"""

from __future__ import annotations

import math
import time
from collections import deque


class LogEwma:
    """Exponentially weighted moving average of log(x): a smoothed geometric mean."""

    def __init__(self, alpha: float):
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self._log: float | None = None
        #: The current estimate, or None before the first sample. Kept as a plain
        #: attribute: every request reads it, only transfers and probes change it.
        self.value: float | None = None
        self.updated_at = 0.0
        self.samples = 0

    def add(self, x: float, now: float | None = None) -> None:
        """Fold in one positive sample."""
        lx = math.log(max(x, 1e-12))
        self._log = lx if self._log is None else (1 - self.alpha) * self._log + self.alpha * lx
        self.value = math.exp(self._log)
        self.updated_at = time.monotonic() if now is None else now
        self.samples += 1

    def reset(self) -> None:
        """Forget everything."""
        self._log = self.value = None
        self.samples = 0


class NetState:
    """Uplink bandwidth, RTT and server load as the device last measured them.

    Args:
        alpha: smoothing weight of a new sample.
        stale_s: estimates older than this are re-measured with an active probe.
        backoff_s: (first, max) pause before retrying a server that failed.
    """

    def __init__(self, alpha: float = 0.4, stale_s: float = 10.0, backoff_s: tuple[float, float] = (0.5, 30.0)):
        self.bandwidth = LogEwma(alpha)  # Mbit/s
        self.rtt = LogEwma(alpha)  # ms
        self.stale_s = stale_s
        self.load = 1.0
        self.load_at = 0.0
        self.backoff_first, self.backoff_max = backoff_s
        self._backoff = 0.0
        self.retry_at = 0.0
        self.failures = 0

    def needs_probe(self, now: float, bandwidth: bool = True, load: bool = True) -> bool:
        """True when an estimate is missing or stale.

        Args:
            now: time.monotonic().
            bandwidth: whether the bandwidth estimate matters (False when pinned).
            load: whether the load estimate matters (False when pinned).
        """
        b = self.bandwidth
        if bandwidth and (b.value is None or now - b.updated_at > self.stale_s):
            return True
        return load and now - self.load_at > self.stale_s

    def set_load(self, load: float, now: float) -> None:
        """Record the server's reported slowdown factor (>= 1)."""
        if math.isfinite(load):
            self.load = max(1.0, load)
            self.load_at = now

    def in_backoff(self, now: float) -> bool:
        """True while the server should not be tried again."""
        return now < self.retry_at

    def failed(self, now: float) -> float:
        """Note a failed server call; return the back-off chosen, in seconds."""
        self.failures += 1
        if now < self.retry_at:
            # A call that started before the back-off began (threads sharing a runner): the
            # same outage, so it must not double the back-off again.
            return self.retry_at - now
        self._backoff = self.backoff_first if self._backoff == 0 else min(self._backoff * 2, self.backoff_max)
        self.retry_at = now + self._backoff
        return self._backoff

    def succeeded(self) -> None:
        """Note a successful server call: the back-off starts over."""
        self._backoff = 0.0
        self.retry_at = 0.0

    def backoff_state(self) -> tuple[float, int, float]:
        """The back-off bookkeeping (retry time, failures, current back-off), to restore later."""
        return self.retry_at, self.failures, self._backoff

    def restore_backoff(self, state: tuple[float, int, float]) -> None:
        """Undo what calls since :meth:`backoff_state` did to the back-off (e.g. a benchmark's forced requests)."""
        self.retry_at, self.failures, self._backoff = state


class DeviceLoad:
    """The device's slowdown factor Kd: measured over predicted time of its own runs.

    Every prefix (the all-device model included) that the device runs is one sample:
    its measured milliseconds over the plan's prediction for that cut. The estimate is
    the median of the last ``window`` samples, weighted by their predicted milliseconds,
    so one run preempted by another app moves it by one rank at most, while a lasting
    change (another app, heat, a slower clock) takes over after about ``window // 2 + 1``
    runs. The weights make a long run count for more than a short one: a prefix of a few
    milliseconds shows a slowdown less faithfully (measured on the testbed: under a CFS
    quota, a 3 ms prefix after an idle wait ran at 0.55x its prediction while the whole
    model ran at 2.3x, since the quota's first slice after idling is not throttled). Before the first sample it is 1.0: the
    device as profiled. A device whose cut runs nothing on it (all-cloud) takes no
    samples; the policy then forgets a stale estimate, so that a device that got fast
    again is tried again (see :attr:`CutPolicy.device_load`).

    Args:
        window: how many recent samples the median is taken over.
    """

    def __init__(self, window: int = 5):
        if window < 1:
            raise ValueError("window must be >= 1")
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)  # (ratio, predicted ms)
        #: The current estimate (1.0 before the first sample).
        self.value = 1.0
        self.samples = 0
        self.updated_at = 0.0

    def add(self, measured_ms: float, predicted_ms: float, now: float | None = None) -> None:
        """Fold in one run of device work that the plan predicted at ``predicted_ms``."""
        if not (measured_ms > 0 and predicted_ms > 0 and math.isfinite(measured_ms) and math.isfinite(predicted_ms)):
            return
        self._samples.append((measured_ms / predicted_ms, predicted_ms))
        self.value = _weighted_median(self._samples)
        self.samples += 1
        self.updated_at = time.monotonic() if now is None else now

    def reset(self) -> None:
        """Forget every sample: back to the device as profiled."""
        self._samples.clear()
        self.value = 1.0
        self.samples = 0


def _weighted_median(samples) -> float:
    """The value at half the total weight of ``(value, weight)`` pairs (the mean of the two
    middle values where the half falls exactly between them, as the plain median does)."""
    ordered = sorted(samples)
    half = sum(w for _, w in ordered) / 2
    seen = 0.0
    for i, (value, weight) in enumerate(ordered):
        seen += weight
        if seen > half * (1 + 1e-12):
            return value
        if abs(seen - half) <= half * 1e-12:
            return 0.5 * (value + ordered[i + 1][0]) if i + 1 < len(ordered) else value
    return ordered[-1][0]
