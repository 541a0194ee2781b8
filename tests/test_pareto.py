"""Latency and energy together (issue 15): exact fronts, plan.json's ``pareto``, the run-time policies.

The fronts are checked against brute force over every closed set of small random DAGs, for
every lambda (each interval between the brute-force crossings, and the exact breakpoints);
the planner's fronts against fronts solved from scratch on a real model; ``Cut.energy_mj``
against the planner's energy objective; the policies against the definitions, through a
real server.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import onnx
import pytest

from helpers import FIXED_PHONE_PROFILE, ServerThread, all_closed_sets, brute_costs, make_handmade_build, random_dag, run_cli, sample_inputs
from nscompile.annotate import annotate
from nscompile.cost_model import default_profile_path, load_profile
from nscompile.errors import NscompileError
from nscompile.frontend import load_model
from nscompile.partition import SolverInputError, Weights, evaluate, is_closed, lines_front, pareto_front, upload_set
from nscompile.planner import GridSpec, bucket_centres, cut_graph, encoded_weights, objective_weights, plan, replan, tensor_wire_bytes
from nscompile.runtime.plan import ParetoPoint, load_plan
from nscompile.runtime.policies import ENERGY, LATENCY, as_policy, budget, slo, weighted


# --------------------------------------------------------------------------- brute force


def brute_front(first: np.ndarray, second: np.ndarray) -> tuple[list[tuple[float, float]], list[float]]:
    """The (first, second) values strictly best on some lambda interval, and the crossings, by enumeration.

    Written without the hull: between two consecutive crossings of any two lines the best line
    does not change, so the midpoint of every such interval (and a point past the last) tells it.
    """
    crossings = {0.0}
    for i in range(len(first)):
        d = second[i] - second
        ok = d != 0
        lam = (first[ok] - first[i]) / d[ok]
        crossings.update(float(v) for v in lam[lam > 0])
    crossings = sorted(crossings)
    # Crossings closer than float noise are one (three lines through one point, summed in
    # different orders); a probe between them would see rounding, not a line.
    distinct = [c for k, c in enumerate(crossings) if k == 0 or c - crossings[k - 1] > 1e-9 * max(1.0, c)]
    probes = [0.5 * (a + b) for a, b in zip(distinct, distinct[1:])] + [2.0 * distinct[-1] + 1.0]
    values: list[tuple[float, float]] = []
    for lam in probes:
        i = int(np.argmin(first + lam * second))
        v = (float(first[i]), float(second[i]))
        if not values or not np.allclose(v, values[-1], rtol=1e-9, atol=1e-9):
            values.append(v)
    return values, crossings


def _draw(rng, ints):
    return (lambda lo, hi, k: rng.integers(lo, hi, k) * 1.0) if ints else (lambda lo, hi, k: rng.uniform(lo, hi, k))


def _random_options(rng, g, ints):
    """1-3 (latency-like, energy-like) weight pairs: the device is slow for one and costly for the other."""
    draw = _draw(rng, ints)
    options = []
    for _ in range(int(rng.integers(1, 4))):
        up = draw(0, 6, g.n_tensors)
        up[g.producers < 0] += 4  # graph inputs are big, as a raw image is
        first = Weights(draw(1, 5, g.n_nodes), draw(0, 3, g.n_nodes), up, draw(0, 2, g.n_tensors), float(draw(0, 3, 1)[0]))
        second = Weights(draw(2, 9, g.n_nodes), draw(0, 2, g.n_nodes), draw(0, 9, g.n_tensors), draw(0, 2, g.n_tensors),
                         float(draw(0, 2, 1)[0]))
        options.append((first, second))
    return options


def check_front(g, options, front, masks):
    firsts = np.concatenate([brute_costs(g, f, masks) for f, _ in options])
    seconds = np.concatenate([brute_costs(g, s, masks) for _, s in options])
    want, crossings = brute_front(firsts, seconds)
    got = [(p.first, p.second) for p in front]
    assert len(got) == len(want), (got, want)
    assert np.allclose(got, want, rtol=1e-9, atol=1e-9), (got, want)
    assert front[0].lambda_from == 0.0 and front[-1].lambda_to == math.inf
    for p, q in zip(front, front[1:]):
        assert p.lambda_to == q.lambda_from and p.lambda_from < p.lambda_to
        assert p.first < q.first and p.second > q.second  # fastest first, energy falling
        lam = p.lambda_to
        # An exact breakpoint: one of the brute-force crossings, where both cost the same and nothing less.
        assert min(abs(lam - c) for c in crossings) <= 1e-9 * max(1.0, lam)
        assert p.first + lam * p.second == pytest.approx(q.first + lam * q.second, rel=1e-9, abs=1e-9)
        assert p.first + lam * p.second == pytest.approx((firsts + lam * seconds).min(), rel=1e-9, abs=1e-9)
    for p in front:
        assert is_closed(g, p.cut.device)
        f, s = options[p.option]
        assert evaluate(g, f, p.cut.device) == p.first and evaluate(g, s, p.cut.device) == p.second
    for lam in [*np.linspace(0, 5, 51), 10.0, 100.0, 1e4, *(0.5 * (a + b) for a, b in zip(crossings, crossings[1:]))]:
        p = next(p for p in front if p.lambda_from <= lam <= p.lambda_to)
        best = (firsts + lam * seconds).min()
        assert p.first + lam * p.second <= best + 1e-9 * max(1.0, best), lam


@pytest.mark.parametrize("ints", [True, False])
def test_front_matches_brute_force_over_closed_sets(ints):
    rng = np.random.default_rng(150 + ints)
    sizes = []
    for _ in range(60):
        g = random_dag(rng, int(rng.integers(1, 10)))
        masks = all_closed_sets(g)
        options = _random_options(rng, g, ints)
        front = pareto_front(g, options)
        check_front(g, options, front, masks)
        # Starting from any closed sets changes nothing (the planner starts from the
        # neighbouring bucket's front); nor does vouching for the ends with the true ones.
        hints = [(masks[i], int(rng.integers(len(options)))) for i in rng.integers(0, len(masks), 3)]
        check_front(g, options, pareto_front(g, options, hints), masks)
        ends = [(front[0].cut.device, front[0].option), (front[-1].cut.device, front[-1].option)]
        warm = pareto_front(g, options, ends + hints[:1], hints_hold_ends=True)
        check_front(g, options, warm, masks)
        assert warm.n_solves <= front.n_solves
        sizes.append(len(front))
    assert max(sizes) >= 4 and np.mean(sizes) > 1.5, "the random cases should give real fronts"


def test_a_front_whose_ends_agree_costs_no_solve():
    g = random_dag(np.random.default_rng(3), 6)
    w = Weights(np.ones(6), np.full(6, 5.0), np.ones(g.n_tensors), np.zeros(g.n_tensors), 1.0)
    full = np.ones(6, bool)  # all-device is best for both objectives
    front = pareto_front(g, [(w, w)], [(full, 0)], hints_hold_ends=True)
    assert [p.cut.device.all() for p in front] == [True] and front.n_solves == 0


def test_lines_front_and_bad_input():
    # Lines 0: (1, 9), 1: (2, 5), 2: (3, 4) lies above the segment 1-3, 3: (6, 1), 4: a repeat of 1.
    pieces = lines_front([1, 2, 3, 6, 2], [9, 5, 4, 1, 5])
    assert [i for *_, i in pieces] == [0, 1, 3]
    assert [lo for lo, _, _ in pieces] == [0.0, 0.25, 1.0] and pieces[-1][1] == math.inf
    assert lines_front([1, 2], [1, 1]) == [(0.0, math.inf, 0)]  # dominated: never best
    assert [i for *_, i in lines_front([1, 2, 3], [3, 2, 1])] == [0, 2]  # collinear: the middle one only ties
    with pytest.raises(SolverInputError, match="at least one"):
        lines_front([], [])
    with pytest.raises(SolverInputError, match="finite"):
        lines_front([1.0], [math.nan])
    g = random_dag(np.random.default_rng(0), 3)
    with pytest.raises(SolverInputError, match="at least one"):
        pareto_front(g, [])


# --------------------------------------------------------------------------- the planner's fronts


@pytest.fixture(scope="module")
def synthetic(random_light):
    """SqueezeNet with uneven synthetic costs (server ~10x faster): many cuts on every front."""
    model = load_model(random_light("squeezenet"))
    profiled = annotate(model, load_profile(FIXED_PHONE_PROFILE), load_profile(default_profile_path("server")))
    rng = np.random.default_rng(15)
    device_ms = rng.uniform(0.5, 5.0, len(model.nodes))
    ann = dataclasses.replace(profiled, device_ms=device_ms, cloud_ms=device_ms * rng.uniform(0.05, 0.2, len(model.nodes)))
    return model, ann


def _condition_weights(model, ann, grid, codecs, kd, load, x):
    """objective -> encoding -> the weights at x = 1/uplink of that condition."""
    graph, names = cut_graph(model)
    wire = tensor_wire_bytes(model, names, None)
    out = {}
    for obj in ("latency", "energy"):
        base, slope = objective_weights(obj, ann, graph, wire, load, grid, kd)
        per = {"fp32": (base, slope)} | {e: encoded_weights(obj, ann, base, slope, wire, c, load, kd) for e, c in codecs.items()}
        out[obj] = {e: w[0].combine(w[1], x) for e, w in per.items()}
    return graph, out


def _front_values(graph, at, by_id, ids):
    return [(evaluate(graph, at["latency"][by_id[c].encoding], by_id[c].device),
             evaluate(graph, at["energy"][by_id[c].encoding], by_id[c].device)) for c in ids]


def test_plan_fronts_are_the_exact_fronts_at_each_bucket(synthetic):
    model, ann = synthetic
    grid = GridSpec.parse("0.05:2000:12", "1,3", "1,2", rtt_ms=2.0, radio="lte")
    solved = plan(model, ann, grid, encodings=("fp32", "fp16"))
    by_id = {c.id: c for c in solved.cuts}
    centres = bucket_centres(grid.bandwidth_mbps)
    longest = 0
    for di, kd in enumerate(grid.device_load):
        for li, load in enumerate(grid.load):
            for b, centre in enumerate(centres):
                graph, at = _condition_weights(model, ann, grid, solved.candidates.codecs, kd, load, 1.0 / centre)
                encodings = list(at["latency"])
                scratch = pareto_front(graph, [(at["latency"][e], at["energy"][e]) for e in encodings])
                ids = solved.pareto_fronts[solved.pareto_index[di][li][b]]
                got = _front_values(graph, at, by_id, ids)
                assert np.allclose(got, [(p.first, p.second) for p in scratch], rtol=1e-7), (kd, load, centre, ids)
                # Its ends are the table cells of the same condition.
                ends = _front_values(graph, at, by_id, [solved.device_tables[o][di][li][b] for o in ("latency", "energy")])
                assert got[0][0] == pytest.approx(ends[0][0], rel=1e-9) and got[-1][1] == pytest.approx(ends[1][1], rel=1e-9)
                longest = max(longest, len(ids))
    assert longest >= 3, "the synthetic costs should give fronts of several cuts"
    assert len(solved.pareto_fronts) == len(set(map(tuple, solved.pareto_fronts)))  # each stored once
    # Warm starts and the tables' ends: fewer min-cuts than two per condition and encoding.
    assert solved.stats["pareto_min_cuts"] < 2 * 2 * len(grid.device_load) * len(grid.load) * len(centres)


def test_fronts_read_again_without_dropped_pairs(synthetic):
    model, ann = synthetic
    grid = GridSpec.parse("0.05:2000:12", "1,3", "1")
    solved = plan(model, ann, grid, encodings=("fp32", "fp16"))
    lossy = sorted({c for f in solved.pareto_fronts for c in f if "@" in c})
    assert lossy, "some front should use an fp16 cut"
    again = replan(model, ann, solved, lossy)
    by_id = {c.id: c for c in again.cuts}
    centres = bucket_centres(grid.bandwidth_mbps)
    for li, load in enumerate(grid.load):
        for b, centre in enumerate(centres):
            ids = again.pareto_fronts[again.pareto_index[0][li][b]]
            assert all(c in by_id and c not in lossy for c in ids)
            graph, at = _condition_weights(model, ann, grid, solved.candidates.codecs, 1.0, load, 1.0 / centre)
            got = _front_values(graph, at, by_id, ids)
            assert all(p[0] < q[0] and p[1] > q[1] for p, q in zip(got, got[1:]))  # still a front
            # No worse at its ends than the re-read table cells (which are among its candidates).
            ends = _front_values(graph, at, by_id, [again.device_tables[o][0][li][b] for o in ("latency", "energy")])
            assert got[0][0] <= ends[0][0] * (1 + 1e-12) and got[-1][1] <= ends[1][1] * (1 + 1e-12)


# --------------------------------------------------------------------------- plan.json and Cut.energy_mj


@pytest.fixture(scope="module")
def lenet_build(tmp_path_factory):
    """LeNet emitted with fp32/fp16/int8 for the phone-class device, unverified (test_encodings verifies)."""
    from nscompile import zoo
    from nscompile.backend import emit

    root = tmp_path_factory.mktemp("pareto")
    onnx.save(zoo.build_model("lenet", size="full"), root / "lenet.onnx")
    model = load_model(root / "lenet.onnx")
    ann = annotate(model, load_profile(FIXED_PHONE_PROFILE), load_profile(default_profile_path("server")))
    grid = GridSpec.parse("0.1:1000:16", "1,4", "1,2", rtt_ms=0.05, downlink_mbps=30.0, radio="lte")
    solved = plan(model, ann, grid, encodings=("fp32", "fp16", "int8"), include_all_cloud=True)
    doc = emit(model, solved, root / "b", {"device": {"name": "phone"}, "cloud": {"name": "server"}})
    from nscompile.report import write_report

    write_report(root / "b", model, ann, doc, html_page=True)
    return model, ann, grid, solved, doc, root / "b"


def test_plan_json_round_trip(lenet_build):
    _, ann, grid, solved, doc, out = lenet_build
    stored = json.loads((out / "plan.json").read_text())
    assert stored["pareto"] == {"fronts": solved.pareto_fronts, "index": solved.pareto_index}
    assert stored["energy_model"]["radio"]["name"] == "lte"
    assert stored["energy_model"]["idle_power_w"] == ann.device.idle_power_w
    emitted = {c["id"] for c in stored["cuts"]}
    assert all(c in emitted for f in solved.pareto_fronts for c in f)  # every front cut is emitted (and verified)
    runtime = load_plan(out / "device")
    assert runtime.has_pareto
    centres = bucket_centres(grid.bandwidth_mbps)
    for di, kd in enumerate(grid.device_load):
        for li, load in enumerate(grid.load):
            for b, centre in enumerate(centres):
                want = tuple(solved.pareto_fronts[solved.pareto_index[di][li][b]])
                assert runtime.front_cuts(centre, load, kd) == want
                front = runtime.pareto_front(centre, load, device_load=kd)
                lat = [p.latency_ms for p in front]
                en = [p.energy_mj for p in front]
                assert lat == sorted(lat) and en == sorted(en, reverse=True) and len(set(lat)) == len(lat)
                # The exact latency and energy optima at this bandwidth are its ends (ties aside).
                fastest = runtime.cuts[runtime.lookup(centre, load, "latency", kd)]
                assert front[0].latency_ms <= fastest.latency_ms(centre, load, grid.rtt_ms, 30.0, kd) + 1e-9


def test_plans_without_fronts_still_load_and_say_what_is_missing(lenet_build, tmp_path):
    *_, out = lenet_build
    shutil.copytree(out / "device", tmp_path / "device")
    raw = json.loads((tmp_path / "device" / "plan.json").read_text())
    del raw["pareto"], raw["energy_model"]
    (tmp_path / "device" / "plan.json").write_text(json.dumps(raw))
    old = load_plan(tmp_path / "device")
    assert not old.has_pareto and old.front_cuts(1.0) == ()
    assert old.lookup(5.0, 1.0) == load_plan(out / "device").lookup(5.0, 1.0)
    with pytest.raises(NscompileError, match="no energy_model"):
        old.pareto_front(5.0)
    from nscompile.runtime.policy import CutPolicy

    CutPolicy(old, "energy")  # the tables still serve
    with pytest.raises(NscompileError, match="needs the plan's latency-energy fronts"):
        CutPolicy(old, slo(100.0))
    raw["pareto"] = {"fronts": [["nope"]], "index": [[[0] * len(raw["grid"]["bandwidth_mbps"])] * 2] * 2}
    (tmp_path / "device" / "plan.json").write_text(json.dumps(raw))
    with pytest.raises(NscompileError, match="names cut 'nope'"):
        load_plan(tmp_path / "device")
    raw["pareto"] = {"fronts": [["input"]], "index": [[[0]]]}
    (tmp_path / "device" / "plan.json").write_text(json.dumps(raw))
    with pytest.raises(NscompileError, match=r"pareto.index is not \[device level\]\[load\]\[bucket\]"):
        load_plan(tmp_path / "device")


def test_cut_energy_and_latency_are_the_planners_objectives(lenet_build):
    """Cut.energy_mj and Cut.latency_ms equal the solver's objectives plus the fixed per-run costs it leaves out."""
    model, ann, grid, solved, _, out = lenet_build
    runtime = load_plan(out / "device")
    graph, names = cut_graph(model)
    wire = tensor_wire_bytes(model, names, grid.input_bytes)
    codecs = solved.candidates.codecs
    checked = set()
    for choice in solved.cuts:
        cut = runtime.cuts[choice.id]
        up = upload_set(graph, choice.device)
        codec = codecs.get(choice.encoding)
        encode_ms = float(codec.device_ms[up].sum()) if codec else 0.0
        decode_ms = float(codec.cloud_ms[up].sum()) if codec else 0.0
        # What the solver leaves out: each side's session run cost beyond its nodes (and codecs).
        device_fixed_ms = choice.device_ms - float(ann.device_ms[choice.device].sum()) - encode_ms
        cloud_fixed_ms = choice.cloud_ms - float(ann.cloud_ms[~choice.device].sum()) - decode_ms
        for kd in grid.device_load:
            for load in grid.load:
                for bw in (0.3, 5.85, 140.0):
                    for obj in ("latency", "energy"):
                        base, slope = objective_weights(obj, ann, graph, wire, load, grid, kd)
                        if codec:
                            base, slope = encoded_weights(obj, ann, base, slope, wire, codec, load, kd)
                        solver = evaluate(graph, base, choice.device) + evaluate(graph, slope, choice.device) / bw
                        if obj == "latency":
                            fixed = kd * device_fixed_ms + (0.0 if choice.is_all_device else load * cloud_fixed_ms)
                            got = cut.latency_ms(bw, load, grid.rtt_ms, grid.downlink_mbps, kd)
                        else:
                            fixed = (kd * device_fixed_ms * ann.device.compute_power_w
                                     + (0.0 if choice.is_all_device else load * cloud_fixed_ms * ann.device.idle_power_w))
                            got = cut.energy_mj(bw, load, grid.rtt_ms, grid.downlink_mbps, kd)
                        # plan.json rounds the predicted figures to 4 decimals.
                        assert got == pytest.approx(solver + fixed, rel=1e-5, abs=2e-3), (choice.id, obj, kd, load, bw)
                        checked.add(choice.encoding)
    assert len(checked) >= 2, f"LeNet on the phone-class device should use an encoded cut: {checked}"
    # An unshaped downlink: receiving takes no time, the radio's per-bit energy remains.
    split = next(c for c in runtime.cuts.values() if not c.all_device)
    assert math.isfinite(split.energy_mj(5.0, downlink_mbps=math.inf))


# --------------------------------------------------------------------------- policies


def _points(*pairs):
    return [ParetoPoint(f"c{i}", lat, en) for i, (lat, en) in enumerate(pairs)]


def test_policies_pick_by_their_definitions():
    front = _points((10, 90), (20, 50), (40, 30), (100, 5))
    assert LATENCY.pick(front) == (front[0], True) and ENERGY.pick(front) == (front[-1], True)
    assert slo(40).pick(front) == (front[2], True)  # least energy within 40 ms (the boundary counts)
    assert slo(39.9).pick(front) == (front[1], True)
    assert slo(1000).pick(front) == (front[3], True)
    assert slo(5).pick(front) == (front[0], False)  # nobody meets it: the fastest
    assert budget(50).pick(front) == (front[1], True)  # fastest within 50 mJ
    assert budget(1).pick(front) == (front[3], False)  # nobody within it: the least energy
    assert weighted(0).pick(front)[0] == front[0]
    assert weighted(1.0).pick(front)[0] == front[1]  # sums 100, 70, 70, 105: the tie goes to the faster
    assert weighted(1.1).pick(front)[0] == front[2]
    assert weighted(1e6).pick(front)[0] == front[3]
    for lam in np.linspace(0, 20, 81):  # weighted(lam) is the argmin of its sum, whatever lam
        best = min(p.latency_ms + lam * p.energy_mj for p in front)
        got = weighted(float(lam)).pick(front)[0]
        assert got.latency_ms + lam * got.energy_mj == pytest.approx(best)


def test_policy_text_forms_and_bad_input():
    for policy in (LATENCY, ENERGY, slo(120), slo(0.5), budget(42.5), weighted(0.25), weighted(0)):
        assert as_policy(str(policy)) == policy
    assert as_policy("slo(120)") == slo(120) and as_policy(" weighted( lam = 2 ) ") == weighted(2)
    assert str(slo(latency_ms=120)) == "slo(latency_ms=120)"
    with pytest.raises(NscompileError, match="latency_ms must be a positive number of milliseconds"):
        slo(-5)
    with pytest.raises(NscompileError, match="latency_ms must be a positive number"):
        as_policy("slo(latency_ms=0)")
    with pytest.raises(NscompileError, match="must be a finite number"):
        slo(math.nan)
    with pytest.raises(NscompileError, match="energy_mj must be a positive number of millijoules"):
        budget(0)
    with pytest.raises(NscompileError, match="lam must be >= 0"):
        weighted(-1)
    with pytest.raises(NscompileError, match="slo\\(\\) takes latency_ms=, not energy_mj="):
        as_policy("slo(energy_mj=3)")
    with pytest.raises(NscompileError, match="unknown policy 'fastest'; use latency, energy, slo"):
        as_policy("fastest")
    with pytest.raises(NscompileError, match="unknown policy 3"):
        as_policy(3)


# A hand-made build with a designed front: cut -> device compute mJ. With a costly radio and
# relu1 predicted to send half of what all-cloud sends, at 8 Mbps all-cloud is the fastest,
# relu1 in the middle and all-device the least energy (relu2 sends twice as much: dominated).
COMPUTE_MJ = {"input": 0.0, "relu1": 30.0, "relu2": 60.0, "prob": 100.0}


@pytest.fixture(scope="module")
def front_build(tmp_path_factory):
    """The runtime tests' hand-made build, with an energy model and one front for every condition."""
    build = make_handmade_build(tmp_path_factory.mktemp("front"))
    for path in (build / "plan.json", build / "device" / "plan.json"):
        raw = json.loads(path.read_text())
        for c in raw["cuts"]:
            c["predicted"]["device_compute_mj"] = COMPUTE_MJ[c["id"]]
            if c["id"] == "relu1":
                c["predicted"].update(device_ms=20.0, upload_bytes=16000)
        raw["energy_model"] = {"compute_power_w": 5.0, "idle_power_w": 0.5,
                               "radio": {"name": "made-up", "up_alpha_w_per_mbps": 2.0, "up_beta_w": 3.0,
                                         "down_alpha_w_per_mbps": 0.14, "down_beta_w": 0.13}}
        n = len(raw["grid"]["bandwidth_mbps"])
        raw["pareto"] = {"fronts": [["prob", "relu2", "relu1", "input"]], "index": [[[0] * n for _ in raw["grid"]["load"]]]}
        path.write_text(json.dumps(raw))
    return build


@pytest.fixture(scope="module")
def front_server(front_build):
    from nscompile.serve import create_app

    s = ServerThread(create_app(front_build / "cloud", concurrency=1, slowdown_floor_ms=50.0))
    yield s
    s.stop()


def _expected(plan, bw, load, policy):
    """The policy's cut by its definition, over the plan's front points at these conditions."""
    front = plan.pareto_front(bw, load)
    if isinstance(policy, type(slo(1))):
        within = [p for p in front if p.latency_ms <= policy.latency_ms]
        return min(within, key=lambda p: p.energy_mj) if within else min(front, key=lambda p: p.latency_ms)
    if isinstance(policy, type(budget(1))):
        within = [p for p in front if p.energy_mj <= policy.energy_mj]
        return min(within, key=lambda p: p.latency_ms) if within else min(front, key=lambda p: p.energy_mj)
    return min(front, key=lambda p: (p.latency_ms + policy.lam * p.energy_mj, p.latency_ms))


def test_runner_follows_its_policy_and_switches_between_calls(front_build, front_server):
    from nscompile.runtime import SplitRunner

    inputs = sample_inputs()
    with SplitRunner(front_build / "device", front_server.url, policy=slo(latency_ms=100), bandwidth_mbps=8.0,
                     load=1.0) as runner:
        plan = runner.plan
        front = plan.pareto_front(8.0, 1.0)
        assert len(front) >= 3, f"the designed front should keep several cuts: {front}"
        lat = [p.latency_ms for p in front]
        # An SLO between the fastest and the slowest point, one below everything, and the others.
        between = 0.5 * (lat[0] + lat[1]) if len(lat) > 1 else lat[0]
        policies = [slo(between), slo(lat[0] * 0.5), "energy", budget(front[1].energy_mj), weighted(1.0), "latency",
                    slo(lat[-1] + 1), weighted(0.0)]
        chosen = set()
        for policy in policies:
            runner.policy = policy
            _, rec = runner.run(inputs, with_record=True)
            chosen.add(rec.cut)
            assert rec.policy == str(as_policy(policy))
            if policy in ("latency", "energy"):
                assert rec.objective == policy and rec.reason == "table" and rec.cut == plan.lookup(8.0, 1.0, policy)
            else:
                want = _expected(plan, 8.0, 1.0, as_policy(policy))
                assert rec.cut == want.cut, (policy, rec.cut, want)
                assert rec.objective == "pareto"
            cut = plan.cuts[rec.cut]
            assert rec.predicted_latency_ms == pytest.approx(cut.latency_ms(8.0, 1.0, rec.rtt_ms or 0.0))
            assert rec.predicted_energy_mj == pytest.approx(cut.energy_mj(8.0, 1.0, rec.rtt_ms or 0.0))
        assert len(chosen) >= 3, chosen  # the policies really pick different points
        runner.policy = slo(lat[0] * 0.5)
        rec = runner.run(inputs, with_record=True)[1]
        assert rec.reason == "unmet" and rec.cut == front[0].cut  # an SLO no cut meets: the fastest
        with pytest.raises(NscompileError, match="unknown policy"):
            runner.policy = "cheapest"
        assert runner.policy == slo(lat[0] * 0.5)  # a refused policy leaves the old one in force


def test_decision_stays_cached_while_the_estimates_stand_still(front_build, front_server, monkeypatch):
    from nscompile.runtime import SplitRunner

    inputs = sample_inputs()
    with SplitRunner(front_build / "device", front_server.url, policy="weighted(0.5)", bandwidth_mbps=8.0,
                     load=1.0) as runner:
        calls = []
        real = runner.plan.pareto_front
        monkeypatch.setattr(runner.plan, "pareto_front", lambda *a, **k: calls.append(a) or real(*a, **k))
        runner.net.rtt.add(1.0)  # an RTT estimate that stands still too
        for _ in range(3):
            runner.run(inputs)
        assert len(calls) == 1
        runner.policy = weighted(0.5)  # the same policy: still cached
        runner.run(inputs)
        assert len(calls) == 1
        runner.policy = slo(50)
        runner.run(inputs)
        runner.fixed_bandwidth = 20.0
        runner.run(inputs)
        assert len(calls) == 3


def test_objective_and_policy_are_one_setting(front_build):
    from nscompile.runtime import SplitRunner

    with pytest.raises(NscompileError, match="pass policy= or objective=, not both"):
        SplitRunner(front_build / "device", "http://127.0.0.1:9", "energy", policy=slo(10))
    runner = SplitRunner(front_build / "device", "http://127.0.0.1:9", "energy")
    assert runner.policy == ENERGY and runner.objective == "energy"
    runner.objective = "latency"
    assert runner.policy == LATENCY
    runner.policy = "slo(latency_ms=80)"
    assert runner.objective == "pareto" and runner.policy == slo(80)
    # All-device needs no estimates to be predicted (here forced: no server is asked).
    runner.force_cut = "prob"
    rec = runner.run(sample_inputs(), with_record=True)[1]
    assert (rec.reason, rec.policy, rec.predicted_latency_ms, rec.predicted_energy_mj) == ("forced", "slo(latency_ms=80)",
                                                                                          500.0, COMPUTE_MJ["prob"])
    runner.close()


# --------------------------------------------------------------------------- CLI and report


def test_inspect_pareto_json_and_table(lenet_build):
    *_, out = lenet_build
    result = run_cli("inspect", str(out), "--pareto", "--bandwidth", "5.85", "--load", "1", "--json")
    assert result.returncode == 0, result.stderr
    points = json.loads(result.stdout)
    assert points and all(set(p) == {"cut", "latency_ms", "energy_mj"} for p in points)
    lat = [p["latency_ms"] for p in points]
    assert lat == sorted(lat) and [p["energy_mj"] for p in points] == sorted((p["energy_mj"] for p in points), reverse=True)
    want = load_plan(out / "device").pareto_front(5.85, 1.0)
    assert [p["cut"] for p in points] == [p.cut for p in want]
    table = run_cli("inspect", str(out), "--pareto", "--bandwidth", "5.85", "--load", "1")
    assert table.returncode == 0 and points[0]["cut"] in table.stdout and "energy" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--pareto"], "--pareto needs --bandwidth"),
    (["--pareto", "--bandwidth", "-1"], "--bandwidth must be a positive number of Mbit/s"),
    (["--pareto", "--bandwidth", "5", "--load", "0.5"], "--load must be a server slowdown factor >= 1"),
])
def test_inspect_pareto_bad_input(lenet_build, args, message):
    *_, out = lenet_build
    result = run_cli("inspect", str(out), *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_report_plots_the_fronts_per_network(lenet_build):
    *_, out = lenet_build
    page = (out / "report.html").read_text()
    assert "Latency against device energy" in page
    assert page.count("<svg") >= 4
    for preset in ("CAT1", "3G", "LTE", "WIFI"):
        assert preset in page
    front = load_plan(out / "device").pareto_front(5.85, 1.0)
    assert all(p.cut in page for p in front)
