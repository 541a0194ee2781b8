"""Build-time verification: every emitted prefix then suffix must reproduce the whole model.

Runs the original file and each emitted pair in onnxruntime on one seeded random input
and compares every graph output. Graph optimisation is off on both sides: the kernels
then match exactly (no fusion differs at a cut), so the tolerance can stay tight, and
sessions are created fastest. Weight prepacking is off too: each session runs once, so
packing the weights for faster later runs would never pay back (the arithmetic is the same).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from nscompile.errors import NscompileError
from nscompile.frontend import LoadedModel

RTOL, ATOL = 1e-4, 1e-5


def random_inputs(model: LoadedModel, seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded random value for each graph input; integer inputs that index a Gather stay in range."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in model.inputs:
        info = model.tensors[name]
        if info.dtype.kind == "f":
            feeds[name] = rng.standard_normal(info.shape).astype(info.dtype)
        elif info.dtype.kind in "iu":
            feeds[name] = rng.integers(0, _index_bound(model, name), info.shape).astype(info.dtype)
        elif info.dtype.kind == "b":
            feeds[name] = rng.integers(0, 2, info.shape).astype(bool)
        else:
            raise NscompileError(f"input '{name}' has dtype {info.dtype}, which nscompile cannot make test data for; pass --no-verify")
    return feeds


def _index_bound(model: LoadedModel, name: str) -> int:
    """Largest safe exclusive bound for an integer input: the smallest table it indexes."""
    bound = 2
    sizes = []
    for c in model.tensors[name].consumers:
        node = model.nodes[c]
        if node.op_type in ("Gather", "GatherElements") and len(node.input) > 1 and node.input[1] == name:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            sizes.append(model.tensors[node.input[0]].shape[axis])
    return min(sizes) if sizes else bound


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session for one run: graph optimisation and weight prepacking off.

    Args:
        path: the ONNX file.
        threads: intra-op threads; 0 lets onnxruntime choose (one per physical core).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(path: Path, values: dict[str, np.ndarray], threads: int) -> dict[str, np.ndarray]:
    """Run one model once on the inputs it names among ``values``; the session is dropped after.

    An input missing from ``values`` is left out: onnxruntime then uses its initializer (an
    IR >= 4 input with a default) or refuses the run.
    """
    sess = session(path, threads)
    outputs = sess.run(None, {i.name: values[i.name] for i in sess.get_inputs() if i.name in values})
    return dict(zip([o.name for o in sess.get_outputs()], outputs))


def _run_pair(build_dir: Path, cut: dict, feeds: dict[str, np.ndarray], threads: int) -> dict[str, np.ndarray]:
    """Graph outputs of one emitted pair: the prefix on the inputs, then the suffix on what it sends."""
    values = dict(feeds)
    if cut["prefix"]:
        values.update(_run(build_dir / cut["prefix"], feeds, threads))
    if cut["suffix"]:
        values.update(_run(build_dir / cut["suffix"], {t["name"]: values[t["name"]] for t in cut["tensors"]}, threads))
    return values


def _compare(cut_id: str, reference: dict[str, np.ndarray], values: dict[str, np.ndarray]) -> float:
    """Largest absolute difference over the graph outputs; raises if one is beyond tolerance."""
    worst = 0.0
    for name, expected in reference.items():
        got = values.get(name)
        if got is None or got.shape != expected.shape or not np.allclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True):
            diff = "missing" if got is None else ("shape " + str(got.shape)) if got.shape != expected.shape else f"max diff {np.abs(got - expected).max():.3g}"
            raise NscompileError(f"verification failed for cut '{cut_id}': output '{name}' differs from the whole model ({diff}); "
                                 "this is a compiler bug, please report it (or pass --no-verify)")
        if expected.size and expected.dtype.kind == "f":
            worst = max(worst, float(np.abs(got.astype(np.float64) - expected).max()))
    return worst


class Verifier:
    """Checks a build's pairs against the whole model, whose run starts at construction.

    The whole model needs only the loaded model, so the compiler makes the verifier right
    after loading: that run then overlaps annotation, planning and emission, and
    :meth:`check` waits on the pairs alone. The whole model and the pairs run as
    independent tasks on two workers, each session on half the cores: at batch 1, two
    runs side by side on one thread each finish sooner than one after the other on two
    threads (ResNet-50's three runs on two busy cores: 1.0 s against 1.9 s, medians), and
    no more than two sessions, so two copies of the weights, are alive at once (the
    sequential loop kept three). Use it as a context manager: leaving waits for the
    runs in flight.
    """

    def __init__(self, model: LoadedModel, seed: int = 0):
        """Start the whole model's run on seeded random inputs.

        Raises:
            NscompileError: an input dtype nscompile cannot make test data for.
        """
        self.feeds = random_inputs(model, seed)
        cores = os.cpu_count() or 1
        workers = 2 if cores >= 2 else 1
        self.threads = max(1, cores // workers)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="nscompile-verify")
        self._whole = self._pool.submit(_run, model.path, self.feeds, self.threads)

    def check(self, build_dir: Path, plan_doc: dict) -> dict[str, float]:
        """Run every lossless cut of ``plan_doc`` (paths relative to ``build_dir``) and compare.

        Lossy cuts (fp16, int8 cut tensors) cannot meet this tolerance; the accuracy gate
        (:mod:`nscompile.accuracy`) measures them instead.

        Returns:
            Lossless cut id -> largest absolute difference seen over all outputs.

        Raises:
            NscompileError: a pair whose outputs differ beyond tolerance (a compiler bug worth reporting).
        """
        lossless = [cut for cut in plan_doc["cuts"] if cut.get("encoding", "fp32") == "fp32"]
        pairs = {cut["id"]: self._pool.submit(_run_pair, build_dir, cut, self.feeds, self.threads) for cut in lossless}
        reference = self._whole.result()
        return {cut_id: _compare(cut_id, reference, pair.result()) for cut_id, pair in pairs.items()}

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def verify_build(model: LoadedModel, build_dir: Path, plan_doc: dict, seed: int = 0) -> dict[str, float]:
    """Check every lossless cut of ``plan_doc`` against the whole model (see :class:`Verifier`).

    Returns:
        Lossless cut id -> largest absolute difference seen over all outputs.

    Raises:
        NscompileError: a pair whose outputs differ beyond tolerance (a compiler bug worth reporting).
    """
    with Verifier(model, seed) as verifier:
        return verifier.check(build_dir, plan_doc)
