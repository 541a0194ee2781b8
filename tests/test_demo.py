"""``nscompile demo``: the page in a real headless Chromium.

The command is run as a user runs it (a child process that starts its own server); the
page's cut, phase times and bytes are read from the DOM and compared with the runner's
record; the screenshots are kept in build/test-artifacts/ ($NSCOMPILE_TEST_ARTIFACTS). Without a server the page
finishes on the device and says so.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXED_PHONE_PROFILE, run_cli
from js_support import need, rt

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("NSCOMPILE_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))

# What the page shows, read back from its DOM.
READ_PAGE = """() => {
  const cells = {};
  for (const tr of document.querySelectorAll('#times tbody tr')) {
    cells[tr.dataset.phase] = {predicted: tr.querySelector('[data-kind=predicted]').textContent,
                               measured: tr.querySelector('[data-kind=measured]').textContent};
  }
  const sides = [...document.querySelectorAll('#layers .layer')].map(b => b.dataset.side);
  return {chosen: document.getElementById('chosen').textContent, reason: document.getElementById('reason').textContent,
          times: cells, sides, cutLines: document.querySelectorAll('#layers .layer.cut').length,
          upload: document.getElementById('upload-bytes').textContent,
          download: document.getElementById('download-bytes').textContent,
          encoding: document.getElementById('encoding').textContent,
          here: document.getElementById('map-here')?.dataset.cut ?? null,
          mapCells: document.querySelectorAll('#map td[data-cut]').length,
          notice: document.getElementById('notice').hidden ? null : document.getElementById('notice').textContent,
          status: document.getElementById('status').textContent,
          record: window.nscompileDemo.record};
}"""


@pytest.fixture(scope="module")
def alexnet_build(tmp_path_factory):
    from nscompile import zoo
    from nscompile.compiler import build
    from nscompile.planner import GridSpec

    root = tmp_path_factory.mktemp("demo")
    (path,) = zoo.write_models(["alexnet"], root / "models", size="small")
    build(path, root / "alexnet", device_profile=FIXED_PHONE_PROFILE, grid=GridSpec.parse("0.1:100000:40", "1,2,4,8"),
          include_all_cloud=True)
    return root / "alexnet"


class DemoProcess:
    """``nscompile demo BUILD ...`` as a child process, until stop()."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "nscompile", "demo", *map(str, args), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines = []
        for line in self.proc.stdout:  # bounded by the command: it prints the URL once the page is served
            self.lines.append(line)
            m = re.match(r"open (http://\S+)/ ", line)
            if m:
                self.url = m.group(1)
                return
        raise AssertionError(f"nscompile demo exited: {''.join(self.lines)} {self.proc.stderr.read()[-2000:]}")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(timeout=20)


def open_page(browser, url: str) -> dict:
    browser.goto(url)
    browser.eval("window.nscompileDemoDone")
    return browser.call(READ_PAGE)


def assert_page_shows_record(page: dict, plan: dict) -> None:
    rec = page["record"]
    fmt = lambda x: f"{x:.2f}"  # noqa: E731 - the page's two decimals
    assert page["chosen"] == rec["cut"] and page["reason"] == f"({rec['reason']})"
    p = rec["predicted"]
    t = page["times"]
    assert t["device"] == {"predicted": fmt(p["device_ms"]), "measured": fmt(rec["prefix_ms"] + rec["fallback_ms"])}
    assert t["upload"] == {"predicted": fmt(p["upload_ms"]), "measured": fmt(rec["upload_ms"])}
    assert t["server"] == {"predicted": fmt(p["server_ms"]), "measured": fmt(rec["server_ms"])}
    assert t["download"] == {"predicted": fmt(p["download_ms"]), "measured": fmt(rec["download_ms"])}
    assert t["total"] == {"predicted": fmt(p["total_ms"]), "measured": fmt(rec["total_ms"])}
    assert page["upload"] == f"{rec['upload_bytes']} B" and page["download"] == f"{rec['download_bytes']} B"
    # The layer chart: one bar per layer, the device's side as the cut's prefix has it.
    cut = next(c for c in plan["cuts"] if c["id"] == (plan["fallback"] if rec["reason"] in ("backoff", "fallback") else rec["cut"]))
    assert len(page["sides"]) == sum(1 for _ in json.loads((Path(plan["_build"]) / "layers.json").read_text()))
    on_device = page["sides"].count("device")
    assert on_device == (len(page["sides"]) if not cut.get("cloud_model") else cut["device_nodes"])
    assert page["cutLines"] == (1 if 0 < on_device < len(page["sides"]) else 0)
    # The decision map: every cell, and the marker on the cell of the conditions the runner
    # decided for (none for a forced cut: nothing was decided).
    grid = plan["grid"]
    assert page["mapCells"] == len(grid["load"]) * len(grid["bandwidth_mbps"])
    if rec["bandwidth_mbps"] is None:
        assert page["here"] is None
        return
    from nscompile.runtime.plan import Plan

    runtime_plan = Plan(plan, Path(plan["_build"]) / "device")
    row = runtime_plan.load_row(rec["load"])
    col = max([i for i, b in enumerate(grid["bandwidth_mbps"]) if b <= rec["bandwidth_mbps"]], default=0)
    # The map of the device-load level the runner decided at (its Kd, measured in this browser).
    level = runtime_plan.device_load_row(rec["device_load"])
    assert page["here"] == plan["device_tables"]["latency"][level][row][col]
    if rec["reason"] == "table" and level == grid["device_load"].index(1.0) and not plan["mixed"]["latency"][row][col]:
        assert page["here"] == rec["cut"]


def test_demo_page_shows_the_runners_decision(alexnet_build, tmp_path):
    need(in_browser=True)
    from nscompile.browser import Browser

    plan = {**json.loads((alexnet_build / "plan.json").read_text()), "_build": str(alexnet_build)}
    split = next(c["id"] for c in plan["cuts"] if c["prefix"] and c["cloud_model"])
    demo = DemoProcess(alexnet_build)
    try:
        with Browser(tmp_path, name="demo") as browser:
            page = open_page(browser, f"{demo.url}/")
            assert page["notice"] is None and page["status"] == "done", page["status"]
            assert not page["record"]["fell_back"] and page["record"]["probe_ms"] > 0
            assert_page_shows_record(page, plan)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            assert browser.screenshot(ARTIFACTS / "demo-alexnet.png").stat().st_size > 10_000
            # The user picks the split cut and runs again: it goes through the server.
            browser.eval(f"document.getElementById('cut').value = {json.dumps(split)}")
            browser.eval("new Promise(r => { const before = window.nscompileDemo.record;"
                         " document.getElementById('run').click();"
                         " const t = setInterval(() => window.nscompileDemo.record !== before"
                         " && (clearInterval(t), r(true)), 20); })")
            page = browser.call(READ_PAGE)
            rec = page["record"]
            assert rec["cut"] == split and rec["reason"] == "forced" and not rec["fell_back"]
            assert rec["upload_bytes"] == next(c for c in plan["cuts"] if c["id"] == split)["predicted"]["upload_bytes"]
            split_doc = next(c for c in plan["cuts"] if c["id"] == split)
            assert rec["server_ms"] > 0 and page["encoding"] == split_doc.get("encoding", "fp32")
            assert_page_shows_record(page, plan)
            assert browser.screenshot(ARTIFACTS / "demo-alexnet-forced.png").stat().st_size > 10_000
    finally:
        demo.stop()


def test_demo_page_without_server_runs_on_the_device(alexnet_build, tmp_path):
    need(in_browser=True)
    from nscompile.browser import Browser

    plan = {**json.loads((alexnet_build / "plan.json").read_text()), "_build": str(alexnet_build)}
    demo = DemoProcess(alexnet_build, "--server", f"http://127.0.0.1:{rt.free_port()}")
    try:
        with Browser(tmp_path, name="demo-no-server") as browser:
            page = open_page(browser, f"{demo.url}/")
    finally:
        demo.stop()
    rec = page["record"]
    assert rec["cut"] == plan["fallback"] and rec["reason"] == "backoff" and rec["upload_bytes"] == 0
    assert page["status"] == "done, on the device only"
    assert "this input ran entirely on this device" in page["notice"] and plan["fallback"] in page["notice"]
    assert_page_shows_record(page, plan)


def test_demo_refuses_a_directory_that_is_not_a_build(tmp_path):
    r = run_cli("demo", tmp_path, "--port", "0")
    assert r.returncode == 2 and "is not an nscompile build" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
