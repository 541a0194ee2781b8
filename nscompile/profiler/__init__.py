"""``nscompile profile``: measure a device with microbenchmarks and fit its cost model.

Pipeline: :mod:`.microbench` generates single-op and fused-pattern ONNX models,
:mod:`.timing` times them with onnxruntime as the deployment runs them, features come
from :func:`nscompile.features.graph_features` (the same code the compiler uses), and
:mod:`.fit` fits one regression per op key. The result is a
:class:`~nscompile.cost_model.Profile` (JSON, never pickle).
"""

from __future__ import annotations

import datetime as _dt
import platform
import time
from dataclasses import astuple, dataclass, replace
from typing import Callable

from nscompile.cost_model import DEFAULT_FALLBACK, RADIO_PRESETS, RADIO_SOURCE, Profile, RadioModel, Regression, copy_ms
from nscompile.errors import NscompileError
from nscompile.profiler.stability import SpeedCheck, speed_kind

__all__ = ["run_profile", "cpu_model", "ASSUMED_POWER"]

#: Power figures used when no meter was attached (watts), per profile kind. A phone SoC
#: runs around 2-4 W with a big core busy and ~0.3 W idle with the screen off; a server
#: socket under load draws ~100 W. Override with --compute-power-w / --idle-power-w.
ASSUMED_POWER = {"device": (3.0, 0.3), "server": (100.0, 50.0)}

FUSION_NOTE = (
    "Keys: op_type for nodes that run as their own kernel; 'fused:<op>' for nodes onnxruntime "
    "folds into the producer's kernel (BN/affine/activation/residual Add after Conv, activation "
    "after Gemm, bias Add after MatMul, Dropout/Identity removed), costed per output element by "
    "'fused:<op>' models fitted jointly on fused-pattern time beyond the base kernel ('fused:*' "
    "for ops no pattern had); 'folded:<op>' for nodes "
    "with only constant inputs (constant-folded, free). Times are net of the fixed per-run "
    "session overhead ('run_overhead_ms'), the per-kernel dispatch cost ('node_overhead_ms') and "
    "the cost of each input and output beyond the first ('input_overhead_ms', 'output_overhead_ms'), "
    "which the compiler adds back once per run, once per kernel or layout copy, and per bound tensor."
)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where available)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class FixedCosts:
    """What a session run costs beyond its kernels' work (ms), measured on nothing-to-do graphs.

    Attributes:
        run: One run of a graph of two or more kernels, one input and one output.
        node: Each kernel of such a graph (dispatch, its output's allocation).
        lone: One whole run of a one-kernel graph. Lower than ``run + node``: with no
            intermediate tensor onnxruntime skips the allocation plan (about 0.4 us less
            here), so single-op benchmarks are taken net of this, not of ``run + node``.
        input: Each graph input beyond the first.
        output: Each graph output beyond the first.
        byte: Each byte of the graph's inputs and outputs, where the runtime copies them
            in and out on every run (onnxruntime-web; 0 with onnxruntime's IO binding).
    """

    run: float
    node: float
    lone: float
    input: float
    output: float
    byte: float = 0.0

    def scaled(self, factor: float) -> "FixedCosts":
        """All costs divided by ``factor`` (a speed correction)."""
        return FixedCosts(*(v / factor for v in astuple(self)))

    def of_benchmark(self, kernels: int, inputs: int, outputs: int, io_bytes: float = 0.0) -> float:
        """The fixed part of a benchmark graph's time: ``kernels`` kernels (layout copies
        included), its bound tensors, and ``io_bytes`` bytes of graph inputs and outputs."""
        base = self.lone if kernels <= 1 else self.run + self.node * kernels
        return base + self.input * max(inputs - 1, 0) + self.output * max(outputs - 1, 0) + self.byte * io_bytes


def _io_bytes(model, feeds) -> float:
    """Bytes of a benchmark's graph inputs and outputs (what a copying runtime moves per run)."""
    import numpy as np
    from onnx import helper

    out = 0
    for o in model.graph.output:
        t = o.type.tensor_type
        count = int(np.prod([d.dim_value for d in t.shape.dim]))
        out += count * np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
    return float(sum(a.nbytes for a in feeds.values()) + out)


def _fixed_costs(timer: Callable[..., float], io_copies: bool = False) -> FixedCosts:
    """Measure :class:`FixedCosts` on graphs of 16-element tensors (nothing to compute).

    Run and node: chains of 2 to 32 Relu nodes, ``t = run + k * node`` (Theil-Sen, robust
    to a disturbed point). Lone: one Relu. Input and output: a Sum of k inputs and a
    Split into k outputs, the slope over k. ``timer(model, feeds, budget_s=...)`` times one
    model (ms per run), as :func:`~nscompile.profiler.timing.time_model` does.

    With ``io_copies`` (a runtime that copies graph inputs and outputs on every run, as
    onnxruntime-web does) also the cost per byte of those copies: Relu chains of 2 to 4
    nodes on 256 KB to 4 MB tensors, each size's intercept over the chain length (the run
    without its kernels), the slope of those intercepts over the bytes copied in and out.
    """
    import statistics

    import numpy as np
    from onnx import TensorProto, helper
    from scipy.stats import theilslopes

    def graph(nodes, inputs, outputs, opset=18):
        vi = [[helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 16 * width]) for n, width in names]
              for names in (inputs, outputs)]
        m = helper.make_model(helper.make_graph(nodes, "fixed", vi[0], vi[1]), opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        return m, {n: np.ones((1, 16 * width), np.float32) for n, width in inputs}

    def timed(model_feeds, repeats=3):
        return [timer(*model_feeds, budget_s=0.05) for _ in range(repeats)]

    def slope(make, ks):
        xs, ts = [], []
        for k in ks:
            t = timed(make(k))
            xs += [k] * len(t)
            ts += t
        s, intercept, _, _ = theilslopes(ts, xs)
        return max(float(s), 0.0), max(float(intercept), 0.0)

    def chain(k, width=1):
        return graph([helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(k)], [("t0", width)],
                     [(f"t{k}", width)])

    def summed(k):
        names = [f"x{i}" for i in range(k)]
        return graph([helper.make_node("Sum", names, ["y"])], [(n, 1) for n in names], [("y", 1)])

    def split(k):
        names = [f"y{i}" for i in range(k)]
        return graph([helper.make_node("Split", ["x"], names, axis=1, num_outputs=k)], [("x", k)], [(n, 1) for n in names])

    node, run = slope(chain, (2, 3, 4, 8, 16, 32))
    lone = statistics.median(timed(chain(1), 5))
    per_input, _ = slope(summed, (1, 2, 3, 4, 6, 8))
    per_output, _ = slope(split, (2, 3, 4, 6, 8))
    per_byte = 0.0
    if io_copies:
        widths = (4096, 16384, 65536)  # x 16 float32 elements (beyond 4 MB the caches make it noisy)
        intercepts = [slope(lambda k, w=w: chain(k, w), (2, 3, 4))[1] for w in widths]
        per_byte = max(float(theilslopes(intercepts, [2 * 4 * 16 * w for w in widths])[0]), 0.0)
    return FixedCosts(run=run, node=node, lone=lone, input=per_input, output=per_output, byte=per_byte)


def _quota_slowdown(threads: int, provider: str) -> float:
    """Wall time over CPU time of onnxruntime runs under the current CPU quota (>= 1).

    Convolutions and fully connected layers of about 1 to 20 ms of work, run back to back
    in batches of at least 0.2 s and 50 CFS periods (a 12.5% quota has an 8 ms period);
    the median ratio.
    """
    import statistics

    from nscompile.profiler.quota import quota_period_s

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from nscompile.profiler.timing import make_session

    batch_s = max(0.2, 50 * (quota_period_s() or 0.0))
    rng = np.random.default_rng(11)
    ratios = []
    for cin, cout, hw, k in ((64, 64, 56, 3), (256, 128, 28, 1), (128, 128, 28, 3), (512, 512, 7, 3), (3, 32, 112, 3)):
        w = numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * 0.05).astype(np.float32), "w")
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], pads=[k // 2] * 4)
        vi = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw]),
              helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, hw, hw])]
        m = helper.make_model(helper.make_graph([node], "quota", vi[:1], vi[1:], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        sess = make_session(m.SerializeToString(), threads, provider)
        feeds = {"x": rng.standard_normal((1, cin, hw, hw)).astype(np.float32)}
        sess.run(None, feeds)
        for _ in range(3):
            w0, c0, n = time.perf_counter(), time.thread_time(), 0
            while time.perf_counter() - w0 < batch_s or n < 3:
                sess.run(None, feeds)
                n += 1
            ratios.append((time.perf_counter() - w0) / max(time.thread_time() - c0, 1e-9))
    return max(statistics.median(ratios), 1.0)


def nchwc_block() -> int | None:
    """Channels per block of onnxruntime's NCHWc convolutions on this CPU (None: it has none).

    MLAS picks the block by instruction set (8 with AVX2, 16 with AVX-512), so a profile
    made on one machine mis-counts every conv's padded MACs on the other: read, not timed,
    from the weights of a one-filter conv that onnxruntime's optimiser re-laid out, whose
    filter count it pads to one block.
    """
    import tempfile

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((1, 16, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)], "block",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory(prefix="nscompile-nchwc-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = f"{tmp}/optimized.onnx"
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(f"{tmp}/optimized.onnx")
    blocked = [n for n in optimized.graph.node if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"]
    if not blocked:
        return None
    weights = {i.name: i for i in optimized.graph.initializer}
    w_name = blocked[0].input[1]
    return int(weights[w_name].dims[0]) if w_name in weights else None


def _reorder_curve(timer: Callable[..., float], fixed_ms: float) -> list[tuple[float, float]]:
    """Cost per byte of onnxruntime's NCHWc layout copies by tensor size: ``(bytes per copy,
    ms per byte)``, ascending (empty if it does not use them).

    Times the copies themselves: a model of onnxruntime's own ReorderInput and
    ReorderOutput kernels (domain com.microsoft.nchwc), two copies of B bytes, less
    ``fixed_ms`` (the run's and the two kernels' dispatch). Inferring the cost from a lone
    conv against a chain of convs instead mixes in how convs run in a chain, which
    overstated it 1.6x here and so understated every conv fitted net of its copies. One
    price for all sizes fails both ways: a 3 MB feature map (DenseNet's) leaves the L2
    cache and costs about twice per byte what a 200 kB one does, and a price fitted on
    big copies, taken off a small conv's benchmark, leaves too little of the conv.
    """
    import numpy as np
    from onnx import TensorProto, helper

    curve = []
    # 12 kB to 6 MB per copy: in the L1, L2 and last-level caches.
    for c, hw in ((16, 14), (16, 28), (32, 56), (64, 56), (128, 56), (256, 56), (512, 56)):
        nodes = [helper.make_node("ReorderInput", ["x"], ["blocked"], domain="com.microsoft.nchwc"),
                 helper.make_node("ReorderOutput", ["blocked"], ["y"], domain="com.microsoft.nchwc", channels=c)]
        vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, hw, hw]) for n in ("x", "y")]
        m = helper.make_model(helper.make_graph(nodes, "reorder", [vi[0]], [vi[1]]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft.nchwc", 1)])
        m.ir_version = 8
        feeds = {"x": np.ones((1, c, hw, hw), np.float32)}
        try:
            t = timer(m, feeds, budget_s=0.1)
        except Exception:  # an onnxruntime build without the NCHWc kernels: no copies either
            return []
        nbytes = c * hw * hw * 4
        curve.append((float(nbytes), max((t - fixed_ms) / (2 * nbytes), 0.0)))
    return curve


def run_profile(
    name: str,
    kind: str = "device",
    threads: int = 1,
    provider: str = "cpu",
    quick: bool = False,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    compute_power_w: float | None = None,
    idle_power_w: float | None = None,
    radio: dict[str, RadioModel] | None = None,
    notes: str | None = None,
    under_quota: bool = False,
    timer: Callable[..., float] | None = None,
    io_copies: bool = False,
) -> Profile:
    """Profile this machine: run the microbenchmarks and fit the cost model.

    Args:
        name: Profile name.
        kind: ``"device"`` or ``"server"``.
        threads: onnxruntime intra-op threads, as the deployment will use (0 = all cores).
        provider: ``"cpu"`` or ``"cuda"``.
        quick: Small sweep (under two minutes) for CI and tests.
        seed: Seed of the configuration generator.
        progress: Called as ``progress(done, total, case_name)`` after each benchmark.
        compute_power_w: Measured compute power (W); None keeps the assumed figure.
        idle_power_w: Measured idle power (W); None keeps the assumed figure.
        radio: Radio models overriding the Huang et al. presets.
        notes: Free text stored in the profile (e.g. how the device was set up).
        under_quota: The process runs under a CPU quota: measure its slowdown (``time_scale``).
        timer: Times one model, ``timer(model, feeds, budget_s=...) -> ms per run``, in
            place of onnxruntime here (``nscompile profile --web``: in a browser, see
            :mod:`nscompile.profiler.web`); None: onnxruntime with ``threads`` and ``provider``.
        io_copies: The runtime copies graph inputs and outputs on every run (onnxruntime-web):
            measure the cost per byte and take every benchmark net of it (stored as
            ``meta["io_copy_ms_per_byte"]``; a whole model pays it once, not per op).

    Returns:
        The fitted profile.

    Raises:
        NscompileError: bad kind or thread count, or the provider is unavailable.
    """
    import numpy as np
    import onnxruntime as ort

    from nscompile.features import NCHWC_BLOCK, graph_features, static_shapes
    from nscompile.profiler.fit import Sample, fit_all, fit_fused, fit_key, fit_linear_law
    from nscompile.profiler.microbench import count_cases, generate_cases
    from nscompile.profiler.timing import pick_clock, time_model

    if kind not in ("device", "server"):
        raise NscompileError(f"profile kind must be 'device' or 'server', got '{kind}'")
    if threads < 0:
        raise NscompileError(f"--threads must be >= 0 (0 = all cores), got {threads}")
    started = time.time()
    n_cases = count_cases(quick, seed)
    budget = 0.12 if quick else 0.35
    # A timer of its own (a browser's) says which clock it times with.
    clock = getattr(timer, "clock", None) or pick_clock(threads, provider)
    custom_timer = timer is not None
    if timer is None:
        def timer(model, feeds, **kw):
            return time_model(model, feeds, threads, provider, clock=clock, **kw)
    # Under a quota the regressions are fitted on the work (CPU time, see pick_clock) and
    # the quota's slowdown is measured once, on models long enough to average it.
    time_scale = _quota_slowdown(threads, provider) if under_quota else 1.0
    # Reference kernels timed every second: each measurement is corrected for how fast
    # the machine ran at that moment (see nscompile.profiler.stability).
    speed = SpeedCheck(threads, provider, clock, timer=timer if custom_timer else None)
    speed.check(force=True)
    fixed_at = time.monotonic()
    fixed_costs = _fixed_costs(timer, io_copies)
    # NCHWc layout copies exist only on the CPU provider.
    reorder_curve = _reorder_curve(timer, fixed_costs.of_benchmark(2, 1, 1)) if provider == "cpu" else []
    # The features of every benchmark depend on it (padded MACs, layout copies).
    block = (nchwc_block() if provider == "cpu" and not custom_timer else None) or NCHWC_BLOCK

    def features_of(model):
        return graph_features(model.graph, static_shapes(model), {t.name for t in model.graph.initializer}, block)

    def timed(model, feeds):
        return timer(model, feeds, budget_s=budget)

    measured = []  # (group, features, (inputs, outputs, io bytes), ms, when, base ms or None)
    for i, case in enumerate(generate_cases(quick, seed)):
        speed.check()
        feats = features_of(case.model)
        io = (len(case.feeds), len(case.model.graph.output), _io_bytes(case.model, case.feeds))
        when = time.monotonic()
        ms = timed(case.model, case.feeds)
        base_ms = None
        if case.base is not None:
            # Timed next to its pattern: the base kernel alone, a single-op sample too.
            base_ms = timed(case.base, case.base_feeds)
            base_io = (len(case.base_feeds), 1, _io_bytes(case.base, case.base_feeds))
            measured.append(("base", features_of(case.base), base_io, base_ms, when, None))
            io = (*io[:2], io[2] - base_io[2])  # a pattern's own bytes: beyond its base's
        measured.append((case.group, feats, io, ms, when, base_ms))
        if progress is not None:
            progress(i + 1, max(n_cases, i + 1), case.name)
    speed.check(force=True)

    # Copies stream memory: they follow the memory reference, the rest the dispatch one.
    fixed_costs = replace(fixed_costs.scaled(speed.factor("dispatch", fixed_at)),
                          byte=fixed_costs.byte / speed.factor("memory", fixed_at))
    memory = speed.factor("memory", fixed_at)
    reorder_curve = [(b, c / memory) for b, c in reorder_curve]
    reorder = float(np.median([c for _, c in reorder_curve])) if reorder_curve else 0.0
    singles: list[Sample] = []
    fused_samples, per_key = [], []  # what fused nodes cost: all pooled, and per fused key
    for group, feats, io, ms, when, base_ms in measured:
        kernels = [f for f in feats if ":" not in f.key]
        factor = speed.factor(speed_kind(kernels[0].key, ms), when) if kernels else 1.0
        ms /= factor
        fused = [f for f in feats if f.key.startswith("fused:")]
        if base_ms is not None and fused and len(kernels) == 1:
            # The fused nodes' cost: the pattern less its base kernel (one more input to
            # bind, and where inputs are copied to copy, for a residual Add), measured side by side.
            extra = max(ms - base_ms / factor - fixed_costs.input * (io[0] - 1) - fixed_costs.byte * io[2], 0.0)
            total: dict[str, float] = {}
            for f in fused:
                for k, v in f.values.items():
                    total[k] = total.get(k, 0.0) + v
            fused_samples.append(Sample("fused:*", total, max(extra, 1e-4)))
            per_key.append(([f.key for f in fused], [f.values.get("elems_out", 0.0) for f in fused], extra))
            continue
        # Net of the session's run, dispatch and binding costs and of the layout copies a
        # lone op pays (all costed separately: the profile's fixed costs, reorder_bytes).
        n_copies = sum(f.values.get("reorder_copies", 0.0) for f in feats)
        fixed = fixed_costs.of_benchmark(len(kernels) + int(n_copies), *io)
        copies = copy_ms(sum(f.values.get("reorder_bytes", 0.0) for f in feats), n_copies, reorder, reorder_curve)
        ms = max(ms - fixed - copies, 0.1 * ms, 1e-4)
        if group == "stack" and kernels and len({f.key for f in kernels}) == 1:
            # Identical layers in a row: one sample of the per-layer time.
            singles.append(Sample(kernels[0].key, dict(kernels[0].values), ms / len(kernels)))
        elif len(kernels) == 1 and group != "pattern":
            singles.append(Sample(kernels[0].key, dict(kernels[0].values), ms))

    models = fit_all(singles, seed)
    if fused_samples:
        models["fused:*"] = fit_key("fused:*", fused_samples, seed)  # for fused ops no pattern had
        models.update(fit_fused(per_key))
    for op in ("Dropout", "Identity"):  # removed by the optimiser outright
        models[f"fused:{op}"] = Regression((), "constant", (), 0.0, None, 0)
    # Fallback for unseen op types: memory traffic, fitted on the memory-bound ops.
    heavy = {"Conv", "Conv.depthwise", "Conv.grouped", "Gemm", "MatMul", "LSTM", "GRU", "LRN"}
    mem = [Sample("fallback", s.values, s.ms) for s in singles if s.key not in heavy]
    # Always the linear form on bytes moved, so a huge unknown op extrapolates sanely.
    fallback = fit_linear_law(mem, ("bytes_total",)) if len(mem) >= 3 else DEFAULT_FALLBACK

    cp, ip = ASSUMED_POWER[kind]
    meta = {
        "onnxruntime_version": ort.__version__,
        "cpu_model": cpu_model(),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "clock": clock,
        "statistic": "median" if clock == "cpu" else "min",
        "time_scale_source": ("wall/CPU time of onnxruntime runs under the quota (median)" if under_quota
                              else "regressions fitted on latency"),
        "n_benchmarks": len(measured),
        "quick": bool(quick),
        "seed": int(seed),
        "profiling_seconds": round(time.time() - started, 1),
        "fusion_scheme": FUSION_NOTE,
        "heldout_metric": "k-fold (k<=5) mean absolute relative error of the chosen form",
        "power_source": "assumed" if compute_power_w is None and idle_power_w is None else "measured",
        "radio_source": RADIO_SOURCE,
        "speed_checks": speed.summary(),
        "lone_kernel_run_ms": fixed_costs.lone,
    }
    if io_copies:
        meta["io_copy_ms_per_byte"] = fixed_costs.byte
    if notes:
        meta["notes"] = notes
    radios = dict(RADIO_PRESETS)
    radios.update(radio or {})
    return Profile(
        name=name,
        kind=kind,
        provider=provider,
        threads=int(threads),
        compute_power_w=float(cp if compute_power_w is None else compute_power_w),
        idle_power_w=float(ip if idle_power_w is None else idle_power_w),
        models=models,
        fallback=fallback,
        radio_models=radios,
        meta=meta,
        reorder_ms_per_byte=reorder,
        reorder_curve=tuple(reorder_curve),
        nchwc_block=block,
        run_overhead_ms=fixed_costs.run,
        node_overhead_ms=fixed_costs.node,
        input_overhead_ms=fixed_costs.input,
        output_overhead_ms=fixed_costs.output,
        time_scale=time_scale,
    )
