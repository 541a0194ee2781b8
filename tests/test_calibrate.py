"""Calibration: ``nscompile profile --model`` measures a model per node, the compiler prefers it."""

import json

import numpy as np
import pytest

from helpers import run_cli
from nscompile import zoo
from nscompile.cost_model import default_profile_path, load_profile


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    out = tmp_path_factory.mktemp("calib")
    zoo.write_models(["lenet"], out, size="small")
    return out / "lenet_small.onnx"


def test_calibration_matches_measurement_and_wins_in_build(lenet, tmp_path):
    from nscompile.compiler import build
    from nscompile.profiler.calibrate import calibrate

    base = load_profile(default_profile_path("device"))
    sha, entry = calibrate(lenet, base)
    nodes = entry["nodes"]
    assert len(nodes) >= 8 and all(v >= 0 for v in nodes.values())
    # Per-node times add up to the measured latency (less the run's fixed cost: one input, two outputs).
    assert sum(nodes.values()) + base.fixed_ms(1, 2) == pytest.approx(entry["measured_ms"], rel=1e-4)
    calibrated = base.with_calibrations({sha: entry})
    path = calibrated.save(tmp_path / "calibrated.json")
    assert load_profile(path).calibrations[sha]["nodes"] == nodes  # JSON round trip

    plain = build(lenet, tmp_path / "plain", report=False, verify=False).plan
    cal = build(lenet, tmp_path / "cal", device_profile=path, report=False, verify=False).plan
    assert cal["profiles"]["device"]["calibrated"] and not plain["profiles"]["device"]["calibrated"]
    all_device = next(c for c in cal["cuts"] if not c.get("cloud_model"))
    assert all_device["predicted"]["device_ms"] == pytest.approx(entry["measured_ms"], rel=1e-3)
    # Other input shapes: the calibration does not apply.
    assert calibrated.calibration_for(sha, {"data": [2, 1, 28, 28]}) is None


@pytest.mark.slow
def test_cli_profile_model(lenet, tmp_path):
    out = tmp_path / "cal.json"
    r = run_cli("profile", "--model", str(lenet), "--base", str(default_profile_path("device")), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    line = json.loads(r.stdout.splitlines()[0])
    assert line["nodes"] >= 8 and np.isfinite(line["measured_ms"])
    assert len(load_profile(out).calibrations) == 1
    bad = run_cli("profile", "--model", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "x.json"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.json").exists()
    bad = run_cli("profile", "-o", str(tmp_path / "y.json"))
    assert bad.returncode == 2 and "--name" in bad.stderr
