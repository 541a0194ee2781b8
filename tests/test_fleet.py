"""The fleet experiment's arithmetic: throughput, percentiles, offloaded shares and switches from device records."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from nscompile.testbed.fleet import BIN_S, percentile, summarise


def _rec(t, cut, ms, fell_back=False):
    return {"t": t, "cut": cut, "total_ms": ms, "fell_back": fell_back}


def test_percentiles_interpolate_between_order_statistics():
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert math.isnan(percentile([], 50))


def test_summary_counts_what_the_server_answered_and_what_the_fleet_finished():
    window = 2.0
    records = [
        # device 0: offloads, then runs locally; one request ends after the window and does not count
        [_rec(0.2, "input", 200), _rec(0.4, "input", 200), _rec(0.9, "prob", 500), _rec(2.5, "prob", 500)],
        # device 1: offloads once, falls back once (the server did not answer), stays local
        [_rec(0.3, "input", 300), _rec(1.2, "input", 900, fell_back=True), _rec(1.7, "prob", 500)],
    ]
    reports = [{"t": 0.0, "load": 1.0}, {"t": 0.5, "load": 3.0}, {"t": 1.0, "load": 2.0}]
    row, per_device = summarise(2, "nscompile", records, reports, window, all_device="prob")
    assert row["server_qps"] == pytest.approx(3 / window)  # three answered by the server; the fallback is not
    assert row["fleet_qps"] == pytest.approx(6 / window)
    assert row["offloaded"] == pytest.approx(0.5)
    assert row["switches_per_device_s"] == pytest.approx((1 + 1) / (2 * window))
    assert row["server_load_mean"] == pytest.approx(2.0)
    assert [d["requests"] for d in per_device] == [3, 3]
    assert per_device[0]["p50_ms"] == 200 and per_device[1]["p95_ms"] == pytest.approx(860.0)
    # bins of BIN_S: [0, 0.5) all offloaded, [0.5, 1) none, [1, 1.5) a fallback (not offloaded), [1.5, 2) none
    assert BIN_S == 0.5 and row["offloaded_share_sd"] == pytest.approx(math.sqrt(3) / 4)


@pytest.mark.slow
def test_bench_fleet_runs_two_small_fleets(tmp_path):
    """bench/bench_fleet.py end to end, shortened: N = 1, 2 for 2 s per mode on a small model."""
    r = subprocess.run([sys.executable, "bench/bench_fleet.py", "--model", "alexnet", "--size", "small", "--network", "WIFI",
                        "--devices", "1,2", "--window-s", "2", "-o", str(tmp_path / "f")],
                       capture_output=True, text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import csv

    with open(tmp_path / "f" / "fleet.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(x["devices"]), x["mode"]) for x in rows] == [(n, m) for n in (1, 2)
                                                               for m in ("nscompile", "load fixed at 1", "all-cloud")]
    cloud = [x for x in rows if x["mode"] == "all-cloud"]
    assert all(float(x["offloaded"]) == 1.0 and float(x["server_qps"]) > 0 for x in cloud)
    for name in ("fleet_devices.csv", "fleet_trace.csv", "fleet.png", "fleet_herding.png", "fleet.md"):
        assert (tmp_path / "f" / name).is_file(), name
