"""The profiler: microbenchmark generation, regression fitting, an end-to-end mini profile, the CLI."""

import json

import numpy as np
import onnx
import pytest

from nscompile.cost_model import load_profile
from nscompile.errors import NscompileError
from nscompile.features import NodeFeatures
from nscompile.profiler import microbench
from nscompile.profiler.fit import Sample, fit_key


def test_fit_recovers_a_linear_law():
    rng = np.random.default_rng(1)
    samples = []
    for _ in range(40):
        b = float(rng.uniform(1e4, 1e7))
        e = float(rng.uniform(1e3, 1e6))
        samples.append(Sample("Foo", {"bytes_total": b, "elems_out": e}, 0.01 + 2e-7 * b + 1e-6 * e))
    reg = fit_key("Foo", samples)
    assert reg.n_samples == 40 and reg.heldout_error < 0.02
    f = {"bytes_total": 5e6, "elems_out": 2e5}
    assert reg.predict(f) == pytest.approx(0.01 + 2e-7 * 5e6 + 1e-6 * 2e5, rel=0.02)


def test_fit_picks_a_power_law_when_the_data_is_one():
    rng = np.random.default_rng(2)
    samples = [Sample("Bar", {"bytes_total": x, "elems_out": x / 4}, 3e-3 * x ** 0.6)
               for x in rng.uniform(1e3, 1e8, 40)]
    reg = fit_key("Bar", samples)
    assert reg.transform == "loglog"
    assert reg.predict({"bytes_total": 1e6, "elems_out": 2.5e5}) == pytest.approx(3e-3 * 1e6 ** 0.6, rel=0.05)


def test_sub_microsecond_samples_do_not_bend_the_fit(monkeypatch):
    """Net times far below the overheads subtracted from them are mostly that subtraction's error."""
    from nscompile.profiler import fit

    law = 1e-8  # ms per byte: 1 to 1000 us over the sweep
    samples = [Sample("Qux", {"bytes_total": x}, law * x) for x in np.geomspace(1e5, 1e8, 20)]
    # A few tiny ops (0.2-0.3 us by the law) whose net time came out at 0.01 us.
    samples += [Sample("Qux", {"bytes_total": x}, 1e-5) for x in (2e4, 2.5e4, 3e4)]
    assert fit.fit_key("Qux", samples).predict({"bytes_total": 1e7}) == pytest.approx(law * 1e7, rel=0.05)
    # Judged by pure relative error, those three samples would outweigh all the others.
    monkeypatch.setattr(fit, "ABS_FLOOR_MS", 1e-9)
    assert fit.fit_key("Qux", samples).predict({"bytes_total": 1e7}) < 0.8 * law * 1e7


def test_fit_with_too_few_samples_is_a_constant():
    reg = fit_key("Baz", [Sample("Baz", {"bytes_total": 1.0}, 0.5), Sample("Baz", {"bytes_total": 2.0}, 0.7)])
    assert reg.transform == "constant" and reg.predict({}) == pytest.approx(0.6)


def test_fused_costs_are_fitted_jointly_per_key():
    """A free fused Relu and a Clip costing per element, from patterns that fold one or both with a BN."""
    from nscompile.profiler.fit import fit_fused

    rng = np.random.default_rng(3)
    clip, add = 1.6e-7, 4e-7  # ms per output element
    patterns = []
    for i in range(40):
        e = float(rng.uniform(1e4, 2e6))
        keys = [["fused:Relu"], ["fused:Clip"], ["fused:BatchNormalization", "fused:Clip"],
                ["fused:Add", "fused:Relu"]][i % 4]
        cost = e * (clip * ("fused:Clip" in keys) + add * ("fused:Add" in keys))
        patterns.append((keys, [e] * len(keys), cost * float(rng.uniform(0.97, 1.03))))
    patterns.append((["fused:Sigmoid"], [1e5], 0.01))  # seen once: left to the generic model
    models = fit_fused(patterns)
    assert set(models) == {"fused:Relu", "fused:Clip", "fused:BatchNormalization", "fused:Add"}
    assert models["fused:Clip"].predict({"elems_out": 1e6}) == pytest.approx(clip * 1e6, rel=0.05)
    assert models["fused:Add"].predict({"elems_out": 1e6}) == pytest.approx(add * 1e6, rel=0.05)
    assert models["fused:Relu"].predict({"elems_out": 1e6}) < 0.02 * clip * 1e6
    assert models["fused:Clip"].n_samples == 20 and models["fused:Clip"].heldout_error < 0.1


def test_quick_cases_are_valid_models_with_unique_names():
    # The dry pass draws the same configurations without building models.
    microbench._Builder.dry = True
    try:
        dry = [(c.name, c.group) for c in microbench.generate_cases(quick=True, seed=0)]
    finally:
        microbench._Builder.dry = False
    assert len(dry) == microbench.count_cases(quick=True, seed=0) >= 100
    assert len({n for n, _ in dry}) == len(dry)
    groups = {g for _, g in dry}
    for family in ("Conv", "Gemm", "MatMul", "MaxPool", "Relu", "Add", "Concat", "Softmax", "LSTM", "GRU",
                   "Gather", "LayerNormalization", "Transpose", "pattern"):
        assert family in groups
    for i, case in enumerate(microbench.generate_cases(quick=True, seed=0)):
        assert (case.name, case.group) == dry[i]
        onnx.checker.check_model(case.model)
        assert {x.name for x in case.model.graph.input} == set(case.feeds)
        if i == 20:  # building all of them takes too long for a unit test
            break
    patterns = (c for c in microbench.generate_cases(quick=True, seed=0) if c.group == "pattern")
    for case in (next(patterns), next(patterns)):  # a pattern's base: its first node alone, timed next to it
        onnx.checker.check_model(case.base)
        assert case.base.graph.node[0] == case.model.graph.node[0] and len(case.base.graph.node) == 1
        assert len(case.model.graph.node) > 1 and set(case.base_feeds) <= set(case.feeds)


def _small_cases(monkeypatch, scale=1):
    def few(quick, seed=0):
        # A handful of small cases of each main family: seconds, not minutes.
        rng = np.random.default_rng(seed)
        microbench._Builder.data_rng = np.random.default_rng(seed + 1)
        yield from microbench._conv_cases(rng, 8 * scale, 3e6)
        yield from microbench._conv_cases(rng, 4 * scale, 3e6, pattern_share=1.0)
        yield from microbench._gemm_cases(rng, 4 * scale, 2e6)
        yield from microbench._unary_cases(rng, ["Relu"], 4, 20_000)
        yield from microbench._binary_cases(rng, 3, 20_000)

    monkeypatch.setattr(microbench, "generate_cases", few)


@pytest.mark.slow
def test_run_profile_end_to_end(monkeypatch, tmp_path):
    from nscompile.profiler import nchwc_block, run_profile

    _small_cases(monkeypatch)
    seen = []
    prof = run_profile("mini", quick=True, progress=lambda d, t, n: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    # 8 single convs, and the base conv each of the 4 patterns was timed next to
    assert sum(r.n_samples for k, r in prof.models.items() if k.startswith("Conv")) == 12
    assert "fused:*" in prof.models
    # NCHWc copies measured on the CPU provider, at a memory copy's speed (1 to 1000 GB/s),
    # at sizes from the L1 cache to beyond the L2; the features used this CPU's block.
    assert 1e-9 < prof.reorder_ms_per_byte < 1e-6
    sizes = [b for b, _ in prof.reorder_curve]
    assert len(sizes) >= 5 and sizes == sorted(sizes) and sizes[0] < 64e3 and sizes[-1] > 4e6
    assert all(1e-10 < c < 1e-6 for _, c in prof.reorder_curve)
    assert prof.nchwc_block == nchwc_block() in (8, 16)  # MLAS on x86: AVX2 or AVX-512
    assert prof.meta["clock"] == "cpu" and prof.meta["power_source"] == "assumed"
    assert prof.run_overhead_ms > 0 and prof.node_overhead_ms >= 0
    speed = prof.meta["speed_checks"]  # reference kernels timed before and after the sweep at least
    assert speed["checks"] >= 2 and set(speed["spread"]) == {"dispatch", "compute", "memory"}
    # every prediction finite and >= 0, unknown ops too
    for key in list(prof.models) + ["TotallyUnknownOp"]:
        ms = prof.predict_ms(NodeFeatures(key, {"macs": 1e7, "bytes_total": 1e6, "elems_out": 1e5}))
        assert np.isfinite(ms) and ms >= 0
    assert prof.predict_ms(NodeFeatures("TotallyUnknownOp", {"bytes_total": 4e7})) > \
        prof.predict_ms(NodeFeatures("TotallyUnknownOp", {"bytes_total": 4e3}))
    path = prof.save(tmp_path / "p.json")
    again = load_profile(path)
    assert again.sha256 == prof.sha256


@pytest.mark.slow
def test_profile_corrects_for_the_machine_speed_at_each_moment(monkeypatch):
    """Every time is divided by SpeedCheck.factor: twice as slow as usual counts half."""
    import nscompile.profiler as profiler
    from nscompile.profiler.stability import SpeedCheck

    _small_cases(monkeypatch)
    fixed = profiler.FixedCosts(run=0.004, node=0.0004, lone=0.0042, input=0.0006, output=0.0002)
    monkeypatch.setattr(profiler, "_fixed_costs", lambda *a: fixed)
    monkeypatch.setattr(profiler, "_reorder_ms_per_byte", lambda *a: 2e-8)
    plain = profiler.run_profile("plain", quick=True)
    monkeypatch.setattr(SpeedCheck, "factor", lambda self, kind, at: 2.0)
    halved = profiler.run_profile("halved", quick=True)
    assert (halved.run_overhead_ms, halved.node_overhead_ms, halved.input_overhead_ms, halved.output_overhead_ms,
            halved.reorder_ms_per_byte) == pytest.approx((0.002, 0.0002, 0.0003, 0.0001, 1e-8))
    assert 0.004 / 2 <= plain.run_overhead_ms <= 0.004 * 2  # real checks: a factor within the clip


@pytest.mark.slow
def test_cli_profile(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from nscompile.cli import app

    _small_cases(monkeypatch)
    out = tmp_path / "dev.json"
    res = CliRunner().invoke(app, ["profile", "--name", "cli-test", "--quick", "-o", str(out), "--json",
                                   "--compute-power-w", "2.5"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["name"] == "cli-test"
    prof = load_profile(out)
    assert prof.compute_power_w == 2.5 and prof.to_json()["power"]["power_source"] == "measured"


@pytest.mark.slow
def test_speed_check_flags_a_machine_whose_speed_moved(monkeypatch, tmp_path):
    """A reference that ran 30% slower in some checks marks the profile as unsteady, and the CLI says so."""
    from typer.testing import CliRunner

    from nscompile.cli import app
    from nscompile.profiler.stability import SpeedCheck

    check = SpeedCheck(1, "cpu", "cpu", every_s=0.0)
    for _ in range(4):
        check.check()
    assert len(check.times["compute"]) == 4
    check.times = {"dispatch": [0.004] * 10, "compute": [0.2] * 6 + [0.26] * 4, "memory": [0.09, 0.092] * 5}
    check.stamps, check.every_s = [float(t) for t in range(10)], 1.0
    assert set(check.unsteady()) == {"compute"} and check.spread()["compute"] == pytest.approx(0.3)
    # A benchmark run during the slow checks (t = 6..9 s) is corrected by their ratio to the median.
    assert check.factor("compute", 8.0) == pytest.approx(1.3)
    assert check.factor("compute", 2.0) == pytest.approx(1.0)
    assert check.factor("compute", 100.0) == pytest.approx(1.3)  # past the last check: the nearest
    assert check.factor("dispatch", 8.0) == pytest.approx(1.0)

    real_summary = SpeedCheck.summary
    monkeypatch.setattr(SpeedCheck, "summary", lambda self: {**real_summary(self), "spread": {"compute": 0.3}})
    _small_cases(monkeypatch)
    res = CliRunner().invoke(app, ["profile", "--name", "noisy", "--quick", "-o", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    assert "speed moved while profiling" in res.output and "compute 30%" in res.output


def test_cli_rejects_bad_provider_and_quota(tmp_path):
    from nscompile.profiler import run_profile
    from nscompile.profiler.quota import cpu_quota
    from nscompile.profiler.timing import make_session

    with pytest.raises(NscompileError, match="unknown provider 'tpu'"):
        make_session(b"", 1, "tpu")
    with pytest.raises(NscompileError, match="kind"):
        run_profile("x", kind="phone")
    with pytest.raises(NscompileError, match="--cpu-quota"):
        with cpu_quota(0):
            pass


def test_killed_profiler_leaves_no_cgroup(tmp_path):
    """SIGTERM inside the quota still removes the cgroup it made."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from nscompile.profiler.quota import CGROUP_CPU

    if os.geteuid() != 0 or not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
        pytest.skip("needs root and a cgroup-v1 cpu controller")
    code = ("import time; from nscompile.profiler.quota import cpu_quota\n"
            "with cpu_quota(0.5) as g:\n    print(g, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    group = proc.stdout.readline().strip()
    assert group and os.path.isdir(group)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    time.sleep(0.1)
    assert not os.path.exists(group)
