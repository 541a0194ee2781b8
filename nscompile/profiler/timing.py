"""Timing ONNX models with onnxruntime the way a deployment runs them.

Sessions use the deployment's execution provider and intra-op thread count, full graph
optimisation (so fusions happen as in production) and sequential execution. Inputs and
outputs are bound once with IO binding, so the measured time is the kernels' (plus the
fixed per-run overhead, measured separately and subtracted), not numpy copies.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from nscompile.errors import NscompileError

__all__ = ["PROVIDERS", "make_session", "pick_clock", "time_session", "time_model"]

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def make_session(model_bytes: bytes, threads: int, provider: str = "cpu"):
    """An onnxruntime session configured like the deployment.

    Args:
        model_bytes: Serialized ONNX model.
        threads: intra-op threads (0 = onnxruntime's default, all cores).
        provider: ``"cpu"`` or ``"cuda"``.

    Returns:
        The session.

    Raises:
        NscompileError: unknown provider, or the provider is not available here.
    """
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise NscompileError(f"unknown provider '{provider}'; use one of {', '.join(PROVIDERS)}")
    ep = PROVIDERS[provider]
    if ep not in ort.get_available_providers():
        raise NscompileError(
            f"onnxruntime here has no {ep}; install onnxruntime-gpu (pip install 'nscompile[gpu]') "
            "or profile with --provider cpu"
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    providers = [ep] if provider == "cpu" else [ep, "CPUExecutionProvider"]
    return ort.InferenceSession(model_bytes, so, providers=providers)


def pick_clock(threads: int, provider: str) -> str:
    """The clock to time with: this thread's CPU time where it measures the work.

    With one intra-op thread on the CPU provider all work happens on the calling thread,
    so its CPU time is the run's latency on an otherwise idle core, unaffected by other
    processes time-slicing the machine (why: shared CI and development machines). Under a
    CPU quota it is still the work, free of the throttling's noise (wall time under a 25%
    quota varies by up to 70% from one measurement to the next); the profiler measures
    the quota's slowdown separately. With more threads or a GPU it is wall time.
    """
    return "cpu" if threads == 1 and provider == "cpu" else "wall"


def time_session(sess, feeds: dict[str, np.ndarray], budget_s: float = 0.25, min_batch_s: float = 0.004,
                 max_repeats: int = 15, min_repeats: int = 5, device: str = "cpu", clock: str = "wall",
                 stat: str | None = None) -> float:
    """Median milliseconds per run of a session.

    Runs are grouped in batches of at least ``min_batch_s`` (so timer resolution and, under
    a CPU quota, throttling periods average out); the result is the median batch mean.

    Args:
        sess: An onnxruntime session.
        feeds: Input name -> array.
        budget_s: Rough time budget for the measurement.
        min_batch_s: Minimum duration of one timed batch.
        max_repeats: Upper bound on batches.
        min_repeats: Lower bound on batches.
        device: ``"cpu"`` or ``"cuda"`` (where outputs are bound).
        clock: ``"wall"`` (perf_counter) or ``"cpu"`` (this thread's CPU time, see
            :func:`pick_clock`).
        stat: ``"median"`` or ``"min"`` of the batch means. Default: the median on the CPU
            clock; the minimum on the wall clock, where other processes only ever add
            time (the least disturbed batch is the best estimate of the device's speed).

    Returns:
        Milliseconds per run.
    """
    import onnxruntime as ort

    io = sess.io_binding()
    for name, arr in feeds.items():
        io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), device, 0))
    for out in sess.get_outputs():
        io.bind_output(out.name, device)
    run = sess.run_with_iobinding
    now = time.thread_time if clock == "cpu" else time.perf_counter
    for _ in range(2):  # warm-up: first runs allocate and pick kernels
        run(io)
    t0 = now()
    run(io)
    one = max(now() - t0, 1e-6)
    batch = max(1, int(min_batch_s / one + 0.5))
    repeats = int(min(max(budget_s / (batch * one), min_repeats), max_repeats))
    means = []
    for _ in range(repeats):
        t0 = now()
        for _ in range(batch):
            run(io)
        means.append((now() - t0) / batch)
    stat = stat or ("median" if clock == "cpu" else "min")
    return 1e3 * (min(means) if stat == "min" else statistics.median(means))


def time_model(model, feeds: dict[str, np.ndarray], threads: int, provider: str = "cpu", clock: str = "wall",
               **kw) -> float:
    """Median milliseconds per run of an ONNX model (see :func:`time_session`)."""
    sess = make_session(model.SerializeToString(), threads, provider)
    return time_session(sess, feeds, device="cuda" if provider == "cuda" else "cpu", clock=clock, **kw)
