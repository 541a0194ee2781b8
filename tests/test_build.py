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


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_models_build_and_verify(name, random_light, tmp_path):
    """The nine real architectures of the onnx package, with seeded random weights."""
    result = build(random_light(name), tmp_path / name)
    plan = check_artifacts(tmp_path / name)
    assert result.verification is not None and set(result.verification) == {c["id"] for c in plan["cuts"]}
    # The device holds each weight once: all prefixes share device/weights.bin.
    model = load_model(random_light(name))
    deepest = model.weights.nbytes()  # the all-device prefix uses every weight
    assert device_bytes(tmp_path / name) <= 1.05 * deepest


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_models_build_as_shipped(name, tmp_path):
    """As shipped: IR 3, opset 9, weights made by ConstantOfShape (folded by the frontend)."""
    build(light_model_path(name), tmp_path / name)
    check_artifacts(tmp_path / name)


def transformer_block(seq: int = 16, dim: int = 32, heads: int = 4, seed: int = 0) -> onnx.ModelProto:
    """One pre-norm encoder block: LayerNorm, multi-head attention, residual, LayerNorm, GELU MLP."""
    rng = np.random.default_rng(seed)
    head = dim // heads

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)

    inits = [w("wq", dim, dim), w("wk", dim, dim), w("wv", dim, dim), w("wo", dim, dim), w("w1", dim, 4 * dim), w("w2", 4 * dim, dim),
             numpy_helper.from_array(np.ones(dim, np.float32), "g1"), numpy_helper.from_array(np.zeros(dim, np.float32), "b1"),
             numpy_helper.from_array(np.ones(dim, np.float32), "g2"), numpy_helper.from_array(np.zeros(dim, np.float32), "b2"),
             numpy_helper.from_array(np.array([1, seq, heads, head], np.int64), "split_shape"),
             numpy_helper.from_array(np.array([1, seq, dim], np.int64), "merge_shape"),
             numpy_helper.from_array(np.array(1 / np.sqrt(head), np.float32), "scale"),
             numpy_helper.from_array(np.array(1 / np.sqrt(2), np.float32), "inv_sqrt2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"), numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    n = helper.make_node
    nodes = [n("LayerNormalization", ["x", "g1", "b1"], ["ln1"], name="ln1", axis=-1)]
    for p in "qkv":
        nodes += [n("MatMul", ["ln1", f"w{p}"], [f"{p}_flat"], name=f"proj_{p}"),
                  n("Reshape", [f"{p}_flat", "split_shape"], [f"{p}_split"], name=f"split_{p}"),
                  n("Transpose", [f"{p}_split"], [f"{p}_heads"], name=f"heads_{p}", perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3])]
    nodes += [n("MatMul", ["q_heads", "k_heads"], ["scores_raw"], name="scores"),
              n("Mul", ["scores_raw", "scale"], ["scores_scaled"], name="scale_scores"),
              n("Softmax", ["scores_scaled"], ["attn"], name="softmax", axis=-1),
              n("MatMul", ["attn", "v_heads"], ["ctx_heads"], name="context"),
              n("Transpose", ["ctx_heads"], ["ctx_t"], name="merge_heads", perm=[0, 2, 1, 3]),
              n("Reshape", ["ctx_t", "merge_shape"], ["ctx"], name="merge"),
              n("MatMul", ["ctx", "wo"], ["attn_out"], name="out_proj"),
              n("Add", ["x", "attn_out"], ["res1"], name="residual1"),
              n("LayerNormalization", ["res1", "g2", "b2"], ["ln2"], name="ln2", axis=-1),
              n("MatMul", ["ln2", "w1"], ["ff1"], name="fc1"),
              # GELU(x) = 0.5 x (1 + erf(x / sqrt 2))
              n("Mul", ["ff1", "inv_sqrt2"], ["g_a"], name="gelu_scale"), n("Erf", ["g_a"], ["g_b"], name="gelu_erf"),
              n("Add", ["g_b", "one"], ["g_c"], name="gelu_add"), n("Mul", ["ff1", "g_c"], ["g_d"], name="gelu_mul"),
              n("Mul", ["g_d", "half"], ["gelu"], name="gelu_half"),
              n("MatMul", ["gelu", "w2"], ["ff2"], name="fc2"),
              n("Add", ["res1", "ff2"], ["y"], name="residual2")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", 1, [1, seq, dim])],
                              [helper.make_tensor_value_info("y", 1, [1, seq, dim])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


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
    plan = Plan(grid=GridSpec.parse(), objective="latency", cuts=cuts, tables={"latency": []}, mixed={}, breakpoints={}, fallback=cuts[-1].id)
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
    build(random_light("squeezenet"), out, grid=GridSpec.parse("0.1:1000:32", "1"))
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

    grid = GridSpec.parse("0.01:10000:40", "1,2,4,8", rtt_ms=2.0, downlink_mbps=30.0)
    build(random_light("squeezenet"), tmp_path / "b", grid=grid, verify=False, report=False)
    plan = load_plan(tmp_path / "b" / "device")
    assert len({c for row in plan.raw["table"] for c in row}) >= 3, "too few cuts chosen to check anything"
    starts = grid.bandwidth_mbps
    centres = [(a * b) ** 0.5 for a, b in zip(starts, starts[1:])] + [starts[-1]]
    for load, row in zip(grid.load, plan.raw["tables"]["latency"]):
        for bw, chosen in zip(centres, row):
            latency = {c.id: c.latency_ms(bw, load, grid.rtt_ms, grid.downlink_mbps) for c in plan.cuts.values()}
            assert latency[chosen] <= min(latency.values()) + 0.05, (load, bw, chosen, latency)
