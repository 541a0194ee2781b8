"""``nscompile profile --web``: the browser timer, the per-byte copy cost, the CLI's checks.

The full browser profile takes minutes (its figures are in bench/ACCURACY.md); here the
pieces: the fixed-cost fit recovers a known per-byte copy cost, the page times models in
the right order on its main-thread CPU clock, and bad flag combinations are one-line errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import run_cli
from js_support import need


def test_fixed_costs_recover_a_per_byte_copy_cost():
    """A runtime whose run costs 10 us + 2 us per kernel + 0.2 ms per MB of graph inputs and outputs."""
    from nscompile.profiler import _fixed_costs, _io_bytes

    def timer(model, feeds, **_):
        return 0.010 + 0.002 * len(model.graph.node) + 2e-7 * _io_bytes(model, feeds)

    costs = _fixed_costs(timer, io_copies=True)
    assert costs.byte == pytest.approx(2e-7, rel=1e-6)
    assert costs.node == pytest.approx(0.002, rel=1e-6)
    assert _fixed_costs(timer).byte == 0.0  # native onnxruntime binds its tensors: nothing to copy


def _conv(channels: int, hw: int):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((channels, channels, 3, 3)).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, channels, hw, hw]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph([node], "c", vi[:1], vi[1:], [w]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {"x": rng.standard_normal((1, channels, hw, hw)).astype(np.float32)}


@pytest.mark.browser
def test_browser_timer_orders_models_by_work():
    need(in_browser=True)
    from nscompile.profiler.web import BrowserTimer

    with BrowserTimer() as timer:
        assert timer.clock == "cpu" and timer.versions["ort"] and timer.versions["crossOriginIsolated"]
        small = timer(*_conv(16, 28), budget_s=0.1)
        big = timer(*_conv(64, 28), budget_s=0.1)  # 16x the MACs
        assert 0 < small < big and big / small > 4, (small, big)
        timer.clock = "wall"
        assert timer(*_conv(16, 28), budget_s=0.1) > 0


def test_web_refuses_other_devices():
    r = run_cli("profile", "--web", "--name", "b", "--threads", "2", "-o", "/tmp/nscompile-never-written.json")
    assert r.returncode == 2 and "--web profiles a browser device" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
