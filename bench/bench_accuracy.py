"""Accuracy of a latency profile: predicted vs measured whole-model latency.

For each evaluated model (the nine onnx ``light`` models with seeded random weights, and
the zoo's models when ``nscompile.zoo`` is available and ``--zoo`` is given) the
prediction ``plan.json`` reports for the all-device cut (the profile's per-node
predictions summed, plus its fixed per-run cost) is compared with the median latency
measured with onnxruntime under the profile's threads and provider (full graph
optimisation), in ``--passes`` passes over all models (each model's median of passes).

    python bench/bench_accuracy.py                       # default device profile
    python bench/bench_accuracy.py --profile cost_models/epyc-ort-cpu-2threads.json
    python bench/bench_accuracy.py --models resnet50,vgg19 --breakdown --json out.json
    python bench/bench_accuracy.py --cuts 4       # also prefix/suffix latencies at 4 cuts
    python bench/bench_accuracy.py --zoo --models zoo:lenet,zoo:senna_pos   # zoo models by name
    python bench/bench_accuracy.py --web --profile cost_models/browser-wasm-1thread.json --tolerance 0.2
        # measured in headless Chromium (onnxruntime-web), next to native onnxruntime, 1 thread

Exit status 1 if any model is off by more than --tolerance (default 15%).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict

import numpy as np


def predict_model(model, profile):
    """Per-node predictions (key, ms) of a shape-inferred model."""
    from nscompile.features import graph_features, static_shapes

    shapes = static_shapes(model)
    consts = {i.name for i in model.graph.initializer}
    feats = graph_features(model.graph, shapes, consts, profile.nchwc_block)
    return [(f.key, profile.predict_ms(f)) for f in feats]


def graph_io(model):
    """How many tensors a run of ``model`` binds: (graph inputs fed, graph outputs)."""
    consts = {i.name for i in model.graph.initializer}
    return sum(i.name not in consts for i in model.graph.input), len(model.graph.output)


def measure_model(model, feeds, threads, provider, repeats, clock="wall", stat="median"):
    """Median (or min) ms per whole-model run over ``repeats`` runs, on the given clock."""
    from nscompile.profiler.timing import make_session, time_session

    sess = make_session(model.SerializeToString(), threads, provider)
    # Batches of at least 5 ms (a 20 us model timed one run at a time is mostly clock
    # noise); on the wall clock 50 ms, a dozen periods of a CPU quota's throttling.
    return time_session(sess, feeds, budget_s=0.0, min_batch_s=0.05 if clock == "wall" else 0.005,
                        max_repeats=repeats, min_repeats=repeats,
                        clock=clock, stat=stat)


def ort_breakdown(model, feeds, threads, provider):
    """Kernel time per optimized op type from onnxruntime's own profiler (ms per run)."""
    import onnxruntime as ort
    import os
    import tempfile

    from nscompile.profiler.timing import PROVIDERS

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "prof")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=[PROVIDERS[provider]])
    n = 5
    for _ in range(n + 1):
        sess.run(None, feeds)
    path = sess.end_profiling()
    events = json.load(open(path))
    per = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[e["args"]["op_name"]].append(e["dur"] / 1e3)
    return {k: sum(v) / (n + 1) for k, v in per.items()}


def prefix_suffix_errors(model, profile, n_cuts, repeats, clock, stat, seed=0):
    """Relative errors of predicted prefix and suffix latencies at ``n_cuts`` cut points.

    A cut after node j (in ONNX order) splits the graph into nodes[:j] and nodes[j:]; the
    prediction is what the compiler computes (the whole graph's per-node predictions,
    summed over each side), the measurement runs each side as its own model.
    """
    import onnx.utils

    from nscompile.profiler.modelprep import random_feeds

    nodes = list(model.graph.node)
    preds = [ms for _, ms in predict_model(model, profile)]
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    extractor = onnx.utils.Extractor(model)
    errs = []
    for j in np.linspace(0, len(nodes), n_cuts + 2, dtype=int)[1:-1]:
        produced = {o for n in nodes[:j] for o in n.output}
        needed = {x for n in nodes[j:] for x in n.input} | set(outputs)
        boundary = sorted(t for t in produced if t in needed)
        if not boundary:
            continue
        # Each side is fed the graph inputs its own nodes read, as nscompile emits them.
        read_before = {x for n in nodes[:j] for x in n.input}
        prefix_in = [i for i in inputs if i in read_before]
        suffix_in = boundary + [i for i in inputs if i in needed]
        for side, ins, outs, pred in (("prefix", prefix_in, boundary, sum(preds[:j])),
                                      ("suffix", suffix_in, outputs, sum(preds[j:]))):
            sub = extractor.extract_model(ins, outs)
            feeds = random_feeds(sub, seed)
            meas = measure_model(sub, feeds, profile.threads, profile.provider, repeats, clock, stat)
            pred = profile.run_ms(pred, *graph_io(sub))
            errs.append((side, int(j), pred, meas, (pred - meas) / meas))
    return errs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="profile JSON (default: the shipped device profile)")
    ap.add_argument("--models", default=None, help="comma-separated light model names, zoo ones as zoo:NAME (default: all nine light models)")
    ap.add_argument("--zoo", action="store_true", help="also evaluate every nscompile zoo model")
    ap.add_argument("--zoo-size", choices=["small", "full"], default="full", help="zoo model size with --zoo")
    ap.add_argument("--repeats", type=int, default=7, help="timed batches per model (median)")
    ap.add_argument("--passes", type=int, default=3,
                    help="whole-model measurements per model, in passes over all models (median)")
    ap.add_argument("--tolerance", type=float, default=0.15, help="max relative error per model")
    ap.add_argument("--breakdown", action="store_true", help="print predicted vs ORT-measured time per key")
    ap.add_argument("--json", default=None, help="write the results table here")
    ap.add_argument("--cuts", type=int, default=0,
                    help="also check prefix and suffix latencies at this many evenly spaced cuts per model")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="statistic of the repeated whole-model runs (min on a busy machine, wall clock)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default=None,
                    help="timing clock (default: the one the profile was measured with)")
    ap.add_argument("--web", action="store_true",
                    help="measure in headless Chromium with onnxruntime-web (a browser profile), and natively "
                         "with onnxruntime on one thread in the same pass for the browser/native ratio")
    args = ap.parse_args(argv)
    if args.passes < 1 or args.repeats < 1:
        ap.error("--passes and --repeats must be at least 1")

    from nscompile.cost_model import default_profile_path, load_profile, shipped_for_this_cpu
    from nscompile.profiler.modelprep import light_model_paths, load_light_model, random_feeds

    # By default this CPU's shipped profile: the measurement is taken here.
    profile = load_profile(args.profile or (shipped_for_this_cpu("device") or [default_profile_path("device")])[0])
    wanted = [n.strip() for n in (args.models or "").split(",") if n.strip()]
    names = [n for n in wanted if not n.startswith("zoo:")] if wanted else list(light_model_paths())
    models = [(n, lambda n=n: load_light_model(n)) for n in names]
    if args.zoo or any(n.startswith("zoo:") for n in wanted):
        import onnx

        from nscompile import zoo

        models += [(f"zoo:{m.name}", lambda m=m: onnx.shape_inference.infer_shapes(zoo.build_model(m.name, size=args.zoo_size)))
                   for m in zoo.list_models() if args.zoo or f"zoo:{m.name}" in wanted]
    # Measure on the clock the profile was measured with (thread CPU time for 1-thread CPU
    # profiles, so other processes on a shared machine do not inflate the latency).
    clock = args.clock or profile.meta.get("clock", "wall")
    quota = profile.meta.get("cpu_quota_cores")
    if args.web and (quota or args.cuts or args.breakdown):
        ap.error("--web measures whole models in the browser: no --cuts, --breakdown or quota profile")
    if quota and not args.clock:
        clock = "wall"  # under a quota the latency is wall time: the throttling is part of it
    print(f"profile {profile.name} ({profile.provider}, {profile.threads} thread(s), {clock} clock)")
    rows = []
    loaded = [(name, load()) for name, load in models]  # built at full speed, before any quota
    feeds_of = {name: random_feeds(model) for name, model in loaded}
    if quota:
        # A phone-class profile measured under a CPU quota is checked under the same quota.
        from contextlib import ExitStack

        from nscompile.profiler.quota import cpu_quota

        stack = ExitStack()
        stack.enter_context(cpu_quota(float(quota)))
        print(f"(measuring under a CPU quota of {quota} core(s), like the profile)")
    # Each model is measured once per pass and the passes' median kept: a slow minute of
    # this shared machine then falls on one pass of every model, not on a few models.
    passes: dict[str, list[float]] = defaultdict(list)
    native: dict[str, list[float]] = defaultdict(list)
    if args.web:
        from contextlib import ExitStack

        from nscompile.profiler.web import BrowserTimer

        stack = ExitStack()
        timer = stack.enter_context(BrowserTimer())
        print(f"(browser: onnxruntime-web {timer.versions.get('ort')} in Chromium {timer.browser.version}, "
              f"{timer.clock} clock; native: onnxruntime, 1 thread, the same clock)")
    # The profile's reference kernels, timed again between passes: how far the machine's
    # speed has moved since the profile was made (a shared VM's host moves it by 10-20%
    # over minutes), reported next to the errors, never folded into them.
    reference = profile.meta.get("speed_checks", {}).get("median_ms", {})
    speed = None
    if reference and not args.web:
        from nscompile.profiler.stability import SpeedCheck

        speed = SpeedCheck(profile.threads, profile.provider, profile.meta.get("clock", clock), every_s=0.0)
        speed.check(force=True)
    for p in range(args.passes):
        for name, model in loaded:
            if args.web:  # the browser, then native onnxruntime right after it (side by side)
                passes[name].append(timer(model, feeds_of[name], budget_s=0.0, min_batch_s=0.05,
                                          max_repeats=args.repeats, min_repeats=args.repeats, stat=args.stat))
                native[name].append(measure_model(model, feeds_of[name], 1, "cpu", args.repeats, timer.clock, args.stat))
                continue
            passes[name].append(measure_model(model, feeds_of[name], profile.threads, profile.provider,
                                              args.repeats, clock, args.stat))
        if speed is not None:
            speed.check(force=True)
        print(f"(pass {p + 1} of {args.passes} done)", flush=True)
    print(f"{'model':<14}{'predicted ms':>14}{'measured ms':>14}{'error':>9}" + (f"{'native ms':>12}{'browser/native':>16}" if args.web else ""))
    for name, model in loaded:
        feeds = feeds_of[name]
        preds = predict_model(model, profile)
        pred = profile.run_ms(sum(ms for _, ms in preds), *graph_io(model))
        meas = statistics.median(passes[name])
        err = (pred - meas) / meas
        rows.append({"model": name, "predicted_ms": pred, "measured_ms": meas, "rel_error": err, "passes_ms": passes[name]})
        spread = max(passes[name]) / min(passes[name]) - 1
        versus = ""
        if args.web:
            nat = statistics.median(native[name])
            rows[-1].update({"native_ms": nat, "browser_over_native": meas / nat, "native_passes_ms": native[name]})
            versus = f"{nat:>12.3f}{meas / nat:>15.1f}x"
        print(f"{name:<14}{pred:>14.3f}{meas:>14.3f}{100 * err:>8.1f}%{versus}  (passes spread {100 * spread:.0f}%)", flush=True)
        if args.cuts:
            cut_errs = prefix_suffix_errors(model, profile, args.cuts, args.repeats, clock, args.stat)
            rows[-1]["cuts"] = [{"side": a, "after_node": b, "predicted_ms": c, "measured_ms": d, "rel_error": e}
                                for a, b, c, d, e in cut_errs]
            med = statistics.median(abs(e[-1]) for e in cut_errs) if cut_errs else float("nan")
            print(f"   prefix/suffix at {len(cut_errs) // 2} cuts: median |error| {100 * med:.1f}%", flush=True)
        if args.breakdown:
            by_key = defaultdict(float)
            for k, ms in preds:
                by_key[k] += ms
            print("   predicted by key:", {k: round(v, 2) for k, v in sorted(by_key.items(), key=lambda x: -x[1]) if v > 0.01})
            br = ort_breakdown(model, feeds, profile.threads, profile.provider)
            print("   ORT kernels:     ", {k: round(v, 2) for k, v in sorted(br.items(), key=lambda x: -x[1])})
    if quota or args.web:
        stack.close()
    drift = {}
    if speed is not None:
        drift = {k: statistics.median(v) / reference[k] for k, v in speed.times.items() if v and reference.get(k)}
        print("machine speed against the profile's run (reference kernels' time now / then): "
              + ", ".join(f"{k} x{v:.2f}" for k, v in sorted(drift.items())))
    errs = [abs(r["rel_error"]) for r in rows]
    if errs:
        print(f"median |error| {100 * statistics.median(errs):.1f}%, max {100 * max(errs):.1f}%")
    cut_all = [abs(c["rel_error"]) for r in rows for c in r.get("cuts", [])]
    if cut_all:
        print(f"prefix/suffix latencies: {len(cut_all)}, median |error| {100 * statistics.median(cut_all):.1f}%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"profile": profile.name, "clock": clock, "rows": rows, "reference_drift": drift}, fh, indent=1)
    return 0 if all(e <= args.tolerance for e in errs) else 1


if __name__ == "__main__":
    sys.exit(main())
