"""Cut-tensor encodings (issue 13): fp16 and int8 cut tensors, solved exactly, emitted as ONNX ops, gated for accuracy.

The combined envelope is checked against brute force on small random DAGs and against
direct min-cut solves on a real model; every emitted lossy pair runs against the whole
model; the gate's decisions and the bad-input errors are checked through the CLI and the
library; the runtime sends what plan.json predicts.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from helpers import FIXED_PHONE_PROFILE, all_closed_sets, brute_costs, random_dag, run_cli
from nscompile.accuracy import Tolerance, compare, load_calibration, violations
from nscompile.annotate import annotate
from nscompile.compiler import build
from nscompile.cost_model import default_profile_path, load_profile
from nscompile.encoding import parse_encodings, wire_layout
from nscompile.errors import NscompileError
from nscompile.frontend import load_model
from nscompile.partition import Weights, evaluate, is_closed, lines_envelope, lower_envelope, solve
from nscompile.planner import GridSpec, cut_graph, encoded_weights, objective_weights, plan, replan, tensor_wire_bytes


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """The paper's LeNet (DIG): its pool2 output is as large as its input in fp32, a quarter of it in int8."""
    from nscompile import zoo

    path = tmp_path_factory.mktemp("lenet") / "lenet.onnx"
    onnx.save(zoo.build_model("lenet", size="full"), path)
    return path


def _run_pair(build_dir, cut, feeds):
    values = dict(feeds)
    for role in ("prefix", "suffix"):
        if cut[role]:
            sess = ort.InferenceSession(str(build_dir / cut[role]), providers=["CPUExecutionProvider"])
            values.update(zip([o.name for o in sess.get_outputs()], sess.run(None, {i.name: values[i.name] for i in sess.get_inputs()})))
    return values


# --------------------------------------------------------------------------- user input


def test_encodings_and_tolerance_parse_or_say_what_is_wrong():
    assert parse_encodings("int8, fp32") == ("fp32", "int8")
    assert parse_encodings(["fp16", "fp32", "fp16"]) == ("fp32", "fp16")
    with pytest.raises(NscompileError, match="unknown encoding 'bf16'"):
        parse_encodings("fp32,bf16")
    with pytest.raises(NscompileError, match="must include fp32"):
        parse_encodings("fp16,int8")
    assert Tolerance.parse(None) == Tolerance(1e-2, 0.99)
    assert Tolerance.parse("0.05") == Tolerance(0.05, 0.99)
    assert Tolerance.parse("top1=0.9,rel_l2=0.002") == Tolerance(0.002, 0.9)
    for bad in ("0", "1.5", "top1=1.2", "rel_l2=-1"):
        with pytest.raises(NscompileError, match="out of range"):
            Tolerance.parse(bad)
    for bad in ("abc", "l2=0.1", "rel_l2=0.1,rel_l2=0.2"):
        with pytest.raises(NscompileError, match="bad --tolerance"):
            Tolerance.parse(bad)


def test_accuracy_figures_and_violations():
    rng = np.random.default_rng(0)
    want = [{"prob": rng.random((1, 10)).astype(np.float32), "label": np.array([[3]])} for _ in range(4)]
    same = compare(want, want)
    assert same["prob"] == {"rel_l2": 0.0, "max_abs": 0.0, "top1_agreement": 1.0} and same["label"] == {"agreement": 1.0}
    noisy = [{"prob": w["prob"] * 1.1, "label": np.array([[3 if i else 4]])} for i, w in enumerate(want)]
    figures = compare(want, noisy)
    assert figures["prob"]["rel_l2"] == pytest.approx(0.1, rel=1e-5)
    assert figures["prob"]["top1_agreement"] == 1.0 and figures["label"]["agreement"] == 0.75
    assert violations(figures, Tolerance(0.2, 0.7)) == []
    assert violations(figures, Tolerance(0.05, 0.99)) == ["prob: rel L2 0.1 > 0.05", "label: agreement 0.75 < 0.99"]


# --------------------------------------------------------------------------- exact solving


def test_lines_envelope_is_the_minimum_of_its_lines():
    rng = np.random.default_rng(5)
    for _ in range(300):
        k = int(rng.integers(1, 9))
        a = rng.integers(0, 6, k) * 1.0 if rng.random() < 0.5 else rng.uniform(0, 5, k)
        d = rng.integers(0, 4, k) * 1.0 if rng.random() < 0.5 else rng.uniform(0, 3, k)
        x_hi = float(rng.choice([0.5, 2.0, 10.0]))
        pieces = lines_envelope(a, d, 0.0, x_hi)
        assert pieces[0][0] == 0.0 and pieces[-1][1] == x_hi
        for (f0, t0, i0), (f1, t1, i1) in zip(pieces, pieces[1:]):
            assert t0 == f1 and f0 < t0 and i0 != i1 and d[i1] < d[i0]  # deeper into x, flatter lines
            assert a[i0] + t0 * d[i0] == pytest.approx(a[i1] + t0 * d[i1], abs=1e-12)
        for x in np.linspace(0.0, x_hi, 101):
            line = next(i for f, t, i in pieces if f <= x <= t)
            assert a[line] + x * d[line] <= (a + x * d).min() + 1e-12
    # Exact ties go to the lower index: the lossless pair, listed first, wins them.
    assert lines_envelope([1.0, 1.0], [2.0, 2.0], 0.0, 1.0) == [(0.0, 1.0, 0)]


@pytest.mark.parametrize("ints", [True, False])
def test_combined_envelope_of_encodings_matches_brute_force(ints):
    """min over (closed set, encoding) at every x, by enumeration, against per-encoding envelopes + lines_envelope."""
    rng = np.random.default_rng(11 + ints)
    lossy_wins = 0
    for _ in range(40):
        g = random_dag(rng, int(rng.integers(1, 10)))
        masks = all_closed_sets(g)
        draw = (lambda lo, hi, k: rng.integers(lo, hi, k) * 1.0) if ints else (lambda lo, hi, k: rng.uniform(lo, hi, k))
        base = Weights(draw(1, 5, g.n_nodes), draw(0, 2, g.n_nodes), np.zeros(g.n_tensors), np.zeros(g.n_tensors),
                       float(draw(0, 2, 1)[0]))
        up = draw(0, 6, g.n_tensors)
        up[g.producers < 0] += 6
        slope = Weights(np.zeros(g.n_nodes), np.zeros(g.n_nodes), up, draw(0, 2, g.n_tensors), 0.0)
        # An encoding: node-made tensors shrink (fp16 halves, int8 quarters) and pay a codec cost; inputs do not change.
        made = g.producers >= 0
        encodings = [(base, slope)]
        for ratio in (0.5, 0.25):
            r = np.where(made, ratio, 1.0)
            codec = np.where(made, draw(0, 2, g.n_tensors) * ratio, 0.0)
            encodings.append((dataclasses.replace(base, upload=base.upload * r + codec), dataclasses.replace(slope, upload=slope.upload * r)))
        x_hi = float(rng.choice([1.0, 5.0, 50.0]))
        lines = [(seg.intercept, seg.slope, e) for e, (b, s) in enumerate(encodings) for seg in lower_envelope(g, b, s, 0.0, x_hi)]
        pieces = lines_envelope([ln[0] for ln in lines], [ln[1] for ln in lines], 0.0, x_hi)
        brute = [(brute_costs(g, b, masks), brute_costs(g, s, masks)) for b, s in encodings]
        for x in np.linspace(0.0, x_hi, 151):
            i = next(i for f, t, i in pieces if f <= x <= t)
            got = lines[i][0] + x * lines[i][1]
            best = min((a + x * d).min() for a, d in brute)
            assert got <= best + 1e-9 * max(1.0, best), (x, got, best)
            lossy_wins += lines[i][2] > 0 and got < (brute[0][0] + x * brute[0][1]).min() - 1e-9
    assert lossy_wins > 100, "the random cases should make encoded cuts win often"


def test_tables_are_the_best_pair_of_direct_solves(lenet):
    """Every table cell, both objectives: the chosen pair costs what the best of one min-cut per encoding costs."""
    model = load_model(lenet)
    ann = annotate(model, load_profile(FIXED_PHONE_PROFILE), load_profile(default_profile_path("server")))
    grid = GridSpec.parse("0.1:1000:24", "1,4", rtt_ms=0.05)
    solved = plan(model, ann, grid, "latency", encodings=("fp32", "fp16", "int8"))
    graph, names = cut_graph(model)
    wire = tensor_wire_bytes(model, names, None)
    codecs = solved.candidates.codecs
    by_id = {c.id: c for c in solved.cuts}
    bw = np.array(grid.bandwidth_mbps)
    centres = np.append(np.sqrt(bw[:-1] * bw[1:]), bw[-1])
    for objective in ("latency", "energy"):
        for li, load in enumerate(grid.load):
            base, slope = objective_weights(objective, ann, graph, wire, load, grid)
            weights = {"fp32": (base, slope)} | {e: encoded_weights(objective, ann, base, slope, wire, c, load) for e, c in codecs.items()}
            for b, centre in enumerate(centres):
                x = 1.0 / centre
                best = min(solve(graph, wb.combine(ws, x)).cost for wb, ws in weights.values())
                cut = by_id[solved.tables[objective][li][b]]
                wb, ws = weights[cut.encoding]
                assert evaluate(graph, wb.combine(ws, x), cut.device) == pytest.approx(best, rel=1e-6, abs=1e-9)
    lossy = {c for row in solved.tables["latency"] for c in row if by_id[c].is_lossy}
    assert lossy, "LeNet on the phone-class device should send pool2 encoded somewhere"
    # Solving again without them gives the cells to other pairs and keeps the rest exact.
    again = replan(model, ann, solved, sorted(lossy))
    assert not lossy & {c.id for c in again.cuts} and again.dropped == sorted(lossy)
    with pytest.raises(ValueError, match="not a lossy cut"):
        replan(model, ann, solved, [solved.fallback])


# --------------------------------------------------------------------------- emitted pairs


def test_every_encoded_pair_emits_and_reproduces_the_whole_model(tmp_path):
    """Random closed sets (multi-tensor cuts of a transformer block) under fp16 and int8, run as emitted."""
    from nscompile.backend import emit
    from nscompile.encoding import codec_costs
    from nscompile.planner import Plan, _describe_cuts
    from helpers import transformer_block

    path = tmp_path / "block.onnx"
    onnx.save(transformer_block(seq=8, dim=16, heads=2), path)
    model = load_model(path)
    ann = annotate(model, load_profile(default_profile_path("device")), load_profile(default_profile_path("server")))
    graph, names = cut_graph(model)
    wire = tensor_wire_bytes(model, names, None)
    rng = np.random.default_rng(2)
    masks = []
    while len(masks) < 6:
        mask = np.zeros(len(model.nodes), bool)
        for i in range(len(model.nodes)):  # topological order: a node may join once its producers are in
            producers = [model.tensors[t].producer for t in model.nodes[i].input if t in model.tensors and model.tensors[t].producer >= 0]
            mask[i] = all(mask[p] for p in producers) and rng.random() < 0.7
        if mask.any() and not mask.all() and not any((mask == m).all() for m in masks):
            assert is_closed(graph, mask)
            masks.append(mask)
    codecs = {e: codec_costs(model, ann, names, wire, e) for e in ("fp16", "int8")}
    pairs = [(m, e) for m in masks for e in ("fp16", "int8")] + [(np.ones(len(model.nodes), bool), "fp32")]
    cuts = _describe_cuts(model, ann, graph, names, wire, [m for m, _ in pairs], [e for _, e in pairs], codecs)
    assert any(len(c.upload) > 1 for c in cuts if c.is_lossy), "the sample should include multi-tensor cuts"
    (tmp_path / "out").mkdir()
    doc = emit(model, Plan(GridSpec.parse(), "latency", cuts, {"latency": [[]]}, {}, {}, cuts[-1].id), tmp_path / "out", {"device": {}, "cloud": {}})
    x = {"x": rng.standard_normal((1, 8, 16)).astype(np.float32)}
    whole = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)[0]
    for cut, entry in zip(cuts, doc["cuts"]):
        if not cut.is_lossy:
            continue
        assert entry["encoding"] == cut.encoding and cut.id.endswith("@" + cut.encoding)
        values = _run_pair(tmp_path / "out", entry, x)
        got = values["y"]
        error = np.linalg.norm(got - whole) / np.linalg.norm(whole)
        assert error < (2e-3 if cut.encoding == "fp16" else 5e-2), (cut.id, error)
        # What travels: the prefix's outputs are the wire tensors, with the dtypes and bytes plan.json gives.
        for t in entry["tensors"]:
            assert values[t["name"]].dtype.name == t["dtype"] and values[t["name"]].nbytes == t["bytes"]
            source = model.tensors[t["source"]]
            if t["name"] != t["source"]:
                assert source.dtype == np.float32 and not source.is_input
                expect = {"fp16": source.nbytes // 2, "int8": source.nbytes // 4}[cut.encoding]
                assert t["bytes"] == (expect if t["name"].endswith(cut.encoding) else {"float32": 4, "uint8": 1}[t["dtype"]])
        assert entry["predicted"]["upload_bytes"] == sum(t["bytes"] for t in entry["tensors"])
        assert entry["upload_bytes_by_encoding"][cut.encoding] == entry["predicted"]["upload_bytes"]
        suffix = onnx.load(tmp_path / "out" / entry["suffix"], load_external_data=False)
        assert [i.name for i in suffix.graph.input] == [t["name"] for t in entry["tensors"]]
        config = (tmp_path / "out" / "cloud" / entry["cloud_model"] / "config.pbtxt").read_text()
        wire_type = "TYPE_FP16" if cut.encoding == "fp16" else "TYPE_UINT8"
        assert re.search(rf'name: "{re.escape(entry["tensors"][0]["name"])}"\s+data_type: (TYPE_FP32|{wire_type})', config)
        if cut.encoding == "int8":
            assert re.search(r'\.scale"\s+data_type: TYPE_FP32\s+dims: \[ 1 \]', config)  # Triton takes no scalars
        # The codec nodes' predicted time is part of both sides' estimate.
        plain = _describe_cuts(model, ann, graph, names, wire, [cut.device])[0]
        assert cut.device_ms > plain.device_ms and cut.cloud_ms > plain.cloud_ms
        assert cut.upload_bytes < plain.upload_bytes


def test_wire_names_never_clash_with_model_tensors(lenet):
    model = load_model(lenet)
    tensor = next(t for t in model.tensors.values() if t.producer >= 0 and t.dtype == np.float32)
    model.tensors[f"{tensor.name}@int8.scale"] = tensor  # a model that already uses one of the derived names
    parts = wire_layout(model, [tensor.name], "int8")
    assert [p.name for p in parts] == [f"{tensor.name}@int8_", f"{tensor.name}@int8_.scale", f"{tensor.name}@int8_.zero_point"]
    assert wire_layout(model, [model.inputs[0]], "int8")[0].name == model.inputs[0]  # the raw input is never re-encoded


# --------------------------------------------------------------------------- builds


def test_build_chooses_encoded_splits_where_fp32_keeps_everything_on_the_device(lenet, tmp_path):
    plain = build(lenet, tmp_path / "fp32", device_profile=FIXED_PHONE_PROFILE, encodings="fp32").plan
    mixed = build(lenet, tmp_path / "all", device_profile=FIXED_PHONE_PROFILE, encodings="fp32,fp16,int8")
    doc = mixed.plan
    cuts = {c["id"]: c for c in doc["cuts"]}
    plain_cuts = {c["id"]: c for c in plain["cuts"]}
    won = [(l, b) for l, row in enumerate(doc["table"]) for b, c in enumerate(row)
           if cuts[c]["encoding"] != "fp32" and plain_cuts[plain["table"][l][b]]["suffix"] is None]
    assert won, "an encoded split should replace all-device somewhere"
    for l, b in won:
        cut = cuts[doc["table"][l][b]]
        assert cut["prefix"] and cut["suffix"]
        assert cut["predicted"]["upload_bytes"] < cut["upload_bytes_by_encoding"]["fp32"]
    gate = mixed.accuracy
    assert gate["real_data"] is False and gate["inputs"] == 4 and gate["measured"] >= 1
    for c in doc["cuts"]:
        if c["encoding"] == "fp32":
            assert c["accuracy"] is None and c["id"] in mixed.verification
        else:
            acc = c["accuracy"]
            assert acc["passed"] and acc["inputs"] == 4 and not acc["real_data"] and c["id"] not in mixed.verification
            assert acc["outputs"]["prob"]["rel_l2"] <= 1e-2 and acc["outputs"]["prob"]["top1_agreement"] >= 0.99
            assert acc["outputs"]["argmax"]["agreement"] >= 0.99
            # The gate's figures are real: the emitted pair, rerun here, differs from the whole model that much.
            model = load_model(lenet)
            from nscompile.verify import random_inputs

            feeds = [random_inputs(model, seed) for seed in range(4)]
            whole = ort.InferenceSession(str(lenet), providers=["CPUExecutionProvider"])
            ref = [dict(zip(["prob", "argmax"], whole.run(["prob", "argmax"], f))) for f in feeds]
            got = [_run_pair(tmp_path / "all", c, f) for f in feeds]
            assert compare(ref, got)["prob"]["rel_l2"] == pytest.approx(acc["outputs"]["prob"]["rel_l2"], rel=1e-3)
    on_disk = json.loads((tmp_path / "all" / "device" / "plan.json").read_text())
    assert on_disk == doc and on_disk["accuracy_gate"] == gate


def test_gate_drops_pairs_beyond_a_tight_tolerance_and_solves_again(lenet, tmp_path):
    plain = build(lenet, tmp_path / "fp32", device_profile=FIXED_PHONE_PROFILE, encodings="fp32").plan
    tight = build(lenet, tmp_path / "tight", device_profile=FIXED_PHONE_PROFILE, encodings="fp32,fp16,int8", tolerance=Tolerance(1e-9, 0.99))
    gate = tight.accuracy
    assert gate["dropped"] and gate["kept"] == [] and all("rel L2" in v for d in gate["dropped"] for v in d["violations"])
    # With every lossy pair gone, what is left is the plain fp32 problem: the same tables, the same cuts.
    assert tight.plan["tables"] == plain["tables"] and tight.plan["breakpoints"] == plain["breakpoints"]
    assert [c["id"] for c in tight.plan["cuts"]] == [c["id"] for c in plain["cuts"]]
    assert not list((tmp_path / "tight" / "cloud").glob("*@*")), "dropped pairs leave no files"
    # A tolerance fp16 meets and int8 does not: int8 is dropped, and its cells go to the next best pair.
    both = build(lenet, tmp_path / "mid", device_profile=FIXED_PHONE_PROFILE, encodings="fp32,fp16,int8", tolerance=Tolerance(1e-3, 0.99))
    kinds = {c["encoding"] for c in both.plan["cuts"]}
    assert "int8" not in kinds and {d["cut"].split("@")[1] for d in both.accuracy["dropped"]} == {"int8"}
    assert "fp16" in kinds, "fp16 (rel L2 ~1e-4 here) should take the cells int8 lost"


def test_gate_catches_a_pair_that_changes_the_answer(lenet, tmp_path):
    """The gate is real: a lossy suffix that scales its output by 1.05 fails it."""
    from onnx import helper, numpy_helper

    from nscompile.accuracy import AccuracyGate

    out = tmp_path / "b"
    doc = build(lenet, out, device_profile=FIXED_PHONE_PROFILE, encodings="fp32,int8").plan
    cut = next(c for c in doc["cuts"] if c["encoding"] == "int8")
    gate = AccuracyGate(load_model(lenet), Tolerance())
    assert gate.measure(out, cut)["passed"]
    suffix = onnx.load(out / cut["suffix"])
    prob = next(n for n in suffix.graph.node if "prob" in n.output)
    prob.output[0] = "prob_pre"
    suffix.graph.node.append(helper.make_node("Mul", ["prob_pre", "k"], ["prob"], name="tamper"))
    suffix.graph.initializer.append(numpy_helper.from_array(np.array(1.05, np.float32), "k"))
    onnx.save(suffix, out / cut["suffix"])
    figures = gate.measure(out, cut)
    assert not figures["passed"] and figures["violations"] == [f"prob: rel L2 {figures['outputs']['prob']['rel_l2']:.3g} > 0.01"]
    assert figures["outputs"]["prob"]["rel_l2"] == pytest.approx(0.05, rel=0.2)


def test_calibration_inputs_are_used_and_checked(lenet, tmp_path):
    rng = np.random.default_rng(4)
    digits = rng.random((6, 1, 1, 28, 28)).astype(np.float32)  # six samples, stacked
    np.savez(tmp_path / "calib.npz", data=digits)
    result = build(lenet, tmp_path / "out", device_profile=FIXED_PHONE_PROFILE, encodings="fp32,int8", calibration_inputs=tmp_path / "calib.npz")
    assert result.accuracy["real_data"] is True and result.accuracy["inputs"] == 6
    assert all(c["accuracy"]["real_data"] for c in result.plan["cuts"] if c["accuracy"])
    (tmp_path / "dir").mkdir()
    for i in range(3):
        np.save(tmp_path / "dir" / f"{i}.npy", digits[i])
    assert len(load_calibration(load_model(lenet), tmp_path / "dir").feeds) == 3


@pytest.mark.slow
def test_bad_encoding_input_is_one_line_exit_2_nothing_written(lenet, tmp_path):
    np.savez(tmp_path / "names.npz", image=np.zeros((1, 1, 28, 28), np.float32))
    np.savez(tmp_path / "shape.npz", data=np.zeros((1, 3, 28, 28), np.float32))
    (tmp_path / "empty").mkdir()
    cases = [
        (["--encodings", "fp32,int4"], "unknown encoding 'int4'"),
        (["--encodings", "int8"], "must include fp32"),
        (["--tolerance", "2"], "out of range"),
        (["--tolerance", "top1=x"], "bad --tolerance"),
        (["--calibration", tmp_path / "names.npz"], r"arrays \['image'\] but the model's inputs are \['data'\]"),
        (["--calibration", tmp_path / "shape.npz"], r"array 'data' has shape \[1, 3, 28, 28\], but the model takes \[1, 1, 28, 28\]"),
        (["--calibration", tmp_path / "missing.npz"], "does not exist"),
        (["--calibration", tmp_path / "empty"], "has no .npz or .npy files"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        proc = run_cli("build", lenet, "-o", out, "--encodings", "fp32,fp16,int8", *extra)
        assert proc.returncode == 2, (extra, proc.stderr)
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and re.search(message, lines[0]) and "Traceback" not in proc.stderr, (extra, proc.stderr)
        assert not out.exists() and not list(tmp_path.glob(".out.*")), extra


@pytest.mark.slow
def test_cli_summary_names_the_gate_and_inspect_shows_bytes_per_encoding(lenet, tmp_path):
    out = tmp_path / "b"
    proc = run_cli("build", lenet, "-o", out, "--device", FIXED_PHONE_PROFILE, "--encodings", "fp32,fp16,int8", "--tolerance", "rel_l2=0.001")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "accuracy gate:" in text and "random inputs, not real data" in text
    assert re.search(r"dropped \S+@int8 \(prob: rel L2 [\d.e-]+ > 0.001\); the tables were solved again without it", text)
    shown = run_cli("inspect", out)
    assert shown.returncode == 0 and "fp16 KB" in shown.stdout and "int8 KB" in shown.stdout
    assert re.search(r"@fp16 ", shown.stdout), "the decision map names the encoding"
    assert "int8 KB" in (out / "report.html").read_text()


# --------------------------------------------------------------------------- runtime


def test_runner_sends_encoded_tensors_and_gets_the_model_s_answer(lenet, tmp_path):
    from nscompile.runtime import SplitRunner
    from nscompile.serve import create_app
    from helpers import ServerThread

    out = tmp_path / "b"
    result = build(lenet, out, device_profile=FIXED_PHONE_PROFILE, encodings="fp32,fp16,int8", include_all_cloud=True)
    lossy = [c for c in result.plan["cuts"] if c["encoding"] != "fp32"]
    assert lossy
    x = {"data": np.random.default_rng(9).random((1, 1, 28, 28)).astype(np.float32)}
    whole = ort.InferenceSession(str(lenet), providers=["CPUExecutionProvider"]).run(["prob"], x)[0]
    server = ServerThread(create_app(out / "cloud", concurrency=1))
    try:
        for cut in lossy:
            with SplitRunner(out / "device", server.url, force_cut=cut["id"]) as runner:
                outputs, rec = runner.run(x, with_record=True)
            assert not rec.fell_back, rec.error
            assert rec.encoding == cut["encoding"] and rec.cut == cut["id"]
            assert rec.upload_bytes == cut["predicted"]["upload_bytes"] < cut["upload_bytes_by_encoding"]["fp32"]
            assert np.linalg.norm(outputs["prob"] - whole) / np.linalg.norm(whole) < 1e-2
    finally:
        server.stop()


# --------------------------------------------------------------------------- profiles


@pytest.mark.slow
def test_sweep_times_the_codec_ops_and_old_profiles_still_predict_them(lenet):
    from nscompile.encoding import codec_costs
    from nscompile.features import graph_features, static_shapes
    from nscompile.profiler.microbench import generate_cases

    seen = {}
    for case in generate_cases(quick=True):
        if case.group in ("Cast", "DynamicQuantizeLinear", "DequantizeLinear"):
            feats = graph_features(case.model.graph, static_shapes(case.model), {t.name for t in case.model.graph.initializer})
            assert [f.key for f in feats] == [case.group], case.name  # timed under the key the compiler predicts with
            seen[case.group] = seen.get(case.group, 0) + 1
            ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, case.feeds)
    assert seen == {"Cast": 10, "DynamicQuantizeLinear": 5, "DequantizeLinear": 5}
    # The tests' fixed phone profile predates these ops: its fallback regression prices them by the bytes moved.
    model = load_model(lenet)
    device, cloud = load_profile(FIXED_PHONE_PROFILE), load_profile(default_profile_path("server"))
    ann = annotate(model, device, cloud)
    graph, names = cut_graph(model)
    wire = tensor_wire_bytes(model, names, None)
    for encoding in ("fp16", "int8"):
        codec = codec_costs(model, ann, names, wire, encoding)
        big = int(np.argmax(np.where(codec.encodable, wire, 0)))
        assert codec.encodable[big] and codec.wire_bytes[big] < wire[big]
        assert 0 < codec.device_ms[big] < 5.0 and 0 < codec.cloud_ms[big] < 5.0
        assert (codec.device_ms[~codec.encodable] == 0).all() and (codec.wire_bytes[~codec.encodable] == wire[~codec.encodable]).all()


@pytest.mark.slow
def test_encoded_suffixes_are_a_valid_triton_repository_that_tritonclient_drives(lenet, tmp_path):
    """Wire dtypes FP16, UINT8 and FP32 scales: Triton's config schema takes them, tritonclient sends them."""
    from helpers import ServerProcess, check_triton_repository

    httpclient = pytest.importorskip("tritonclient.http")

    out = tmp_path / "b"
    doc = build(lenet, out, device_profile=FIXED_PHONE_PROFILE, encodings="fp32,fp16,int8", tolerance=Tolerance(0.5, 0.0)).plan
    assert {c["encoding"] for c in doc["cuts"]} >= {"int8"}
    assert len(check_triton_repository(out / "cloud")) == sum(1 for c in doc["cuts"] if c["suffix"])
    cut = next(c for c in doc["cuts"] if c["encoding"] == "int8")
    x = {"data": np.random.default_rng(3).random((1, 1, 28, 28)).astype(np.float32)}
    sent = _run_pair(out, {**cut, "suffix": None}, x)  # the prefix alone: what the device sends
    server = ServerProcess(out / "cloud")
    try:
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30)
        inputs = []
        for t in cut["tensors"]:
            i = httpclient.InferInput(t["name"], t["shape"], {"uint8": "UINT8", "float32": "FP32", "float16": "FP16"}[t["dtype"]])
            i.set_data_from_numpy(sent[t["name"]])
            inputs.append(i)
        got = client.infer(cut["cloud_model"], inputs).as_numpy("prob")
        client.close()
    finally:
        server.kill()
    np.testing.assert_allclose(got, _run_pair(out, cut, x)["prob"], rtol=1e-6, atol=1e-7)


def test_int8_is_left_out_where_the_opset_lacks_dynamic_quantization():
    from nscompile.examples import light_model_path
    from nscompile.planner import usable_encodings

    model = load_model(light_model_path("squeezenet"))  # as the onnx package ships it: opset 9
    usable, notes = usable_encodings(model, "fp32,fp16,int8")
    assert usable == ("fp32", "fp16") and notes == ["int8 left out: it needs ONNX opset >= 11 (DynamicQuantizeLinear), the model imports 9"]
