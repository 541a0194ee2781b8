"""Calibration: time one model per node on this device and store the times in the profile.

``nscompile profile --model model.onnx --base PROFILE -o OUT`` loads the model the way the
compiler does (same node names, same folding, same pinned input shapes), runs it with
onnxruntime's own profiler under the profile's threads and provider at full
optimisation, and maps every kernel's time back onto the model's nodes:

* a kernel named after a node (onnxruntime names a fused kernel after the last node it
  absorbed or as ``fused <node>``, and appends ``_nchwc`` to a blocked-layout one) is
  that node together with the nodes fused into it, split between them as the
  regressions split them;
* a kernel with no node of its own (a layout copy) is spread over the nodes that cause
  layout copies, else over all nodes, as the regressions weigh them.

The per-node times are then made to add up to the model's median latency measured
without the profiler (minus the profile's per-run overhead): the profiler's own cost,
a few microseconds per kernel, is taken off evenly, and what remains is scaled. The
result is stored under the model's SHA-256 in the profile's ``calibrations``;
:func:`nscompile.annotate.annotate` prefers these times for that model (and those input
shapes) over the regressions.
"""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from nscompile.cost_model import Profile
from nscompile.features import graph_features
from nscompile.frontend import LoadedModel, load_model

__all__ = ["calibrate"]


def calibrate(model_path, profile: Profile, input_shapes=None, runs: int = 20) -> tuple[str, dict]:
    """Measure ``model_path`` per node on this machine: the calibration entry for ``profile``.

    Args:
        model_path: The ONNX model.
        profile: This device's profile (its threads and provider are used).
        input_shapes: Pinned input shapes, as ``nscompile build --input-shape`` takes them.
        runs: Profiled runs (after one warm-up run).

    Returns:
        (model SHA-256, entry) for :attr:`Profile.calibrations`: the model's name, input
        shapes, measured and predicted latency, and ``nodes`` (node name -> ms).

    Raises:
        NscompileError: the model cannot be loaded, or the provider is unavailable.
    """
    from nscompile.profiler.quota import quota_period_s
    from nscompile.profiler.timing import make_session, time_session
    from nscompile.verify import random_inputs

    model = load_model(model_path, input_shapes)
    features = graph_features(model.model.graph, model.shapes(), model.constants, profile.nchwc_block)
    predicted = np.array([profile.predict_ms(f) for f in features])
    feeds = random_inputs(model)
    with tempfile.TemporaryDirectory(prefix="nscompile-calib-") as tmp:
        path = _write_whole(model, Path(tmp))
        kernels = _kernel_times(path, profile, feeds, runs, Path(tmp))
        session = make_session(str(path), profile.threads, profile.provider)  # a path: weights are external
        device = "cuda" if profile.provider == "cuda" else "cpu"
        # Latency: the thread's CPU time where that is the latency (see pick_clock), else wall
        # time; under a CPU quota the median of batches long enough to average the throttling.
        quota = bool(profile.meta.get("cpu_quota_cores"))
        clock = "wall" if quota or profile.meta.get("clock") != "cpu" else "cpu"
        # At least 0.05 s and 12 CFS periods (a 12.5% quota's period is 8 ms).
        timing = {"stat": "median", "min_batch_s": max(0.05, 12 * (quota_period_s() or 0.0))} if quota else {}
        measured_ms = time_session(session, feeds, budget_s=1.0, device=device, clock=clock, **timing)
    target = max(measured_ms - profile.fixed_ms(len(model.inputs), len(model.outputs)), 0.0)
    # The profiler costs about the same few microseconds per kernel, whatever the kernel:
    # take that off evenly first, then scale what is left onto the measured latency.
    excess = sum(kernels.values()) - target
    if excess > 0 and kernels:
        kernels = {k: max(v - excess / len(kernels), 0.0) for k, v in kernels.items()}
    node_ms = _attribute(model, features, predicted, kernels)
    total = float(node_ms.sum())
    if total > 0:
        node_ms *= target / total
    entry = {
        "model": model.name,
        "input_shapes": {name: list(model.tensors[name].shape) for name in model.inputs},
        "measured_ms": round(measured_ms, 6),
        "predicted_ms": round(profile.run_ms(float(predicted.sum()), len(model.inputs), len(model.outputs)), 6),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "nodes": {node.name: round(float(ms), 6) for node, ms in zip(model.nodes, node_ms)},
    }
    return model.sha256, entry


def _write_whole(model: LoadedModel, out_dir: Path) -> Path:
    """The loaded model (its node names, folded and pinned) as a runnable file."""
    from nscompile.backend import submodel, write_weights
    from nscompile.runtime.contract import WEIGHTS_FILE

    offsets = write_weights(model, out_dir / WEIGHTS_FILE)
    mask = np.ones(len(model.nodes), dtype=bool)
    whole = submodel(model, mask, model.inputs, model.outputs, offsets, WEIGHTS_FILE, model.name, "whole", "calibration")
    path = out_dir / "model.onnx"
    path.write_bytes(whole.SerializeToString())
    return path


def _kernel_times(path: Path, profile: Profile, feeds: dict, runs: int, tmp: Path) -> dict[str, float]:
    """Mean milliseconds per run of each kernel, from onnxruntime's profiler (warm-up run dropped)."""
    import onnxruntime as ort

    from nscompile.profiler.timing import PROVIDERS

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(profile.threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / "ort-profile")
    ep = PROVIDERS[profile.provider]
    sess = ort.InferenceSession(str(path), so, providers=[ep] if profile.provider == "cpu" else [ep, "CPUExecutionProvider"])
    for _ in range(runs + 1):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per[e["name"][: -len("_kernel_time")]].append(e["dur"] / 1e3)
    # Each kernel ran runs + 1 times; the first (warm-up) is dropped.
    return {name: float(np.mean(durs[1:] if len(durs) > 1 else durs)) for name, durs in per.items()}


def _attribute(model: LoadedModel, features, predicted: np.ndarray, kernels: dict[str, float]) -> np.ndarray:
    """Spread the kernels' times over the model's nodes (see the module docstring)."""
    index = {node.name: i for i, node in enumerate(model.nodes)}
    node_ms = np.zeros(len(model.nodes))
    orphan = 0.0
    for name, ms in kernels.items():
        i = index.get(name)
        if i is None:  # "fused ip1", "conv1_relu_nchwc": onnxruntime's names for rewritten nodes
            i = index.get(name.removeprefix("fused ").removesuffix("_nchwc"))
        if i is None:
            orphan += ms
            continue
        group = _fused_group(model, features, i)
        weights = predicted[group]
        share = weights / weights.sum() if weights.sum() > 0 else np.eye(len(group))[0]
        node_ms[group] += ms * share
    if orphan:
        layout = np.array([f.values.get("reorder_copies", 0.0) > 0 for f in features])
        weights = predicted * layout if (predicted * layout).sum() > 0 else predicted
        if weights.sum() > 0:
            node_ms += orphan * weights / weights.sum()
    return node_ms


def _fused_group(model: LoadedModel, features, i: int) -> list[int]:
    """Node ``i`` and, if it was fused, the nodes back to the kernel it was fused into (head first)."""
    group = [i]
    while features[group[0]].key.startswith("fused:"):
        node = model.nodes[group[0]]
        producers = [model.tensors[x].producer for x in node.input if x in model.tensors and model.tensors[x].producer >= 0]
        if not producers:
            break
        group.insert(0, producers[0])
    return group
