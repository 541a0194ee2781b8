"""Build-time verification: every emitted prefix then suffix must reproduce the whole model.

Runs the original file and each emitted pair in onnxruntime on one seeded random input
and compares every graph output. Graph optimisation is off on both sides: the kernels
then match exactly (no fusion differs at a cut), so the tolerance can stay tight, and
sessions are created fastest.
"""

from __future__ import annotations

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


def session(path: Path) -> ort.InferenceSession:
    """An onnxruntime CPU session with graph optimisation off."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_build(model: LoadedModel, build_dir: Path, plan_doc: dict, seed: int = 0) -> dict[str, float]:
    """Check every lossless cut of ``plan_doc`` against the whole model.

    Lossy cuts (fp16, int8 cut tensors) cannot meet this tolerance; the accuracy gate
    (:mod:`nscompile.accuracy`) measures them instead.

    Returns:
        Lossless cut id -> largest absolute difference seen over all outputs.

    Raises:
        NscompileError: a pair whose outputs differ beyond tolerance (a compiler bug worth reporting).
    """
    feeds = random_inputs(model, seed)
    whole = session(model.path)
    names = [o.name for o in whole.get_outputs()]
    reference = dict(zip(names, whole.run(None, feeds)))
    errors = {}
    for cut in plan_doc["cuts"]:
        if cut.get("encoding", "fp32") != "fp32":
            continue
        values = dict(feeds)
        if cut["prefix"]:
            prefix = session(build_dir / cut["prefix"])
            values.update(zip([o.name for o in prefix.get_outputs()], prefix.run(None, {i.name: feeds[i.name] for i in prefix.get_inputs()})))
        if cut["suffix"]:
            suffix = session(build_dir / cut["suffix"])
            values.update(zip([o.name for o in suffix.get_outputs()], suffix.run(None, {t["name"]: values[t["name"]] for t in cut["tensors"]})))
        worst = 0.0
        for name, expected in reference.items():
            got = values.get(name)
            if got is None or got.shape != expected.shape or not np.allclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True):
                diff = "missing" if got is None else ("shape " + str(got.shape)) if got.shape != expected.shape else f"max diff {np.abs(got - expected).max():.3g}"
                raise NscompileError(f"verification failed for cut '{cut['id']}': output '{name}' differs from the whole model ({diff}); "
                                     "this is a compiler bug, please report it (or pass --no-verify)")
            if expected.size and expected.dtype.kind == "f":
                worst = max(worst, float(np.abs(got.astype(np.float64) - expected).max()))
        errors[cut["id"]] = worst
    return errors
