"""Driving the JavaScript runtime from tests: in Node or in headless Chromium, the same calls.

Both harnesses expose ``tools/harness.js``'s calls (``open``, ``run``, ``configure``,
``waitForProbe``, ``close``); feeds travel as raw bytes served by a :class:`StaticSite`,
outputs come back as JSON and are turned into numpy arrays here.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from nscompile import browser
from nscompile.browser import JS_DIR, Browser, StaticSite, runtime_routes

# The hand-made build and the in-thread server live in test_runtime.py.
_spec = importlib.util.spec_from_file_location("_nscompile_rt_helpers_js", Path(__file__).with_name("test_runtime.py"))
rt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rt)


def need(in_browser: bool) -> None:
    """Skip the test, naming what is missing, unless the JS runtime can run (in Chromium if ``in_browser``).

    Where ``NSCOMPILE_REQUIRE_BROWSER`` is set (``.ci/run``, after installing them) it fails instead.
    """
    problem = browser.missing(browser=in_browser)
    if problem and os.environ.get("NSCOMPILE_REQUIRE_BROWSER"):
        pytest.fail(f"NSCOMPILE_REQUIRE_BROWSER is set but {problem}")
    if problem:
        pytest.skip(problem)


class NodeHarness:
    """``tools/node_harness.js`` in a child process (onnxruntime-web's WASM build in Node)."""

    where = "node"

    def __init__(self, log_dir: Path):
        from nscompile.testbed.testbed import Worker

        self._worker = Worker(["node", str(JS_DIR / "tools" / "node_harness.js")], "node-harness", log_dir)
        self._worker.answer(60.0)

    def call(self, fn: str, *args, timeout_s: float = 120.0):
        return self._worker.ask(timeout_s, op="call", fn=fn, args=list(args))["value"]

    def console(self) -> str:
        return self._worker.log_path.read_text(errors="replace")

    def close(self) -> None:
        self._worker.close()


class PageHarness:
    """``tools/page.html`` in headless Chromium, served by ``site``."""

    where = "chromium"

    def __init__(self, log_dir: Path, site: StaticSite):
        self.browser = Browser(log_dir, name="chromium")
        self.browser.goto(f"{site.url}/runner/tools/page.html")
        self.browser.eval("new Promise(r => { const t = setInterval(() => window.nscompileReady && (clearInterval(t), r(true)), 20); })")

    def call(self, fn: str, *args, timeout_s: float = 120.0):
        return self.browser.call(f"nscompile.{fn}.bind(nscompile)", *args, timeout_s=timeout_s)

    def console(self) -> str:
        return self.browser.console()

    def close(self) -> None:
        self.browser.close()


def site_for(device_dir: Path, feeds_dir: Path, **extra: Path) -> StaticSite:
    """A site serving the runner (/runner/), onnxruntime-web (/ort/), ``device_dir`` (/device/) and feeds (/feeds/)."""
    return StaticSite({**runtime_routes(), "/device/": device_dir, "/feeds/": feeds_dir, **extra})


def feed_spec(feeds_dir: Path, inputs: dict[str, np.ndarray], tag: str = "x") -> dict:
    """Write each input's raw bytes under ``feeds_dir`` and return the harness's feed spec."""
    feeds_dir.mkdir(parents=True, exist_ok=True)
    spec = {}
    for i, (name, array) in enumerate(inputs.items()):
        file = f"{tag}_{i}.bin"
        (feeds_dir / file).write_bytes(np.ascontiguousarray(array).tobytes())
        spec[name] = {"type": array.dtype.name, "dims": list(array.shape), "url": f"/feeds/{file}"}
    return spec


def absolute(spec: dict, site: StaticSite) -> dict:
    """The spec with absolute URLs (Node has no page to resolve them against)."""
    return {n: {**s, "url": site.url + s["url"]} for n, s in spec.items()}


def to_numpy(tensor: dict) -> np.ndarray:
    """A harness output tensor as a numpy array of its type (float16 arrives as its raw bits)."""
    if tensor["type"] == "float16":
        return np.asarray(tensor["data"], dtype=np.uint16).view(np.float16).reshape(tensor["dims"])
    return np.asarray(tensor["data"], dtype=tensor["type"]).reshape(tensor["dims"])


def ok(answer: dict) -> dict:
    """The answer, failing the test with the JS error if the call threw."""
    assert "error" not in answer, json.dumps(answer["error"])
    return answer
