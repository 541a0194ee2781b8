"""End to end: `nscompile build` on real architectures and a transformer block.

Every build here runs with verification on, so each emitted prefix+suffix pair has been
compared with the whole model in onnxruntime; the tests add their own checks of the
artifacts on top (plan.json contract, Triton configs, device bytes, multi-tensor cuts).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from helpers import transformer_block
from nscompile.compiler import build
from nscompile.errors import NscompileError
from nscompile.examples import LIGHT_MODELS, light_model_path
from nscompile.frontend import load_model
from nscompile.planner import GridSpec


def check_artifacts(out: Path) -> dict:
    """The plan.json contract of DESIGN.md, checked against the files on disk."""
    plan = json.loads((out / "plan.json").read_text())
    assert plan["schema"] == "nscompile.plan/1"
    assert json.loads((out / "device" / "plan.json").read_text()) == plan
    ids = [c["id"] for c in plan["cuts"]]
    assert len(set(ids)) == len(ids)
    grid = plan["grid"]
    assert len(plan["table"]) == len(grid["load"]) and all(len(r) == len(grid["bandwidth_mbps"]) for r in plan["table"])
    assert {c for row in plan["table"] for c in row} <= set(ids)
    all_device = [c for c in plan["cuts"] if c["suffix"] is None]
    assert len(all_device) == 1 and plan["fallback"] == all_device[0]["id"]
    for cut in plan["cuts"]:
        assert set(cut["predicted"]) >= {"device_ms", "cloud_ms", "upload_bytes", "download_bytes"}
        if cut["prefix"]:
            assert (out / cut["prefix"]).is_file()
        if cut["suffix"]:
            suffix = onnx.load(out / cut["suffix"], load_external_data=False)
            assert [i.name for i in suffix.graph.input] == [t["name"] for t in cut["tensors"]]
            config = (out / "cloud" / cut["cloud_model"] / "config.pbtxt").read_text()
            assert f'name: "{cut["cloud_model"]}"' in config
            for value in [*suffix.graph.input, *suffix.graph.output]:
                dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
                assert re.search(rf'name: "{re.escape(value.name)}"\s+data_type: TYPE_\w+\s+dims: \[ {", ".join(map(str, dims))} \]', config)
            assert plan["model"]["sha256"] in config
        # Each emitted file sits where plan.json says and carries the model hash.
        for rel in (cut["prefix"], cut["suffix"]):
            if rel:
                props = {p.key: p.value for p in onnx.load(out / rel, load_external_data=False).metadata_props}
                assert props["nscompile.model_sha256"] == plan["model"]["sha256"] and props["nscompile.cut"] == cut["id"]
    return plan


def device_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in (out / "device").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_models_build_and_verify(name, random_light, tmp_path):
    """The nine real architectures of the onnx package, with seeded random weights."""
    result = build(random_light(name), tmp_path / name)
    plan = check_artifacts(tmp_path / name)
    # Lossless cuts pass the tight check; lossy ones (fp16 by default) the accuracy gate.
    assert result.verification is not None and set(result.verification) == {c["id"] for c in plan["cuts"] if c["encoding"] == "fp32"}
    assert all(c["accuracy"]["passed"] for c in plan["cuts"] if c["encoding"] != "fp32")
    # The device holds each weight once: all prefixes share device/weights.bin.
    model = load_model(random_light(name))
    deepest = model.weights.nbytes()  # the all-device prefix uses every weight
    assert device_bytes(tmp_path / name) <= 1.05 * deepest


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_models_build_as_shipped(name, tmp_path):
    """As shipped: IR 3, opset 9, weights made by ConstantOfShape (folded by the frontend)."""
    build(light_model_path(name), tmp_path / name)
    check_artifacts(tmp_path / name)


def test_transformer_block_builds_for_both_objectives(tmp_path):
    path = tmp_path / "block.onnx"
    onnx.save(transformer_block(), path)
    for objective in ("latency", "energy"):
        result = build(path, tmp_path / objective, objective=objective, grid=GridSpec.parse("0.01:10000:24", "1,4", rtt_ms=5.0))
        plan = check_artifacts(tmp_path / objective)
        assert plan["grid"]["objective"] == objective and plan["table"] == plan["tables"][objective]
        assert result.verification and max(result.verification.values()) < 1e-4


def test_every_closed_cut_of_a_dag_emits_and_verifies(tmp_path):
    """Not only the cuts the profiles pick: random closed sets, multi-tensor cuts included."""
    from nscompile.annotate import annotate
    from nscompile.backend import emit
    from nscompile.cost_model import default_profile_path, load_profile
    from nscompile.planner import GridSpec, Plan, _describe_cuts, cut_graph, tensor_wire_bytes
    from nscompile.partition import is_closed
    from nscompile.verify import verify_build

    path = tmp_path / "block.onnx"
    onnx.save(transformer_block(seq=4, dim=8, heads=2), path)
    model = load_model(path)
    # Binding costs large enough to see: each side pays for every tensor its file binds.
    device = dataclasses.replace(load_profile(default_profile_path("device")), input_overhead_ms=1.0, output_overhead_ms=0.5)
    cloud = dataclasses.replace(load_profile(default_profile_path("server")), input_overhead_ms=0.1, output_overhead_ms=0.05)
    ann = annotate(model, device, cloud)
    graph, names = cut_graph(model)
    rng = np.random.default_rng(1)
    masks, n = [], len(model.nodes)
    while len(masks) < 12:  # random closed sets: closures of random node subsets under producers
        mask = np.zeros(n, bool)
        for start in rng.choice(n, size=rng.integers(1, 4), replace=False):
            stack = [int(start)]
            while stack:
                i = stack.pop()
                if not mask[i]:
                    mask[i] = True
                    stack += [model.tensors[t].producer for t in model.nodes[i].input if t in model.tensors and model.tensors[t].producer >= 0]
        assert is_closed(graph, mask)
        if not any((mask == m).all() for m in masks):
            masks.append(mask)
    masks += [np.zeros(n, bool), np.ones(n, bool)]
    cuts = _describe_cuts(model, ann, graph, names, tensor_wire_bytes(model, names, None), masks)
    assert any(len(c.upload) > 1 for c in cuts), "the sample should include multi-tensor cuts"
    plan = Plan(grid=GridSpec.parse(), objective="latency", cuts=cuts, device_tables={"latency": [[]]}, device_mixed={},
                device_breakpoints={}, fallback=cuts[-1].id)
    (tmp_path / "out").mkdir()
    doc = emit(model, plan, tmp_path / "out", {"device": {}, "cloud": {}})
    errors = verify_build(model, tmp_path / "out", doc)
    assert len(errors) == len(cuts) and max(errors.values()) < 1e-4
    for cut, entry in zip(cuts, doc["cuts"]):
        for profile, nodes_ms, file, predicted in ((device, ann.device_ms[cut.device].sum(), entry["prefix"], cut.device_ms),
                                                   (cloud, ann.cloud_ms[~cut.device].sum(), entry["suffix"], cut.cloud_ms)):
            if file is None:
                assert predicted == 0.0
                continue
            g = onnx.load(tmp_path / "out" / file, load_external_data=False).graph
            extra = profile.input_overhead_ms * (len(g.input) - 1) + profile.output_overhead_ms * (len(g.output) - 1)
            assert predicted == pytest.approx(nodes_ms + profile.run_overhead_ms + extra), (cut.id, file)


def test_verification_catches_a_wrong_suffix(tmp_path, random_light):
    """The build-time check is real: swap one suffix for another and it must fail."""
    from nscompile.verify import verify_build

    out = tmp_path / "sq"
    build(random_light("squeezenet"), out, grid=GridSpec.parse("0.1:1000:32", "1"), encodings="fp32")
    plan = json.loads((out / "plan.json").read_text())
    split = [c for c in plan["cuts"] if c["prefix"] and c["suffix"]]
    assert split, "expected at least one real split"
    suffix = onnx.load(out / split[0]["suffix"])
    last = suffix.graph.node[-1]
    scaled = helper.make_node("Mul", [last.output[0] + "_pre", "two"], [last.output[0]], name="tamper")
    last.output[0] = last.output[0] + "_pre"
    suffix.graph.node.append(scaled)
    suffix.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    onnx.save(suffix, out / split[0]["suffix"])
    with pytest.raises(NscompileError, match=f"verification failed for cut '{split[0]['id']}'"):
        verify_build(load_model(random_light("squeezenet")), out, plan)


def test_split_matches_whole_model_on_fresh_inputs(tmp_path, random_light):
    """Outside the build's own check: run each pair with onnxruntime at full optimisation."""
    out = tmp_path / "inc"
    path = random_light("inception_v1")
    build(path, out, verify=False)
    plan = check_artifacts(out)
    x = np.random.default_rng(7).standard_normal((1, 3, 224, 224)).astype(np.float32)
    input_name = plan["model"]["inputs"][0]["name"]
    whole = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {input_name: x})[0]
    for cut in plan["cuts"]:
        values = {input_name: x}
        for role in ("prefix", "suffix"):
            if cut[role]:
                sess = ort.InferenceSession(str(out / cut[role]), providers=["CPUExecutionProvider"])
                values.update(zip([o.name for o in sess.get_outputs()], sess.run(None, {i.name: values[i.name] for i in sess.get_inputs()})))
        np.testing.assert_allclose(values[plan["model"]["outputs"][0]["name"]], whole, rtol=1e-3, atol=1e-5)


def test_all_cloud_cut_on_request(tmp_path):
    """Benchmarks time "everything on the server" even where no bucket picks it."""
    path = tmp_path / "block.onnx"
    onnx.save(transformer_block(), path)
    grid = GridSpec.parse("0.1:0.2:2", "8", rtt_ms=1000.0)  # slow link, busy server: all-device everywhere
    plain = build(path, tmp_path / "plain", grid=grid).plan
    assert [c["id"] for c in plain["cuts"]] == [plain["fallback"]]
    forced = build(path, tmp_path / "forced", grid=grid, include_all_cloud=True)
    plan = check_artifacts(tmp_path / "forced")
    assert [c["id"] for c in plan["cuts"]] == ["input", plan["fallback"]]
    assert "input" not in {c for row in plan["table"] for c in row} and set(forced.verification) == {"input", plan["fallback"]}


def test_table_cuts_are_fastest_by_cut_latency(tmp_path, random_light):
    """At every bucket the solver's cut is the fastest emitted cut by the runtime's Cut.latency_ms.

    The solver and the per-cut formula are written apart; they must agree. The solver
    leaves out the sessions' fixed per-run microseconds that the predictions include,
    and plan.json rounds to 0.1 us: hence the small tolerance.
    """
    from nscompile.runtime import load_plan

    grid = GridSpec.parse("0.01:10000:40", "1,2,4,8", "1,2,4", rtt_ms=2.0, downlink_mbps=30.0)
    build(random_light("squeezenet"), tmp_path / "b", grid=grid, verify=False, report=False)
    plan = load_plan(tmp_path / "b" / "device")
    chosen_anywhere = {c for table in plan.raw["device_tables"]["latency"] for row in table for c in row}
    assert len(chosen_anywhere) >= 3, "too few cuts chosen to check anything"
    assert plan.raw["grid"]["device_load"] == [1.0, 2.0, 4.0] and plan.raw["device_tables"]["latency"][0] == plan.raw["table"]
    starts = grid.bandwidth_mbps
    centres = [(a * b) ** 0.5 for a, b in zip(starts, starts[1:])] + [starts[-1]]
    for kd, rows in zip(grid.device_load, plan.raw["device_tables"]["latency"]):
        for load, row in zip(grid.load, rows):
            for bw, chosen in zip(centres, row):
                latency = {c.id: c.latency_ms(bw, load, grid.rtt_ms, grid.downlink_mbps, kd) for c in plan.cuts.values()}
                assert latency[chosen] <= min(latency.values()) + 0.05 * kd, (kd, load, bw, chosen, latency)
                assert plan.lookup(bw, load, "latency", kd) == chosen  # the runtime reads the same cell
