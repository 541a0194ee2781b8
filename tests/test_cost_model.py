"""Profiles as data: evaluation, JSON round trip, validation, radio models, shipped profiles."""

import dataclasses
import json
import math

import numpy as np
import pytest

from nscompile.cost_model import (
    RADIO_PRESETS,
    Profile,
    RadioModel,
    Regression,
    default_profile_path,
    load_profile,
    load_radio_overrides,
    same_cpu,
    shipped_for_this_cpu,
)
from nscompile.errors import NscompileError
from nscompile.features import NodeFeatures, graph_features, static_shapes


def _profile():
    return Profile(
        name="t", kind="device", provider="cpu", threads=1, compute_power_w=2.0, idle_power_w=0.25,
        models={
            "Conv": Regression(("macs",), "linear", (1e-6,), 0.01, 0.1, 10),
            "Relu": Regression(("bytes_total",), "loglog", (0.5,), -3.0, 0.2, 5),
            "Softmax": Regression((), "constant", (), 0.02),
            "fused:*": Regression(("elems_out",), "linear", (1e-7,), 0.0),
            "fused:Dropout": Regression((), "constant", (), 0.0),
        },
        fallback=Regression(("bytes_total",), "linear", (1e-6,), 0.001),
        meta={"cpu_model": "test cpu", "onnxruntime_version": "x"},
    )


def test_regression_forms_evaluate_to_the_formula():
    p = _profile()
    assert p.predict_ms(NodeFeatures("Conv", {"macs": 2e6})) == pytest.approx(2.01)
    assert p.predict_ms(NodeFeatures("Relu", {"bytes_total": 1e4})) == pytest.approx(
        math.exp(-3.0 + 0.5 * math.log1p(1e4)))
    assert p.predict_ms(NodeFeatures("Softmax", {"elems_out": 1e9})) == pytest.approx(0.02)


def test_lookup_order_unknown_fused_folded():
    p = _profile()
    # unseen op type -> fallback on bytes
    assert p.predict_ms(NodeFeatures("NeverSeenOp", {"bytes_total": 1e6})) == pytest.approx(1.001)
    assert p.predict_ms(NodeFeatures("NeverSeenOp", {})) == pytest.approx(0.001)
    assert p.predict_ms(NodeFeatures("folded:Unsqueeze", {"bytes_total": 1e9})) == 0.0
    assert p.predict_ms(NodeFeatures("fused:Relu", {"elems_out": 1e6})) == pytest.approx(0.1)
    assert p.predict_ms(NodeFeatures("fused:Dropout", {"elems_out": 1e6})) == 0.0


def test_predictions_are_finite_and_non_negative():
    p = _profile()
    p.models["Neg"] = Regression(("macs",), "linear", (1.0,), -5.0)
    p.models["Huge"] = Regression(("macs",), "loglog", (1e6,), 0.0)
    assert p.predict_ms(NodeFeatures("Neg", {"macs": 1.0})) == 0.0
    assert math.isfinite(p.predict_ms(NodeFeatures("Huge", {"macs": 1e30})))
    assert p.predict_ms(NodeFeatures("Conv", {"macs": float("nan")})) >= 0.0


def test_json_round_trip_and_sha():
    p = _profile()
    d = json.loads(json.dumps(p.to_json()))
    assert d["schema"] == "nscompile.profile/1"
    assert d["power"]["power_source"] == "assumed"
    q = Profile.from_json(d)
    assert q.to_json() == p.to_json()
    assert q.sha256 == p.sha256 and len(p.sha256) == 64
    f = NodeFeatures("Relu", {"bytes_total": 123.0})
    assert q.predict_ms(f) == p.predict_ms(f)
    q.models["Conv"] = Regression(("macs",), "linear", (2e-6,), 0.01)
    assert q.sha256 != p.sha256


def test_save_and_load(tmp_path):
    path = _profile().save(tmp_path / "p.json")
    q = load_profile(path)
    assert q.name == "t" and q.threads == 1 and q.radio("lte") == RADIO_PRESETS["lte"]


@pytest.mark.parametrize("content, words", [
    ("{not json", "not valid JSON"),
    ('{"schema": "other/9"}', "schema"),
    ('[1, 2]', "JSON object"),
])
def test_invalid_files_name_the_file(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(NscompileError, match=words) as exc:
        load_profile(path)
    assert "bad.json" in str(exc.value)


def test_invalid_fields_are_named(tmp_path):
    d = _profile().to_json()
    d["models"]["Conv"]["coef"] = ["x"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(d))
    with pytest.raises(NscompileError, match=r"models\['Conv'\].*coef"):
        load_profile(path)
    d = _profile().to_json()
    d["power"]["idle_power_w"] = -1
    path.write_text(json.dumps(d))
    with pytest.raises(NscompileError, match="idle_power_w"):
        load_profile(path)
    with pytest.raises(NscompileError, match="does not exist"):
        load_profile(tmp_path / "missing.json")


def test_radio_presets_follow_huang_2012():
    p = _profile()
    lte = p.radio("LTE")
    assert lte.up_alpha_w_per_mbps == pytest.approx(0.43839)
    assert lte.up_power_w(5.85) == pytest.approx(0.43839 * 5.85 + 1.28804)
    assert p.radio("Wi-Fi") is p.radio("wifi")
    assert p.radio("3g").up_alpha_w_per_mbps > lte.up_alpha_w_per_mbps  # 3G costs more per Mbps
    with pytest.raises(NscompileError, match="no radio model for network 'satellite'"):
        p.radio("satellite")


def test_overrides(tmp_path):
    f = tmp_path / "radio.json"
    f.write_text(json.dumps({"lte": {"up_alpha_w_per_mbps": 1, "up_beta_w": 2, "down_alpha_w_per_mbps": 3,
                                     "down_beta_w": 4, "source": "my meter"}}))
    radios = load_radio_overrides(f)
    p = _profile().with_overrides(compute_power_w=4.0, radio=radios)
    assert p.compute_power_w == 4.0 and p.idle_power_w == 0.25
    assert p.radio("lte") == RadioModel(1.0, 2.0, 3.0, 4.0, "my meter")
    assert p.radio("wifi") == RADIO_PRESETS["wifi"]
    assert p.to_json()["power"]["power_source"] == "user override"
    f.write_text(json.dumps({"lte": {"up_alpha_w_per_mbps": -1}}))
    with pytest.raises(NscompileError, match="network 'lte'"):
        load_radio_overrides(f)
    with pytest.raises(NscompileError, match="compute_power_w"):
        _profile().with_overrides(compute_power_w=float("nan"))


def test_default_profile_paths():
    assert default_profile_path("cloud") == default_profile_path("server")
    with pytest.raises(NscompileError, match="unknown profile kind"):
        default_profile_path("toaster")


@pytest.mark.parametrize("kind", ["device", "server"])
def test_shipped_profiles_predict_every_light_model(kind):
    from nscompile.profiler.modelprep import light_model_paths, load_light_model

    p = load_profile(default_profile_path(kind))
    assert p.kind == kind and p.models and p.meta.get("cpu_model")
    for name in ("squeezenet", "shufflenet"):
        if name not in light_model_paths():
            continue
        m = load_light_model(name)
        feats = graph_features(m.graph, static_shapes(m), {i.name for i in m.graph.initializer})
        ms = [p.predict_ms(f) for f in feats]
        assert all(np.isfinite(ms)) and min(ms) >= 0
        assert 0.1 < sum(ms) < 10_000


def test_fixed_costs_and_time_scale():
    from dataclasses import replace

    p = replace(_profile(), run_overhead_ms=0.004, node_overhead_ms=0.001)
    conv = NodeFeatures("Conv", {"macs": 2e6, "reorder_copies": 2.0})
    # a kernel pays one dispatch, plus one per layout copy; a fused node only its copies
    assert p.predict_ms(conv) == pytest.approx(2.01 + 3 * 0.001)
    assert p.predict_ms(NodeFeatures("fused:Relu", {"elems_out": 1e6})) == pytest.approx(0.1)
    assert p.run_ms(2.0) == pytest.approx(2.004) and p.run_ms(0.0) == 0.0  # an empty side runs nothing
    # each input beyond the first costs its binding, each output beyond the first its own
    io = replace(p, input_overhead_ms=0.0005, output_overhead_ms=0.0002)
    assert io.run_ms(2.0, inputs=3, outputs=2) == pytest.approx(2.004 + 2 * 0.0005 + 0.0002)
    assert io.run_ms(2.0) == pytest.approx(2.004)
    # Under a CPU quota the CPU-time regressions are scaled by the measured slowdown.
    q = replace(p, time_scale=4.5)
    assert q.predict_ms(conv) == pytest.approx(4.5 * p.predict_ms(conv))
    assert q.run_ms(2.0) == pytest.approx(2.0 + 4.5 * 0.004)
    assert replace(io, time_scale=4.5).run_ms(2.0, 3, 1) == pytest.approx(2.0 + 4.5 * (0.004 + 2 * 0.0005))
    again = Profile.from_json(json.loads(q.canonical_json()))
    assert again.time_scale == 4.5 and again.node_overhead_ms == 0.001 and again.sha256 == q.sha256


def test_copies_are_priced_by_their_size_and_old_profiles_read_as_before():
    curve = ((1e4, 2e-8), (1e6, 2e-8), (4e6, 8e-8))
    p = dataclasses.replace(_profile(), reorder_ms_per_byte=3e-8, reorder_curve=curve, nchwc_block=16)
    q = Profile.from_json(json.loads(json.dumps(p.to_json())))
    assert q.reorder_curve == curve and q.nchwc_block == 16 and q.sha256 == p.sha256
    assert p.reorder_ms(2e5, 2) == pytest.approx(2e5 * 2e-8)  # two 100 kB copies: in the cache
    assert p.reorder_ms(4e6, 2) == pytest.approx(4e6 * 5e-8)  # two of 2 MB: halfway (in log size) to 4 MB's price
    assert p.reorder_ms(1e8, 1) == pytest.approx(1e8 * 8e-8)  # flat beyond the measured sizes
    assert p.reorder_ms(0.0, 0) == 0.0
    f = NodeFeatures("Conv", {"macs": 1e6, "reorder_bytes": 4e6, "reorder_copies": 2.0})
    assert p.predict_ms(f) == pytest.approx(1.01 + 4e6 * 5e-8)
    # A profile from before both fields: one price per byte, AVX2's block of 8.
    d = p.to_json()
    del d["reorder_curve"], d["nchwc_block"]
    old = Profile.from_json(d)
    assert old.nchwc_block == 8 and old.reorder_curve == () and old.reorder_ms(4e6, 2) == pytest.approx(4e6 * 3e-8)
    for field, value, words in (("reorder_curve", [[0, 1e-8]], "reorder_curve"), ("reorder_curve", "x", "reorder_curve"),
                                ("nchwc_block", 0, "nchwc_block"), ("nchwc_block", 16.5, "nchwc_block")):
        bad = dict(p.to_json(), **{field: value})
        with pytest.raises(NscompileError, match=words):
            Profile.from_json(bad)


def test_shipped_profiles_are_matched_to_this_cpu_by_family(monkeypatch):
    import nscompile.profiler as profiler

    assert same_cpu("AMD EPYC", "AMD EPYC 7B13 64-Core Processor")
    assert same_cpu("Intel(R) Xeon(R) Processor", "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz")
    assert not same_cpu("Intel(R) Xeon(R) Processor", "AMD EPYC")
    monkeypatch.setattr(profiler, "cpu_model", lambda: "AMD EPYC 9B14")
    found = shipped_for_this_cpu("device")
    assert found and found[0] == default_profile_path("device")  # the default first
    assert all(load_profile(p).meta["cpu_model"] == "AMD EPYC" and load_profile(p).kind == "device" for p in found)
    assert [bool(load_profile(p).meta.get("cpu_quota_cores")) for p in found] == sorted(
        bool(load_profile(p).meta.get("cpu_quota_cores")) for p in found)  # unthrottled before quotas
    monkeypatch.setattr(profiler, "cpu_model", lambda: "Apple M9")
    assert shipped_for_this_cpu("device") == []
