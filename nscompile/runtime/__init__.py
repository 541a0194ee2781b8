"""The device side: run a prefix here, the suffix on a server, fall back when it fails.

Imports numpy, onnxruntime and httpx only (no onnx, scikit-learn or
typer), so a device can install just those and copy this package.

    from nscompile.runtime import SplitRunner
    runner = SplitRunner("build/alexnet/device", "http://server:8000")
    outputs, record = runner.run({"data": x}, with_record=True)
    runner.policy = slo(latency_ms=120)   # least energy within 120 ms (predicted)

The names below are imported on first use: the compiler and the server import
``nscompile.runtime.contract`` and ``nscompile.runtime.protocol`` without paying for
httpx and onnxruntime.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Cut": "plan",
    "Plan": "plan",
    "TensorSpec": "plan",
    "load_plan": "plan",
    "RunRecord": "policy",
    "ParetoPoint": "plan",
    "Policy": "policies",
    "as_policy": "policies",
    "budget": "policies",
    "slo": "policies",
    "weighted": "policies",
    "SplitRunner": "runner",
    "make_client": "transport",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
