"""The JavaScript runtime (nscompile/runtime/js/) against the Python one.

- The look-up: for every zoo build and a grid of conditions (bandwidth, server load, RTT,
  device load), the JavaScript plan and Python's ``Plan.lookup`` (and the runner's RTT
  rule) name the same cut; plans with and without the device-load axis. The policies
  (latency, energy, SLOs, budgets, weighted sums, an SLO no cut meets): the same cut, reason
  and predicted latency and energy as Python's CutPolicy on every zoo build with fronts.
- The wire: requests the JavaScript side encodes decode in Python, answers Python encodes
  decode in JavaScript, for every datatype.
- The runner, in Node (onnxruntime-web's WASM build) and in headless Chromium: every cut
  of a hand-made DAG and of zoo builds (shared weights.bin) equals the whole model in
  Python within the build's verification tolerance; it falls back to all-device on a
  refused connection, a timeout and a 5xx; a bad device directory, an unknown plan schema
  and a server answering wrong shapes are one clear Error.
- The device load: the runner's estimate tracks an injected slow device, its decisions move
  to the server as Kd rises and back as it falls; a pinned Kd is used as given.
- CORS (Chromium only): a page on an allowed origin splits, one on another origin is
  refused by the browser and finishes on the device.

Tests need Node and ``npm ci`` in nscompile/runtime/js; the Chromium ones (marker
``browser``) also need Chromium. They skip, naming what is missing, otherwise.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import FIXED_PHONE_PROFILE
from js_support import NodeHarness, PageHarness, absolute, feed_spec, need, ok, rt, site_for, to_numpy
from nscompile.browser import JS_DIR
from nscompile.verify import ATOL, RTOL


def node(script: str, stdin: str = "", timeout: float = 120) -> str:
    """Run an ES module script with Node in the runtime's folder; its stdout."""
    r = subprocess.run(["node", "--input-type=module", "-e", script], input=stdin, capture_output=True, text=True,
                       cwd=JS_DIR, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


# ---------------------------------------------------------------------------------------
# The look-up, table-driven: every zoo build, a grid of conditions
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_builds(tmp_path_factory):
    """Every zoo model (small), built twice: phone-class device on the testbed's grid, and the
    default device with an RTT and a downlink in the plan; plus one plan with buckets only."""
    from nscompile import zoo
    from nscompile.compiler import build
    from nscompile.planner import GridSpec

    root = tmp_path_factory.mktemp("zoo")
    builds = []
    grids = {
        "quota25": (FIXED_PHONE_PROFILE, GridSpec.parse("0.1:100000:40", "1,2,4,8")),
        "rtt20": (None, GridSpec.parse("0.1:1000:32", "1,2,4,8", rtt_ms=20.0, downlink_mbps=50.0)),
    }
    for info in zoo.list_models():
        (path,) = zoo.write_models([info.name], root / "models", size="small")
        for tag, (device, grid) in grids.items():
            out = root / f"{info.name}-{tag}"
            build(path, out, device_profile=device, grid=grid, verify=False, report=False, include_all_cloud=True)
            builds.append(out / "device")
    # The same look-up from buckets alone: a plan written before breakpoints, the
    # device-load axis and the fronts existed, and one with buckets for every device level.
    for tag, drop, keep_axis in (("buckets", ("breakpoints", "device_breakpoints", "device_tables", "pareto"), False),
                                 ("device-buckets", ("breakpoints", "device_breakpoints"), True)):
        variant = root / f"alexnet-{tag}"
        shutil.copytree(root / "alexnet-quota25" / "device", variant)
        doc = json.loads((variant / "plan.json").read_text())
        for key in drop:
            del doc[key]
        if not keep_axis:
            doc["grid"].pop("device_load")
        (variant / "plan.json").write_text(json.dumps(doc))
        builds.append(variant)
    return builds


def _geometric_middles(levels: list[float]) -> list[float]:
    """Between two levels, off their geometric middle by 1e-6 either way (at the middle
    itself the nearest level is a tie that the last bit of log() decides)."""
    return [math.sqrt(a * b) * f for a, b in zip(levels, levels[1:]) for f in (1 - 1e-6, 1 + 1e-6)]


def conditions(plan_doc: dict, device_dir: Path) -> list[dict]:
    """Bandwidths at, just below and just above every breakpoint and bucket start, and a log
    sweep past both ends; loads on, between and beyond the grid's levels; RTTs under, at and
    over the plan's; both objectives; at device load 1. Then the device-load axis: levels,
    between and beyond them, over every level's breakpoints and a coarser sweep, fewer loads
    (the full product would be ten times larger), and RTTs just either side of the one at
    which the RTT rule flips (Python's Cut.latency_ms says where that is)."""
    from nscompile.runtime.plan import Plan

    grid = plan_doc["grid"]

    def starts(source: str) -> set[float]:
        rows = [row for level in (plan_doc.get(source) or {}).values() for row in level]
        if source == "device_breakpoints":
            rows = [row for level in rows for row in level]
        return {float(p["from_mbps"]) for row in rows for p in row}

    def near(values: set[float]) -> set[float]:
        return {b * f for b in values if b > 0 for f in (1 - 1e-12, 1.0, 1 + 1e-12)}

    buckets = {float(b) for b in grid["bandwidth_mbps"]}
    bandwidths = near(buckets | starts("breakpoints")) | {10 ** (e / 8) for e in range(-24, 49)}  # 0.001 .. 1e6 Mbps
    loads = [float(x) for x in grid["load"]]
    load_values = sorted(set(loads + _geometric_middles(loads) + [0.5, 1.3, 3.0, 100.0]))
    plan_rtt = float(grid.get("rtt_ms") or 0.0)
    rtts = [None, plan_rtt, plan_rtt + 5.0, plan_rtt + 80.0, 400.0]
    objectives = sorted((plan_doc.get("tables") or {"latency": None}).keys())
    conds = [{"bandwidth_mbps": bw, "load": load, "objective": obj, "rtt_ms": rtt, "device_load": 1.0}
             for obj in objectives for load in load_values for bw in sorted(bandwidths) for rtt in rtts]

    plan = Plan(plan_doc, device_dir)
    fallback = plan.cuts[plan.fallback]
    down = float(grid["downlink_mbps"]) if grid.get("downlink_mbps") else None

    def tie_rtts(bw: float, load: float, kd: float, obj: str) -> list[float]:
        cut = plan.cuts[plan.lookup(bw, load, obj, kd)]
        if cut.all_device or "cloud_ms" not in cut.predicted:
            return [plan_rtt + 5.0]
        level = plan.device_loads[plan.device_load_row(kd)]
        tie = fallback.latency_ms(bw, load, 0.0, down, level) - cut.latency_ms(bw, load, 0.0, down, level)
        return [tie * f for f in (1 - 1e-9, 1 + 1e-9)] if tie > plan_rtt else [plan_rtt + 5.0]

    device_loads = [float(x) for x in grid.get("device_load", [1.0])]
    kd_values = sorted(set(device_loads + _geometric_middles(device_loads) + [0.3, 3.0, 50.0]) - {1.0})
    kd_bandwidths = sorted(near(starts("device_breakpoints") or buckets) | {10 ** (e / 2) for e in range(-6, 13)})
    kd_loads = sorted(set(loads[:1] + loads[-1:] + [3.0]))
    conds += [{"bandwidth_mbps": bw, "load": load, "objective": obj, "rtt_ms": rtt, "device_load": kd}
              for obj in objectives for kd in kd_values for load in kd_loads for bw in kd_bandwidths
              for rtt in (None, 400.0, *tie_rtts(bw, load, kd, obj))]
    return conds


def python_decisions(device_dir: Path, conds: list[dict]) -> list[dict]:
    """Python's answers: Plan.lookup, and the runner's RTT rule for the cut it names (at the
    device-load level it was looked up at, as CutPolicy.choose does)."""
    from nscompile.runtime import SplitRunner

    runner = SplitRunner(device_dir, "http://127.0.0.1:9")  # never called: only the decision code runs
    plan = runner.plan
    answers = []
    for c in conds:
        kd = c["device_load"]
        cut = plan.lookup(c["bandwidth_mbps"], c["load"], c["objective"], kd)
        runner.objective = c["objective"]
        runner.net.rtt.value = c["rtt_ms"]
        level = plan.device_loads[plan.device_load_row(kd)]
        rtt_device = runner.cut_policy._rtt_says_device(plan.cuts[cut], c["bandwidth_mbps"], c["load"], level)
        answers.append({"cut": cut, "rtt_device": rtt_device})
    runner.close()
    return answers


def js_decisions(device_dir: Path, conds: list[dict]) -> list[dict]:
    """JavaScript's answers for ``conds``: tools/lookup.js on the build's plan."""
    r = subprocess.run(["node", str(JS_DIR / "tools" / "lookup.js"), str(device_dir / "plan.json")],
                       input=json.dumps(conds), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_lookup_matches_python_on_every_zoo_build(zoo_builds):
    need(in_browser=False)
    compared = splits = moved = 0
    for device_dir in zoo_builds:
        doc = json.loads((device_dir / "plan.json").read_text())
        conds = conditions(doc, device_dir)
        js = js_decisions(device_dir, conds)
        py = python_decisions(device_dir, conds)
        assert len(js) == len(py) == len(conds)
        wrong = [(c, j, p) for c, j, p in zip(conds, js, py) if j != p]
        assert not wrong, f"{device_dir}: {len(wrong)} of {len(conds)} differ, first: {wrong[0]}"
        compared += len(conds)
        splits += sum(1 for p in py if p["cut"] not in (doc["fallback"],) and not p["rtt_device"])
        if "device_load" in doc["grid"]:
            # The device axis matters: the same bandwidth and load give other cuts at other Kd.
            by_kd = {}
            for c, p in zip(conds, py):
                by_kd.setdefault((c["objective"], c["bandwidth_mbps"], c["load"], c["rtt_ms"]), set()).add(p["cut"])
            moved += sum(1 for cuts in by_kd.values() if len(cuts) > 1)
    # The grid is not trivial: many conditions, decisions other than all-device among them,
    # and decisions that the device load changes.
    assert compared > 100_000 and splits > 1000 and moved > 100, (compared, splits, moved)


def policy_conditions(plan_doc: dict, device_dir: Path) -> tuple[list[dict], str]:
    """Conditions crossed with policies, for a plan with fronts: bandwidths on and beside the
    bucket starts and a log sweep, loads and device loads on and between the levels, RTTs
    at and over the plan's. The policies: latency and energy (the tables the plan has), SLOs
    and budgets between the latencies and energies the fronts themselves span (so that they
    pick inner points, not always an end), weighted sums whose lambda trades the two spans
    at several rates, and one SLO below every fastest point (never met). Returns the
    conditions and that SLO's text."""
    from nscompile.runtime.plan import Plan

    plan = Plan(plan_doc, device_dir)
    grid = plan_doc["grid"]
    buckets = [float(b) for b in grid["bandwidth_mbps"]]
    bandwidths = sorted({b * f for b in buckets[::4] for f in (1 - 1e-12, 1.0)} | {10 ** (e / 4) for e in range(-8, 21)})
    loads = sorted({float(x) for x in grid["load"]} | {1.5, 3.0})
    device_loads = [float(x) for x in grid.get("device_load", [1.0])]
    kds = sorted(set(device_loads + _geometric_middles(device_loads) + [3.0]))
    plan_rtt = float(grid.get("rtt_ms") or 0.0)
    base = [{"bandwidth_mbps": bw, "load": load, "rtt_ms": rtt, "device_load": kd}
            for bw in bandwidths for load in loads for kd in kds for rtt in (None, plan_rtt + 30.0)]
    latencies, energies, fastest = set(), set(), math.inf
    for c in base:
        level = plan.device_loads[plan.device_load_row(c["device_load"])]
        front = plan.pareto_front(c["bandwidth_mbps"], c["load"], c["rtt_ms"], None, level)
        fastest = min(fastest, front[0].latency_ms)
        if len(front) > 1:
            latencies.update(p.latency_ms for p in front)
            energies.update(p.energy_mj for p in front)
    policies = [o for o in ("latency", "energy") if o in plan.objectives]
    unmeetable = f"slo(latency_ms={fastest * 0.5:g})"
    if latencies:
        lat, en = sorted(latencies), sorted(energies)
        quantiles = (0.1, 0.3, 0.5, 0.7, 0.9)
        policies += [f"slo(latency_ms={lat[int(q * (len(lat) - 1))] * 1.0001:g})" for q in quantiles]
        policies += [f"budget(energy_mj={en[int(q * (len(en) - 1))] * 1.0001:g})" for q in quantiles]
        rate = (lat[-1] - lat[0]) / max(en[-1] - en[0], 1e-12)
        policies += ["weighted(0)", *(f"weighted({rate * f:g})" for f in (0.1, 1.0, 10.0))]
    policies.append(unmeetable)
    return [{**c, "policy": p} for p in dict.fromkeys(policies) for c in base], unmeetable


def python_policy_decisions(device_dir: Path, conds: list[dict]) -> list[dict]:
    """Python's answers for policy conditions: CutPolicy._decide, the runner's choice after the
    estimates, at the device-load level (as CutPolicy.choose calls it)."""
    from nscompile.runtime import SplitRunner
    from nscompile.runtime.policies import as_policy

    runner = SplitRunner(device_dir, "http://127.0.0.1:9")  # never called: only the decision code runs
    plan, cut_policy = runner.plan, runner.cut_policy
    answers = []
    for c in conds:
        policy = as_policy(c["policy"])
        runner.net.rtt.value = c["rtt_ms"]  # the RTT rule of latency reads the estimate
        level = plan.device_loads[plan.device_load_row(c["device_load"])]
        cut, reason, (latency, energy) = cut_policy._decide(policy, c["bandwidth_mbps"], c["load"], c["rtt_ms"], level)
        answers.append({"cut": cut, "reason": reason, "policy": str(policy), "predicted_latency_ms": latency,
                        "predicted_energy_mj": energy})
    runner.close()
    return answers


def _same_decision(js: dict, py: dict) -> bool:
    """The same cut, reason and policy text, and predictions equal within 1e-9 relative."""
    if any(js[k] != py[k] for k in ("cut", "reason", "policy")):
        return False
    for key in ("predicted_latency_ms", "predicted_energy_mj"):
        a, b = js[key], py[key]
        if (a is None) != (b is None) or (a is not None and not math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)):
            return False
    return True


def test_policies_match_python_on_every_zoo_build(zoo_builds):
    """Every zoo build with fronts, a grid of conditions and policies: JavaScript and Python
    choose the same cut for the same reason and predict the same latency and energy."""
    need(in_browser=False)
    compared = inner = unmet_seen = met_seen = 0
    with_fronts = 0
    for device_dir in zoo_builds:
        doc = json.loads((device_dir / "plan.json").read_text())
        if not doc.get("pareto") or not doc.get("energy_model"):
            continue
        with_fronts += 1
        conds, unmeetable = policy_conditions(doc, device_dir)
        js = js_decisions(device_dir, conds)
        py = python_policy_decisions(device_dir, conds)
        assert len(js) == len(py) == len(conds)
        wrong = [(c, j, p) for c, j, p in zip(conds, js, py) if not _same_decision(j, p)]
        assert not wrong, f"{device_dir}: {len(wrong)} of {len(conds)} differ, first: {wrong[0]}"
        compared += len(conds)
        # The policies discriminate: front policies pick cuts other than both tables' picks,
        # SLOs and budgets are met in some conditions and not in others, and the SLO below
        # every fastest point is never met (its fallback: the fastest, as the latency end).
        by_condition = {}
        for c, p in zip(conds, py):
            by_condition.setdefault((c["bandwidth_mbps"], c["load"], c["rtt_ms"], c["device_load"]), {})[c["policy"]] = p
        for answers in by_condition.values():
            ends = {answers[o]["cut"] for o in ("latency", "energy") if o in answers}
            inner += sum(1 for text, p in answers.items() if p["reason"] == "pareto" and p["cut"] not in ends)
            assert answers[unmeetable]["reason"] == "unmet", answers[unmeetable]
        for c, p in zip(conds, py):
            if c["policy"].startswith(("slo", "budget")) and c["policy"] != unmeetable:
                met_seen += p["reason"] == "pareto"
                unmet_seen += p["reason"] == "unmet"
    assert with_fronts >= 4 and compared > 50_000 and inner > 100 and met_seen > 1000 and unmet_seen > 100, (
        with_fronts, compared, inner, met_seen, unmet_seen)


def test_js_policies_parse_and_fall_back(tmp_path, zoo_builds):
    """The text forms read as Python's (and print back the same), bad ones are one clear
    Error; an unmeetable SLO takes the fastest point, an unmeetable budget the least energy;
    a plan without fronts refuses the front policies, naming the field it lacks."""
    need(in_browser=False)
    from nscompile.errors import NscompileError
    from nscompile.runtime.plan import load_plan
    from nscompile.runtime.policies import as_policy

    texts = ["latency", " energy ", "slo(latency_ms=120)", "slo(120.5)", "budget(energy_mj=50)", "budget( 1e-3 )",
             "weighted(0.5)", "weighted(lam=0)", "slo(latency_ms=1_000)", "weighted(1234567)"]
    bad = ["slo(energy_mj=3)", "slo(abc)", "slo(latency_ms=0)", "budget(-1)", "weighted(-0.5)", "slo(inf)", "fast", ""]
    script = """
import { asPolicy } from "./policies.js";
const { texts, bad } = JSON.parse(await new Response(process.stdin).text());
const objects = [{ slo: 120 }, { budget: 50 }, { weighted: 0.25 }, { slo: -1 }, { fast: 1 }];
const tryIt = (v) => { try { return String(asPolicy(v)); } catch (e) { return e.name + ": " + e.message; } };
process.stdout.write(JSON.stringify({ texts: texts.map(tryIt), bad: bad.map(tryIt), objects: objects.map(tryIt) }));
"""
    out = json.loads(node(script, json.dumps({"texts": texts, "bad": bad})))
    assert out["texts"] == [str(as_policy(t)) for t in texts]
    for text, msg in zip(bad, out["bad"]):
        assert msg.startswith("NscompileError: "), (text, msg)
        with pytest.raises(NscompileError):
            as_policy(text)
    assert out["bad"][0].endswith("slo() takes latency_ms=, not energy_mj="), out["bad"][0]
    assert out["objects"][:3] == ["slo(latency_ms=120)", "budget(energy_mj=50)", "weighted(0.25)"]
    assert "positive number of milliseconds" in out["objects"][3] and "unknown policy" in out["objects"][4]

    device_dir = next(d for d in zoo_builds if d.name == "device" and d.parent.name == "alexnet-quota25")
    plan = load_plan(device_dir)
    conds = [(bw, load, kd) for bw in (0.3, 3.0, 30.0, 300.0, 3000.0) for load in (1.0, 8.0) for kd in (1.0, 4.0)]
    script = """
import { readFileSync } from "node:fs";
import { Plan } from "./plan.js";
import { asPolicy, decidePolicy } from "./policies.js";
const { path, conds } = JSON.parse(await new Response(process.stdin).text());
const plan = new Plan(JSON.parse(readFileSync(path, "utf8")), path);
process.stdout.write(JSON.stringify(conds.map(([bw, load, kd]) => {
  const front = plan.paretoFront(bw, load, null, null, kd);
  const slo = decidePolicy(plan, asPolicy("slo(latency_ms=1e-6)"), bw, load, null, kd);
  const budget = decidePolicy(plan, asPolicy("budget(energy_mj=1e-9)"), bw, load, null, kd);
  return { front, slo, budget };
})));
"""
    got = json.loads(node(script, json.dumps({"path": str(device_dir / "plan.json"), "conds": conds})))
    for (bw, load, kd), g in zip(conds, got):
        front = plan.pareto_front(bw, load, None, None, kd)
        assert [p["cut"] for p in g["front"]] == [p.cut for p in front]
        fastest, frugal = front[0], front[-1]
        assert g["slo"]["reason"] == "unmet" and g["slo"]["cut"] == fastest.cut, g["slo"]
        assert math.isclose(g["slo"]["latencyMs"], fastest.latency_ms, rel_tol=1e-12)
        assert g["budget"]["reason"] == "unmet" and g["budget"]["cut"] == frugal.cut, g["budget"]
    assert any(len(g["front"]) > 1 for g in got)  # fastest and least energy differ somewhere

    old = next(d for d in zoo_builds if d.name == "alexnet-buckets")
    script = """
import { readFileSync } from "node:fs";
import { Plan } from "./plan.js";
import { asPolicy, checkPolicy } from "./policies.js";
const { paths } = JSON.parse(await new Response(process.stdin).text());
process.stdout.write(JSON.stringify(paths.map((path) => {
  const plan = new Plan(JSON.parse(readFileSync(path, "utf8")), path);
  return ["latency", "slo(latency_ms=120)", "weighted(0.5)"].map((t) => {
    try { checkPolicy(plan, asPolicy(t)); return "ok"; } catch (e) { return e.message; }
  });
})));
"""
    no_energy = tmp_path / "no-energy"
    shutil.copytree(device_dir, no_energy)
    doc = json.loads((no_energy / "plan.json").read_text())
    del doc["energy_model"]
    (no_energy / "plan.json").write_text(json.dumps(doc))
    (old_msgs, no_energy_msgs) = json.loads(node(script, json.dumps(
        {"paths": [str(old / "plan.json"), str(no_energy / "plan.json")]})))
    assert old_msgs[0] == "ok" and no_energy_msgs[0] == "ok"
    assert "plan.json lacks 'pareto'; rebuild it" in old_msgs[1] and 'policy "weighted(0.5)"' in old_msgs[2], old_msgs
    assert "plan.json lacks 'energy_model'; rebuild it" in no_energy_msgs[1], no_energy_msgs


def test_plan_errors_name_the_field(tmp_path):
    need(in_browser=False)
    script = """
import { Plan } from "./plan.js";
const docs = JSON.parse(await new Response(process.stdin).text());
const out = docs.map((d) => { try { new Plan(d, "dev/plan.json"); return "ok"; } catch (e) { return e.name + ": " + e.message; } });
process.stdout.write(JSON.stringify(out));
"""
    device_dir = rt.make_handmade_build(tmp_path) / "device"
    base = json.loads((device_dir / "plan.json").read_text())
    other_schema = {**base, "schema": "nscompile.plan/9"}
    no_cuts = {k: v for k, v in base.items() if k != "cuts"}
    ghost = json.loads(json.dumps(base))
    ghost["breakpoints"]["latency"][0][0]["cut"] = "ghost"
    rows = json.loads(json.dumps(base))
    rows["grid"]["load"] = [1, 2]
    axis = json.loads(json.dumps(base))
    axis["grid"]["device_load"] = [1.0, 4.0]  # but only the Kd = 1 slice of tables
    msgs = json.loads(node(script, json.dumps([base, other_schema, no_cuts, ghost, rows, axis])))
    assert msgs[0] == "ok"
    assert msgs[1].startswith("NscompileError: dev/plan.json has schema \"nscompile.plan/9\", expected \"nscompile.plan/1\"")
    assert "lacks model/cuts/grid" in msgs[2]
    assert 'names cut "ghost"' in msgs[3]
    assert "has 4 load rows but the grid has 2 load levels" in msgs[4]
    assert msgs[5].endswith('objective "latency" has 1 device-load levels but grid.device_load has 2; rebuild the plan'), msgs[5]
    from nscompile.errors import NscompileError
    from nscompile.runtime.plan import Plan

    with pytest.raises(NscompileError, match="'latency' has 1 device-load levels but grid.device_load has 2"):
        Plan(axis, device_dir)  # Python refuses it the same way


def test_device_load_estimate_matches_python():
    """The same samples give the same Kd in both languages, after every sample: one
    preempted run, a lasting slowdown, ties of the weighted median, zeros and NaNs ignored."""
    need(in_browser=False)
    from nscompile.runtime.netstate import DeviceLoad

    rng = np.random.default_rng(7)
    sequences = [
        [(10.0, 10.0), (11.0, 10.0), (9.0, 10.0), (10.0, 10.0), (200.0, 10.0), (30.0, 10.0), (30.0, 10.0), (30.0, 10.0)],
        [(2.0, 1.0), (4.0, 1.0), (6.0, 1.0), (8.0, 1.0)],  # the half between two samples: their mean
        [(0.0, 10.0), (5.0, 0.0), (float("nan"), 3.0), (3.0, 1.0), (1.0, 3.0)],
        [(float(m), float(p)) for m, p in zip(rng.lognormal(1, 1, 60), rng.choice([0.5, 3.0, 40.0, 40.0], 60))],
    ]
    want = []
    for seq in sequences:
        kd = DeviceLoad()
        values = []
        for m, p in seq:
            kd.add(m, p)
            values.append((kd.value, kd.samples))
        want.append(values)
    script = """
import { DeviceLoad } from "./netstate.js";
const seqs = JSON.parse(await new Response(process.stdin).text());
process.stdout.write(JSON.stringify(seqs.map((seq) => {
  const kd = new DeviceLoad();
  return seq.map(([m, p]) => { kd.add(m ?? NaN, p); return [kd.value, kd.samples]; });
})));
"""
    got = json.loads(node(script, json.dumps([[[None if math.isnan(m) else m, p] for m, p in seq] for seq in sequences])))
    assert [[tuple(v) for v in seq] for seq in got] == want


# ---------------------------------------------------------------------------------------
# The wire: JavaScript and Python read each other's messages
# ---------------------------------------------------------------------------------------

WIRE_ARRAYS = {
    "f32": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    "f16": (np.arange(6, dtype=np.float16) - 2.5).reshape(1, 6),
    "u8": np.array([[0, 7, 255]], dtype=np.uint8),
    "i64": np.array([-3, 0, 2**40], dtype=np.int64),
    "b": np.array([True, False, True]),
    "f64": np.array([math.pi], dtype=np.float64),
    "i32": np.array([[-5], [6]], dtype=np.int32),
}


def _js_tensors(arrays: dict) -> list:
    return [{"name": n, "type": a.dtype.name, "dims": list(a.shape), "bytes": list(np.ascontiguousarray(a).tobytes())}
            for n, a in arrays.items()]


def test_js_requests_decode_in_python():
    need(in_browser=False)
    from nscompile.runtime.protocol import HEADER_LENGTH, read_tensors, split_body

    script = """
import { encodeRequest, TYPES } from "./protocol.js";
const specs = JSON.parse(await new Response(process.stdin).text());
const inputs = Object.fromEntries(specs.map((s) =>
  [s.name, { type: s.type, dims: s.dims, data: new TYPES[s.type][1](new Uint8Array(s.bytes).buffer) }]));
const { body, headers } = encodeRequest(inputs);
process.stdout.write(JSON.stringify({ body: Array.from(body), headers }));
"""
    out = json.loads(node(script, json.dumps(_js_tensors(WIRE_ARRAYS))))
    header, binary = split_body(bytes(out["body"]), out["headers"][HEADER_LENGTH])
    got = read_tensors(header["inputs"], binary)
    assert header["parameters"] == {"binary_data_output": True}
    for name, want in WIRE_ARRAYS.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_array_equal(got[name], want)


def test_python_answers_decode_in_js():
    need(in_browser=False)
    from nscompile.runtime.protocol import encode_response

    binary = {n: n != "i32" for n in WIRE_ARRAYS}  # one output as a JSON "data" list
    body, head_len = encode_response("m", "1", WIRE_ARRAYS, binary)
    script = """
import { decodeResponse } from "./protocol.js";
const { body, headLen } = JSON.parse(await new Response(process.stdin).text());
const { outputs } = decodeResponse(new Uint8Array(body), String(headLen));
const json = Object.fromEntries(Object.entries(outputs).map(([n, t]) =>
  [n, { type: t.type, dims: t.dims, bytes: Array.from(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)) }]));
process.stdout.write(JSON.stringify(json));
"""
    got = json.loads(node(script, json.dumps({"body": list(body), "headLen": head_len})))
    for name, want in WIRE_ARRAYS.items():
        t = got[name]
        assert t["type"] == want.dtype.name and t["dims"] == list(want.shape), name
        np.testing.assert_array_equal(np.frombuffer(bytes(t["bytes"]), dtype=want.dtype).reshape(want.shape), want)


def test_malformed_answers_are_protocol_errors():
    need(in_browser=False)
    script = """
import { decodeResponse } from "./protocol.js";
const enc = (o) => new TextEncoder().encode(JSON.stringify(o));
const cases = [
  [enc({ outputs: [{ name: "y", datatype: "FP32", shape: [2], parameters: { binary_data_size: 4 } }] }), null],
  [new Uint8Array([...enc({ outputs: [] }), 1, 2]), String(enc({ outputs: [] }).length)],
  [enc({ outputs: [{ name: "y", datatype: "BYTES", shape: [1], data: ["a"] }] }), null],
  [enc({ nothing: 1 }), null],
];
process.stdout.write(JSON.stringify(cases.map(([b, h]) => { try { decodeResponse(b, h); return "ok"; } catch (e) { return e.name + ": " + e.message; } })));
"""
    msgs = json.loads(node(script))
    assert msgs[0].startswith("ProtocolError: output \"y\" has shape [2] of FP32 = 8 bytes but binary_data_size says 4")
    assert "2 bytes of binary data that no output claims" in msgs[1]
    assert 'datatype "BYTES" is not supported' in msgs[2]
    assert "no 'outputs' list" in msgs[3]


# ---------------------------------------------------------------------------------------
# The runner, in Node and in Chromium
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    return rt.make_handmade_build(tmp_path_factory.mktemp("js-handmade"))


@pytest.fixture(scope="module")
def zoo_split_builds(tmp_path_factory):
    """AlexNet (a chain) and ResNet-18 (a DAG), small, built for the phone-class device: real
    splits whose prefixes share weights.bin."""
    from nscompile import zoo
    from nscompile.compiler import build
    from nscompile.planner import GridSpec

    root = tmp_path_factory.mktemp("js-zoo")
    out = {}
    for name in ("alexnet", "resnet18"):
        (path,) = zoo.write_models([name], root / "models", size="small")
        build(path, root / name, device_profile=FIXED_PHONE_PROFILE, grid=GridSpec.parse("0.1:100000:40", "1,2,4,8"),
              report=False, include_all_cloud=True)
        out[name] = (root / name, path)
    return out


@pytest.fixture(scope="module", params=["node", pytest.param("chromium", marks=pytest.mark.browser)])
def harness_kind(request):
    need(in_browser=request.param == "chromium")
    return request.param


class Rig:
    """A static site (runner, onnxruntime-web, one device directory, feeds), a server, and a harness."""

    def __init__(self, kind: str, build: Path, tmp: Path, server_options: dict | None = None, cors: bool = True):
        from nscompile.serve import create_app

        self.build = build
        self.feeds_dir = tmp / "feeds"
        self.feeds_dir.mkdir(parents=True, exist_ok=True)
        self.site = site_for(build / "device", self.feeds_dir)
        options = {"concurrency": 1, "slowdown_floor_ms": 50.0, "cors_origins": [self.site.url] if cors else [],
                   **(server_options or {})}
        self.server = rt.ServerThread(create_app(build / "cloud", **options))
        self.harness = NodeHarness(tmp) if kind == "node" else PageHarness(tmp, self.site)
        self.kind = kind
        self._n = 0

    @property
    def device_url(self) -> str:
        return f"{self.site.url}/device/"

    def open(self, server_url: str | None = None, **options) -> dict:
        return self.harness.call("open", self.device_url, server_url or self.server.url, options)

    def run(self, inputs: dict[str, np.ndarray]) -> dict:
        self._n += 1
        spec = feed_spec(self.feeds_dir, inputs, tag=f"r{self._n}")
        if self.kind == "node":
            spec = absolute(spec, self.site)
        return self.harness.call("run", spec)

    def close(self) -> None:
        self.harness.close()
        self.server.stop()
        self.site.close()


@pytest.fixture(scope="module")
def rig(harness_kind, handmade, tmp_path_factory):
    r = Rig(harness_kind, handmade, tmp_path_factory.mktemp(f"rig-{harness_kind}"))
    yield r
    r.close()


def assert_matches(got: dict, want: dict, rel_l2: float | None = None) -> None:
    """Equal to the whole model: tightly, or (a lossy cut) within the build's relative L2 gate."""
    assert list(got) == list(want)
    for name, expected in want.items():
        actual = to_numpy(got[name])
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
        if rel_l2 is None:
            np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=name)
        else:
            rel = np.linalg.norm(actual.astype(np.float64) - expected) / max(float(np.linalg.norm(expected)), 1e-12)
            assert rel <= rel_l2, (name, rel)


@pytest.mark.parametrize("cut", list(rt.CUTS))
def test_every_cut_equals_whole_model(rig, cut):
    inputs = rt.sample_inputs()
    want = rt.reference(rig.build.parent / "tiny.onnx", inputs)
    ok(rig.open(forceCut=cut))
    answer = ok(rig.run(inputs))
    assert_matches(answer["outputs"], want)
    rec = answer["record"]
    assert rec["cut"] == cut and rec["reason"] == "forced" and not rec["fell_back"]
    if cut == "prob":
        assert rec["upload_bytes"] == 0 and rec["encoding"] is None
    else:
        # The same bytes the Python runner sends for this cut.
        assert rec["upload_bytes"] == sum(t["bytes"] for t in next(
            c for c in json.loads((rig.build / "plan.json").read_text())["cuts"] if c["id"] == cut)["tensors"])
        assert rec["encoding"] == "fp32" and rec["server_ms"] > 0 and rec["download_bytes"] > 0
        assert rec["upload_ms"] + rec["download_ms"] == pytest.approx(rec["transfer_ms"], abs=1e-6)
        assert rec["total_ms"] >= rec["prefix_ms"] + rec["server_ms"]


def test_zoo_splits_equal_whole_model(harness_kind, zoo_split_builds, tmp_path):
    """Chain and DAG zoo builds, every emitted cut forced, prefixes sharing weights.bin."""
    import onnxruntime as ort

    for name, (build, model_path) in zoo_split_builds.items():
        plan = json.loads((build / "plan.json").read_text())
        assert (build / "device" / "weights.bin").is_file()
        assert any(c["prefix"] and c["cloud_model"] for c in plan["cuts"]), f"{name}: no real split emitted"
        rng = np.random.default_rng(3)
        inputs = {t["name"]: rng.standard_normal(t["shape"]).astype(t["dtype"]) for t in plan["model"]["inputs"]}
        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        names = [o["name"] for o in plan["model"]["outputs"]]
        want = dict(zip(names, sess.run(names, inputs)))
        r = Rig(harness_kind, build, tmp_path / name)
        try:
            for cut in plan["cuts"]:
                ok(r.open(forceCut=cut["id"]))
                answer = ok(r.run(inputs))
                lossy = cut.get("encoding", "fp32") != "fp32"
                assert_matches(answer["outputs"], want, plan["accuracy_gate"]["tolerance"]["rel_l2"] if lossy else None)
                assert answer["record"]["cut"] == cut["id"] and not answer["record"]["fell_back"]
        finally:
            r.close()


def test_cut_follows_pinned_conditions(rig):
    """Pinned bandwidth and load: the cut is Python's look-up for them."""
    from nscompile.runtime import load_plan

    plan = load_plan(rig.build / "device")
    inputs = rt.sample_inputs()
    want = rt.reference(rig.build.parent / "tiny.onnx", inputs)
    for bw, load in ((0.5, 1.0), (6.0, 1.0), (500.0, 1.0), (500.0, 2.0), (6.0, 4.0), (500.0, 8.0)):
        ok(rig.open(bandwidthMbps=bw, load=load))
        answer = ok(rig.run(inputs))
        rec = answer["record"]
        assert rec["cut"] == plan.lookup(bw, load) and rec["reason"] in ("table", "plan"), (bw, load, rec)
        assert rec["bandwidth_mbps"] == bw and rec["load"] == load
        assert_matches(answer["outputs"], want)


def test_measures_the_link_when_not_pinned(rig):
    """The first request probes (RTT, load, bandwidth); the estimates land in the record."""
    ok(rig.open())
    rec = ok(rig.run(rt.sample_inputs()))["record"]
    assert rec["probe_ms"] > 0 and rec["rtt_ms"] > 0 and rec["bandwidth_mbps"] > 0, rec
    assert rec["reason"] in ("table", "rtt") and not rec["fell_back"]


@pytest.fixture(scope="module")
def device_axis_build(handmade, tmp_path_factory):
    """The hand-made build with a device-load axis (test_runtime.py's): as profiled (Kd = 1)
    everything on the device, four times slower (Kd = 4) everything on the server."""
    root = tmp_path_factory.mktemp("js-kd")
    rt._with_device_axis(handmade, root, prob_ms=10.0)
    (root / "cloud").symlink_to(handmade / "cloud", target_is_directory=True)
    return root


def slow_down(rig: Rig, ms: float) -> None:
    """Make the device slower by ``ms`` per run of the all-device model (0: as it is)."""
    answer = rig.harness.call("slowDown", "prob", ms)
    assert answer is None, answer


def test_decisions_follow_the_device_load_it_measures(harness_kind, device_axis_build, handmade, tmp_path):
    """As the Python runner: a slow device session (another app on the CPU) moves the work to
    the server; once the slowdown is gone the work comes back. One slow run alone moves nothing."""
    inputs = rt.sample_inputs()
    want = rt.reference(handmade.parent / "tiny.onnx", inputs)
    # The tiny model runs in a few milliseconds at most: against a prediction of 10 ms that
    # reads as Kd < 1 (level 1); 150 ms more per run reads as Kd ~15 (level 4).
    r = Rig(harness_kind, device_axis_build, tmp_path)
    try:
        ok(r.open(bandwidthMbps=100.0, load=1.0, staleS=60.0))
        records = [ok(r.run(inputs))["record"] for _ in range(5)]  # the window full of normal runs
        assert [x["cut"] for x in records] == ["prob"] * 5 and records[0]["device_load"] == 1.0, records
        assert all(x["device_load"] < 2.0 for x in records), records
        slow_down(r, 150)
        assert ok(r.run(inputs))["record"]["cut"] == "prob"
        slow_down(r, 0)
        rec = ok(r.run(inputs))["record"]
        assert rec["cut"] == "prob" and rec["device_load"] < 2.0, rec  # one preempted run: still on the device
        slow_down(r, 150)
        runs = [ok(r.run(inputs)) for _ in range(4)]
        cuts = [a["record"] for a in runs]
        first = next(i for i, x in enumerate(cuts) if x["cut"] == "input")
        assert first <= 3 and cuts[first]["device_load"] >= 4.0, cuts  # adapted within three slow runs
        assert all(x["cut"] == "input" and x["reason"] == "table" and not x["fell_back"] for x in cuts[first:]), cuts
        assert cuts[first]["predicted"]["device_ms"] == 0 and cuts[0]["predicted"]["device_ms"] == pytest.approx(
            10.0 * cuts[0]["device_load"])
        assert_matches(runs[first]["outputs"], want)  # the server's answer
        # All-cloud runs nothing on the device, so nothing shows it is fast again: a stale
        # estimate is forgotten and the device is tried again.
        slow_down(r, 0)
        r.harness.call("configure", {"staleS": 0.0})
        rec = ok(r.run(inputs))["record"]
        assert rec["cut"] == "prob" and rec["device_load"] == 1.0, rec
        r.harness.call("configure", {"staleS": 60.0})
        answer = ok(r.run(inputs))
        assert answer["record"]["cut"] == "prob" and answer["record"]["device_load"] < 2.0, answer["record"]
        assert_matches(answer["outputs"], want)
    finally:
        r.close()


def test_pinned_device_load_is_used_as_given(harness_kind, device_axis_build, handmade, tmp_path):
    inputs = rt.sample_inputs()
    r = Rig(harness_kind, device_axis_build, tmp_path)
    try:
        for kd, cut in ((4.0, "input"), (2.1, "input"), (1.9, "prob")):  # the nearest level on a log scale
            ok(r.open(bandwidthMbps=100.0, load=1.0, deviceLoad=kd))
            answer = ok(r.run(inputs))
            assert answer["record"]["cut"] == cut and answer["record"]["device_load"] == kd, answer["record"]
            assert_matches(answer["outputs"], rt.reference(handmade.parent / "tiny.onnx", inputs))
        for _ in range(3):  # its own runs, however fast, do not move a pinned Kd
            assert ok(r.run(inputs))["record"]["device_load"] == 1.9
    finally:
        r.close()


def test_runner_follows_its_policy_and_falls_back_on_an_unmeetable_slo(zoo_split_builds, tmp_path):
    """In Node, on AlexNet with fronts: the policy given at open and set between calls decides
    as Python's CutPolicy does for the record's estimates; an SLO no cut meets takes the fastest
    point (reason "unmet"); latency and energy keep reading the tables."""
    need(in_browser=False)
    from nscompile.runtime import SplitRunner
    from nscompile.runtime.policies import as_policy

    build, model_path = zoo_split_builds["alexnet"]
    plan_doc = json.loads((build / "plan.json").read_text())
    assert plan_doc.get("pareto") and plan_doc.get("energy_model"), "the build wrote no fronts"
    rng = np.random.default_rng(5)
    inputs = {t["name"]: rng.standard_normal(t["shape"]).astype(t["dtype"]) for t in plan_doc["model"]["inputs"]}
    py = SplitRunner(build / "device", "http://127.0.0.1:9")  # only its decision code runs
    r = Rig("node", build, tmp_path)
    try:
        ok(r.open(bandwidthMbps=20.0, load=1.0, deviceLoad=1.0, policy="slo(latency_ms=0.001)"))
        records = [ok(r.run(inputs))["record"]]
        for policy in ("energy", {"budget": 1e9}, "weighted(0.5)", "latency"):
            assert r.harness.call("configure", {"policy": policy}) is None
            records.append(ok(r.run(inputs))["record"])
        bad = r.harness.call("configure", {"policy": "slo(fast=1)"})
        assert "slo() takes latency_ms=, not fast=" in bad["error"]["message"], bad
        records.append(ok(r.run(inputs))["record"])  # the bad policy changed nothing
    finally:
        r.close()
    unmet = records[0]
    front = py.plan.pareto_front(20.0, 1.0, unmet["rtt_ms"], None, 1.0)
    assert unmet["reason"] == "unmet" and unmet["cut"] == front[0].cut and unmet["objective"] == "pareto", unmet
    assert unmet["policy"] == "slo(latency_ms=0.001)"
    assert [x["policy"] for x in records] == ["slo(latency_ms=0.001)", "energy", "budget(energy_mj=1e+09)", "weighted(0.5)",
                                              "latency", "latency"]
    assert [x["objective"] for x in records[1:]] == ["energy", "pareto", "pareto", "latency", "latency"]
    for rec in records:
        py.net.rtt.value = rec["rtt_ms"]  # the RTT rule of latency reads the estimate
        policy = as_policy(rec["policy"])
        cut, reason, (latency, energy) = py.cut_policy._decide(policy, 20.0, 1.0, rec["rtt_ms"], 1.0)
        if py.cut_policy._device_only[policy.objective]:  # every table entry is all-device (energy, here)
            reason = "plan"
        assert (rec["cut"], rec["reason"]) == (cut, reason) and not rec["fell_back"], rec
        assert rec["predicted_latency_ms"] == pytest.approx(latency, rel=1e-9), rec
        assert rec["predicted_energy_mj"] == pytest.approx(energy, rel=1e-9), rec
    assert records[2]["reason"] == "pareto" and records[2]["cut"] == front[0].cut  # every cut is within 1e9 mJ
    py.close()


def test_refused_connection_runs_on_the_device(rig):
    inputs = rt.sample_inputs()
    want = rt.reference(rig.build.parent / "tiny.onnx", inputs)
    ok(rig.open(f"http://127.0.0.1:{rt.free_port()}", deadlineMs=2000))
    for i in range(3):
        answer = ok(rig.run(inputs))
        assert_matches(answer["outputs"], want)
        rec = answer["record"]
        assert rec["cut"] == "prob" and rec["reason"] == "backoff" and not rec["fell_back"], rec
        if i == 0:
            assert rec["error"] == "server unreachable during probe"


def test_deadline_falls_back_then_backs_off(rig):
    entry = rig.server.app.state.models["tiny_suffix_input"]
    inputs = rt.sample_inputs()
    want = rt.reference(rig.build.parent / "tiny.onnx", inputs)
    ok(rig.open(forceCut="input", deadlineMs=300, backoffS=[0.2, 1.0]))
    ok(rig.run(inputs))  # the server's session is loaded, the config verified
    real = entry.session
    entry.session = rt.SlowSession(real, 1.0)
    try:
        answer = ok(rig.run(inputs))
        rec = answer["record"]
        assert rec["fell_back"] and rec["reason"] == "fallback" and "300 ms deadline" in rec["error"], rec
        assert rec["encoding"] is None and rec["fallback_ms"] > 0
        assert_matches(answer["outputs"], want)
    finally:
        time.sleep(1.1)  # the abandoned request finishes before the real session returns
        entry.session = real


def test_server_errors_fall_back(harness_kind, handmade, tmp_path):
    """A server answering 503 to every infer (a full queue): each request finishes on the device."""
    r = Rig(harness_kind, handmade, tmp_path, server_options={"max_queue": 0})
    try:
        inputs = rt.sample_inputs()
        want = rt.reference(handmade.parent / "tiny.onnx", inputs)
        ok(r.open(forceCut="relu1", backoffS=[0.05, 0.1]))
        answer = ok(r.run(inputs))
        rec = answer["record"]
        assert rec["fell_back"] and "server answered 503" in rec["error"], rec
        assert_matches(answer["outputs"], want)
    finally:
        r.close()


class WrongShapeSession:
    """A suffix session whose every output has one element too many (a server with wrong artifacts)."""

    def __init__(self, inner):
        self.inner = inner

    def run(self, names, feeds):
        return [np.concatenate([a, a[..., :1]], axis=-1) for a in self.inner.run(names, feeds)]


def test_wrong_shapes_from_the_server_are_an_error(rig):
    entry = rig.server.app.state.models["tiny_suffix_relu1"]
    ok(rig.open(forceCut="relu1"))
    ok(rig.run(rt.sample_inputs()))  # loads the session
    real = entry.session
    entry.session = WrongShapeSession(real)
    try:
        answer = rig.run(rt.sample_inputs())
    finally:
        entry.session = real
    assert answer["error"]["name"] == "NscompileError" and "outputs" not in answer
    msg = answer["error"]["message"]
    assert 'answered output "prob" as float32 [1,11]' in msg and "plan.json's model.outputs says float32 [1,10]" in msg


def test_bad_device_directory_is_one_clear_error(harness_kind, handmade, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(handmade, broken)
    (broken / "device" / "prefix_relu2.onnx").unlink()
    r = Rig(harness_kind, broken, tmp_path / "rig")
    try:
        err = r.open(forceCut="relu1")["error"]
        assert err["name"] == "NscompileError" and "prefix_relu2.onnx" in err["message"], err
        assert "copy the whole device/ directory" in err["message"]
        doc = json.loads((broken / "device" / "plan.json").read_text())
        (broken / "device" / "plan.json").write_text(json.dumps({**doc, "schema": "other/2"}))
        err = r.open()["error"]
        assert "plan.json has schema \"other/2\", expected \"nscompile.plan/1\"" in err["message"], err
        (broken / "device" / "plan.json").write_text("{not json")
        assert "is not valid JSON" in r.open()["error"]["message"]
        (broken / "device" / "plan.json").write_text(json.dumps(doc))
        shutil.copy(handmade / "device" / "prefix_relu2.onnx", broken / "device")
        ok(r.open(forceCut="prob"))
        bad = r.run({"x": rt.sample_inputs()["x"]})["error"]
        assert 'do not match the model\'s ["scale","x"]' in bad["message"], bad
        bad = r.run({**rt.sample_inputs(), "scale": np.ones((1, 10), np.float64)})["error"]
        assert 'input "scale" is float64, the model takes float32' in bad["message"], bad
    finally:
        r.close()


@pytest.mark.browser
def test_cors_allowed_origin_splits_other_origin_is_refused(handmade, tmp_path):
    need(in_browser=True)
    inputs = rt.sample_inputs()
    want = rt.reference(handmade.parent / "tiny.onnx", inputs)
    allowed = Rig("chromium", handmade, tmp_path / "allowed", cors=True)
    try:
        ok(allowed.open(forceCut="relu2"))
        rec = ok(allowed.run(inputs))["record"]
        assert not rec["fell_back"] and rec["server_ms"] > 0, rec
    finally:
        allowed.close()
    refused = Rig("chromium", handmade, tmp_path / "refused", server_options={"cors_origins": ["http://example.org"]},
                  cors=False)
    try:
        ok(refused.open(forceCut="relu2"))
        answer = ok(refused.run(inputs))
        rec = answer["record"]
        assert rec["fell_back"] and rec["reason"] == "fallback" and "Failed to fetch" in rec["error"], rec
        assert_matches(answer["outputs"], want)  # finished on the device
        assert "blocked by CORS policy" in refused.harness.console()
    finally:
        refused.close()


def test_onnxruntime_node_reads_prefixes_from_disk(zoo_split_builds, tmp_path):
    """With onnxruntime-node (optional, not in package.json) the runner loads prefixes by path."""
    need(in_browser=False)
    if not (JS_DIR / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip("onnxruntime-node is not installed in nscompile/runtime/js (npm install --ignore-scripts onnxruntime-node)")
    build, model_path = zoo_split_builds["alexnet"]
    plan = json.loads((build / "plan.json").read_text())
    split = next(c["id"] for c in plan["cuts"] if c["prefix"] and c["cloud_model"])
    from nscompile.serve import create_app
    from nscompile.testbed.testbed import Worker

    inputs = {"data": np.random.default_rng(0).standard_normal(plan["model"]["inputs"][0]["shape"]).astype(np.float32)}
    spec = feed_spec(tmp_path / "feeds", inputs)
    server = rt.ServerThread(create_app(build / "cloud"))
    site = site_for(build / "device", tmp_path / "feeds")
    worker = Worker(["node", str(JS_DIR / "tools" / "node_harness.js"), "--ort", "onnxruntime-node"], "ort-node", tmp_path)
    try:
        assert worker.answer(60)["value"]["ort"]["node"]
        ask = lambda fn, *a: worker.ask(120, op="call", fn=fn, args=list(a))["value"]  # noqa: E731
        ok(ask("open", str(build / "device"), server.url, {"forceCut": split}))
        got = ok(ask("run", absolute(spec, site)))
        import onnxruntime as ort

        sess = ort.InferenceSession(str(model_path))
        want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))
        assert_matches(got["outputs"], want)
    finally:
        worker.close()
        site.close()
        server.stop()
