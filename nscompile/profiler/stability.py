"""How steady the machine's speed stays while a profile is measured.

A profile is a snapshot: every regression is fitted on times taken over a few minutes.
On a shared machine (a cloud VM whose host runs other tenants, a phone that throttles)
the same kernel can take 20% longer for minutes at a time, and a profile measured then
predicts every later run 20% too slow. :class:`SpeedCheck` times three small reference
models every second or so during profiling, one per kind of bottleneck (the per-run
dispatch, convolution arithmetic, streaming weights from the caches). The profiler divides
each measurement by how far the matching reference stood from its median over the run at
that moment (:meth:`SpeedCheck.factor`), so the profile describes the machine's typical
speed rather than the minute each benchmark happened to run in, and it records how much
each reference moved, so that a profile taken on a disturbed machine says so.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["SpeedCheck", "UNSTEADY_SPREAD", "speed_kind"]

#: A reference whose slowest checks took this much longer than its fastest (10th to
#: 90th percentile) marks the profile as measured on an unsteady machine.
UNSTEADY_SPREAD = 0.15
#: Benchmarks faster than this (ms) are mostly the per-run dispatch: they follow its reference.
DISPATCH_BOUND_MS = 0.02
#: A correction never scales a measurement by more than this factor either way.
MAX_FACTOR = 2.0


def speed_kind(key: str, raw_ms: float) -> str:
    """Which reference a benchmark of op key ``key`` that took ``raw_ms`` follows."""
    if raw_ms < DISPATCH_BOUND_MS:
        return "dispatch"
    return "compute" if key.startswith("Conv") else "memory"


def _reference_models():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    f32 = TensorProto.FLOAT

    def model(nodes, x_shape, y_shape, inits=()):
        g = helper.make_graph(nodes, "ref", [helper.make_tensor_value_info("x", f32, x_shape)],
                              [helper.make_tensor_value_info("y", f32, y_shape)], list(inits))
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m, {"x": np.ones(x_shape, np.float32)}

    conv_w = numpy_helper.from_array((rng.standard_normal((32, 32, 3, 3)) * 0.05).astype(np.float32), "w")
    gemv_w = numpy_helper.from_array((rng.standard_normal((1024, 1024)) * 0.05).astype(np.float32), "w")
    return {
        "dispatch": model([helper.make_node("Relu", ["x"], ["y"])], [1, 16], [1, 16]),
        "compute": model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)], [1, 32, 28, 28], [1, 32, 28, 28],
                         [conv_w]),
        "memory": model([helper.make_node("MatMul", ["x", "w"], ["y"])], [1, 1024], [1, 1024], [gemv_w]),
    }


class SpeedCheck:
    """Reference timings taken at most every ``every_s`` seconds while profiling.

    Args:
        threads: onnxruntime intra-op threads (the profile's).
        provider: ``"cpu"`` or ``"cuda"``.
        clock: the profile's timing clock (``"cpu"`` or ``"wall"``).
        every_s: the least time between two checks.
        timer: times a model elsewhere than in onnxruntime here (``timer(model, feeds,
            budget_s=..., ...) -> ms``, e.g. in a browser); None: onnxruntime sessions.
    """

    def __init__(self, threads: int, provider: str, clock: str, every_s: float = 1.0, timer=None):
        from nscompile.profiler.timing import make_session

        self.clock, self.every_s = clock, every_s
        self.device = "cuda" if provider == "cuda" else "cpu"
        self._timer = timer
        self._refs = {name: (m if timer else make_session(m.SerializeToString(), threads, provider), feeds)
                      for name, (m, feeds) in _reference_models().items()}
        self.times: dict[str, list[float]] = {name: [] for name in self._refs}
        self.stamps: list[float] = []  # time.monotonic() of each check
        self._last = -float("inf")

    def check(self, force: bool = False) -> None:
        """Time every reference (about 50 ms), unless the last check is under ``every_s`` old."""
        from nscompile.profiler.timing import time_session

        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        self.stamps.append(now)
        for name, (ref, feeds) in self._refs.items():
            timing = {"budget_s": 0.015, "min_batch_s": 0.003, "max_repeats": 5, "min_repeats": 3}
            if self._timer is not None:
                self.times[name].append(self._timer(ref, feeds, **timing))
            else:
                self.times[name].append(time_session(ref, feeds, device=self.device, clock=self.clock, **timing))

    def factor(self, kind: str, at: float) -> float:
        """How much slower than usual the machine ran for ``kind`` work around time ``at``.

        The median of the reference's checks within 1.5 check intervals of ``at`` (the
        nearest check where there is none), over its median across all checks; 1.0 with
        fewer than 3 checks; clipped to [1 / MAX_FACTOR, MAX_FACTOR].
        """
        ts = self.times[kind]
        if len(ts) < 3:
            return 1.0
        near = [v for stamp, v in zip(self.stamps, ts) if abs(stamp - at) <= 1.5 * self.every_s]
        if not near:
            near = [ts[int(np.argmin([abs(stamp - at) for stamp in self.stamps]))]]
        ratio = float(np.median(near) / max(float(np.median(ts)), 1e-12))
        return min(max(ratio, 1.0 / MAX_FACTOR), MAX_FACTOR)

    def spread(self) -> dict[str, float]:
        """Per reference: how much longer its slow checks took than its fast ones (p90 / p10 - 1)."""
        return {name: float(np.percentile(ts, 90) / max(np.percentile(ts, 10), 1e-9) - 1.0)
                for name, ts in self.times.items() if len(ts) >= 2}

    def summary(self) -> dict:
        """What the profile stores: checks made, reference medians (ms) and spreads."""
        return {
            "checks": min((len(ts) for ts in self.times.values()), default=0),
            "median_ms": {name: float(np.median(ts)) for name, ts in self.times.items() if ts},
            "spread": {name: round(s, 4) for name, s in self.spread().items()},
            "unsteady_above": UNSTEADY_SPREAD,
            "correction": "each benchmark divided by its reference's time near it over the reference's median",
        }

    def unsteady(self) -> dict[str, float]:
        """The references whose spread exceeds :data:`UNSTEADY_SPREAD` (empty: a steady machine)."""
        return {name: s for name, s in self.spread().items() if s > UNSTEADY_SPREAD}
