"""The device side: run a prefix here, the suffix on a server, fall back when it fails.

Imports numpy, onnxruntime and httpx only (no onnx, onnx-graphsurgeon, scikit-learn or
typer), so a device can install just those and copy this package.

    from nscompile.runtime import SplitRunner
    runner = SplitRunner("build/alexnet/device", "http://server:8000")
    outputs, record = runner.run({"data": x}, with_record=True)
"""

from nscompile.runtime.plan import Cut, Plan, TensorSpec, load_plan
from nscompile.runtime.runner import RunRecord, SplitRunner

__all__ = ["Cut", "Plan", "RunRecord", "SplitRunner", "TensorSpec", "load_plan"]
