"""``nscompile profile --web``: the browser as the device, timed in headless Chromium.

A page runs the JavaScript runtime with onnxruntime-web (WASM, one thread), and the
browser's slowdown against native onnxruntime is not uniform (4x to 13x depending on the
ops), so a native profile scaled by one factor would mispredict it. This module runs the
profiler's own microbenchmarks (:mod:`nscompile.profiler.microbench`), fixed-cost graphs
and reference kernels in the page instead of in onnxruntime, and :func:`run_profile` fits
the same regressions on the times: :class:`BrowserTimer` stands in for
:func:`~nscompile.profiler.timing.time_model`.

One thing differs from native onnxruntime: a page's session copies its inputs into the
WASM heap and its outputs out of it on every run (no IO binding), about 0.2 ms per MB
here. A single-op benchmark pays that for its op's tensors, a whole model only for its
graph inputs and outputs, so the profiler measures the cost per byte and takes every
benchmark net of it (``io_copies``).

A page has no thread CPU clock of its own, so ``tools/browser.js`` reads the CPU time of
the page's renderer main thread (where the one-thread WASM runs) from Linux's schedstat
and hands it to the page: as with the native 1-thread profiles, other processes' time
slices on a shared machine then do not count. Where it cannot be read the page's wall
clock is used, and the profile leans on the speed corrections of
:mod:`nscompile.profiler.stability` and on the minimum of the batch means. Either way
the profile's ``clock`` and ``speed_checks`` say what it was measured with.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from nscompile.browser import Browser, StaticSite, runtime_routes
from nscompile.errors import NscompileError

#: What ``nscompile profile --web`` measures with: onnxruntime-web's WASM backend, one thread.
WEB_PROVIDER = "wasm"


class BrowserTimer:
    """Times ONNX models in one headless Chromium page (``tools/profile.html``).

    Called like :func:`~nscompile.profiler.timing.time_model` without the thread and
    provider arguments: ``timer(model, feeds, budget_s=..., min_batch_s=..., ...)`` returns
    milliseconds per run. Models and feeds are written once to a temporary folder served
    to the page; the page keeps the last few sessions (the reference models come back
    every second).

    Args:
        log_dir: where the page's console is logged (default: a temporary folder).
        clock: ``"cpu"``: CPU time of the page's main thread, where the WASM runs (the
            analogue of the native profiler's thread CPU clock: other processes' time
            slices on a shared machine do not count); ``"wall"``: the page's
            ``performance.now()``; ``"auto"``: cpu where it can be read (Linux), else wall.

    Attributes:
        clock: the clock in use; ``run_profile`` records it and picks the statistic by it.

    Raises:
        NscompileError: Node, the npm packages or Chromium are missing (see nscompile.browser).
    """

    def __init__(self, log_dir: Path | None = None, clock: str = "auto"):
        self._tmp = tempfile.TemporaryDirectory(prefix="nscompile-web-profile-")
        self._cases = Path(self._tmp.name)
        self.site = StaticSite({**runtime_routes(), "/cases/": self._cases}, isolated=True)
        try:
            self.browser = Browser(log_dir, name="profile-browser", timeout_s=600.0)
            self.browser.goto(f"{self.site.url}/runner/tools/profile.html")
            self.versions = self.browser.eval(
                "new Promise(r => { const t = setInterval(() => window.nscompileReady"
                " && (clearInterval(t), r(window.nscompileProfile.versions())), 20); })")
        except BaseException:
            self.site.close()
            self._tmp.cleanup()
            raise
        if clock == "auto":
            clock = "cpu" if self.versions.get("cpuClock") else "wall"
        if clock == "cpu" and not self.versions.get("cpuClock"):
            self.close()
            raise NscompileError("the page's CPU time cannot be read here (Linux /proc/PID/task/PID/schedstat); "
                                 "time on the wall clock instead")
        self.clock = clock

    def _write(self, model, feeds: dict[str, np.ndarray]) -> dict:
        """Write the model and its feeds for the page; return the page's request."""
        raw = model.SerializeToString()
        blobs = [(name, array, np.ascontiguousarray(array).tobytes()) for name, array in feeds.items()]
        digest = hashlib.sha1(raw)
        for name, _, data in blobs:
            digest.update(name.encode() + data)
        key = digest.hexdigest()
        (self._cases / f"{key}.onnx").write_bytes(raw)
        for i, (_, _, data) in enumerate(blobs):
            (self._cases / f"{key}-{i}.bin").write_bytes(data)
        return {"key": key, "model": f"/cases/{key}.onnx",
                "feeds": [{"name": name, "type": array.dtype.name, "dims": list(array.shape), "url": f"/cases/{key}-{i}.bin"}
                          for i, (name, array, _) in enumerate(blobs)]}

    def __call__(self, model, feeds: dict[str, np.ndarray], budget_s: float = 0.25, min_batch_s: float = 0.004,
                 max_repeats: int = 15, min_repeats: int = 5, stat: str | None = None, **_ignored) -> float:
        """Milliseconds per run of ``model`` in the page (see the module docstring).

        Raises:
            NscompileError: onnxruntime-web cannot load or run the model (the page's message).
        """
        # As natively: the median on the CPU clock; on the wall clock the minimum (other
        # processes only ever add time).
        stat = stat or ("median" if self.clock == "cpu" else "min")
        request = {**self._write(model, feeds), "budget_s": budget_s, "min_batch_s": min_batch_s,
                   "max_repeats": max_repeats, "min_repeats": min_repeats, "stat": stat, "clock": self.clock}
        try:
            try:
                return float(self.browser.call("window.nscompileProfile.time", request))
            except NscompileError as exc:
                if "find the renderer again" not in str(exc):
                    raise
                # The page moved to another renderer process (or the first guess was wrong): once more.
                self.browser.find_renderer()
                return float(self.browser.call("window.nscompileProfile.time", request))
        finally:
            # The page has read them (a full sweep's large layers would fill the disk otherwise).
            for file in self._cases.glob(f"{request['key']}*"):
                file.unlink()

    def close(self) -> None:
        """Close the browser, the site and the temporary folder."""
        try:
            self.browser.close()
        finally:
            self.site.close()
            self._tmp.cleanup()

    def __enter__(self) -> BrowserTimer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_web_profile(name: str, quick: bool = False, seed: int = 0,
                    progress: Callable[[int, int, str], None] | None = None, notes: str | None = None,
                    compute_power_w: float | None = None, idle_power_w: float | None = None, radio=None,
                    log_dir: Path | None = None):
    """Profile this machine's browser: the microbenchmarks timed in headless Chromium.

    Args:
        name: Profile name, e.g. ``"browser-wasm-1thread"``.
        quick: The small sweep.
        seed: Seed of the benchmark configurations.
        progress: Called as ``progress(done, total, case_name)``.
        notes: Free text stored in the profile.
        compute_power_w, idle_power_w, radio: as :func:`nscompile.profiler.run_profile`.
        log_dir: where the page's console is logged.

    Returns:
        The fitted :class:`~nscompile.cost_model.Profile` (provider ``"wasm"``, one thread).

    Raises:
        NscompileError: Node, the npm packages or Chromium are missing.
    """
    from nscompile.profiler import run_profile

    with BrowserTimer(log_dir) as timer:
        profile = run_profile(name, kind="device", threads=1, provider=WEB_PROVIDER, quick=quick, seed=seed,
                              progress=progress, compute_power_w=compute_power_w, idle_power_w=idle_power_w,
                              radio=radio, notes=notes, timer=timer, io_copies=True)
        profile.meta.update({
            "runtime": "onnxruntime-web (WASM, 1 thread) in headless Chromium",
            "onnxruntime_version": timer.versions.get("ort"),
            "browser": f"Chromium {timer.browser.version}",
            "cross_origin_isolated": bool(timer.versions.get("crossOriginIsolated")),
        })
    return profile
