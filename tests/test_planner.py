"""Planner: objective weights match DESIGN.md's formulas; tables and breakpoints match direct solves."""

from __future__ import annotations

import bisect
import dataclasses

import numpy as np
import onnx
import pytest

from helpers import FIXED_PHONE_PROFILE, transformer_block
from nscompile.annotate import annotate
from nscompile.cost_model import default_profile_path, load_profile
from nscompile.frontend import load_model
from nscompile.partition import download_set, evaluate, solve, upload_set
from nscompile.planner import GridSpec, cut_graph, objective_weights, plan, tensor_wire_bytes


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    path = tmp_path_factory.mktemp("planner") / "block.onnx"
    onnx.save(transformer_block(), path)
    model = load_model(path)
    ann = annotate(model, load_profile(default_profile_path("device")), load_profile(default_profile_path("server")))
    return model, ann


def _random_closed_set(model, rng):
    mask = np.zeros(len(model.nodes), bool)
    for i in range(len(model.nodes)):  # topological order: a node may join once its producers are in
        producers = [model.tensors[t].producer for t in model.nodes[i].input if t in model.tensors and model.tensors[t].producer >= 0]
        if all(mask[p] for p in producers) and rng.random() < 0.6:
            mask[i] = True
    return mask


@pytest.mark.parametrize("downlink", [None, 3.0])
def test_objective_weights_match_design_formulas(block, downlink):
    model, ann = block
    graph, names = cut_graph(model)
    grid = GridSpec.parse("1:100:4", "1", rtt_ms=12.0, downlink_mbps=downlink, radio="lte")
    wire = tensor_wire_bytes(model, names, None)
    rng = np.random.default_rng(0)
    radio = ann.device.radio("lte")
    for _ in range(30):
        S = _random_closed_set(model, rng)
        up_bytes = wire[upload_set(graph, S)].sum()
        down_bytes = wire[download_set(graph, S)].sum()
        remote = not S.all()
        for bw, load in ((2.5, 1.0), (40.0, 3.0)):
            down_mbps = downlink or bw
            tx_ms, rx_ms = up_bytes * 8 / (bw * 1e3), down_bytes * 8 / (down_mbps * 1e3)
            cloud_ms = load * ann.cloud_ms[~S].sum()
            latency = ann.device_ms[S].sum() + cloud_ms + (tx_ms + rx_ms + 12.0) * remote
            energy = ((ann.device_ms * ann.device_power_w)[S].sum() + tx_ms * (radio.up_alpha_w_per_mbps * bw + radio.up_beta_w)
                      + (cloud_ms + 12.0 * remote) * ann.device.idle_power_w
                      + rx_ms * (radio.down_alpha_w_per_mbps * down_mbps + radio.down_beta_w))
            for objective, expected in (("latency", latency), ("energy", energy)):
                base, slope = objective_weights(objective, ann, graph, wire, load, grid)
                got = evaluate(graph, base, S) + evaluate(graph, slope, S) / bw
                assert got == pytest.approx(expected, rel=1e-9, abs=1e-9), objective


def test_table_and_breakpoints_agree_with_direct_solves(random_light):
    model = load_model(random_light("squeezenet"))  # activations shrink layer by layer: many cuts
    profiled = annotate(model, load_profile(default_profile_path("device")), load_profile(default_profile_path("server")))
    # Synthetic costs (server ~10x faster, uneven layers) give many breakpoints to check.
    rng = np.random.default_rng(3)
    device_ms = rng.uniform(0.5, 5.0, len(model.nodes))
    ann = dataclasses.replace(profiled, device_ms=device_ms, cloud_ms=device_ms * rng.uniform(0.05, 0.2, len(model.nodes)))
    grid = GridSpec.parse("0.01:10000:40", "1,3", "1,2.5", rtt_ms=2.0)
    solved = plan(model, ann, grid, "latency")
    graph, names = cut_graph(model)
    wire = tensor_wire_bytes(model, names, None)
    by_id = {c.id: c for c in solved.cuts}
    assert solved.cuts[-1].is_all_device and solved.fallback == solved.cuts[-1].id
    bw = np.array(grid.bandwidth_mbps)
    centres = np.append(np.sqrt(bw[:-1] * bw[1:]), bw[-1])
    for objective in ("latency", "energy"):
        for di, kd in enumerate(grid.device_load):
            for li, load in enumerate(grid.load):
                base, slope = objective_weights(objective, ann, graph, wire, load, grid, kd)
                row = solved.device_tables[objective][di][li]
                breaks = solved.device_breakpoints[objective][di][li]
                starts = [b for b, _ in breaks]
                assert starts[0] == 0.0 and starts == sorted(starts)
                for b, centre in enumerate(centres):
                    weights = base.combine(slope, 1.0 / centre)
                    best = solve(graph, weights).cost
                    chosen = evaluate(graph, weights, by_id[row[b]].device)
                    assert chosen == pytest.approx(best, rel=1e-6, abs=1e-9), (objective, kd, load, centre)
                    # The exact breakpoints name the same optimum (ties aside).
                    via_breaks = breaks[bisect.bisect_right(starts, centre) - 1][1]
                    assert evaluate(graph, weights, by_id[via_breaks].device) == pytest.approx(best, rel=1e-6, abs=1e-9)
    assert solved.tables == {o: levels[0] for o, levels in solved.device_tables.items()}  # the slice at Kd = 1
    assert len({c for row in solved.tables["latency"] for c in row}) >= 3, "the synthetic costs should give several cuts"
    cells = len(grid.device_load) * len(grid.load) * len(bw)
    assert solved.stats["min_cuts"] < 2 * cells, "the envelope must need far fewer cuts than buckets"


def test_a_slower_device_moves_work_to_the_server(random_light):
    """For every condition, the device's share of the chosen cut never grows as Kd rises (an
    exchange argument: optimal at Kd1 < Kd2, the two sets' device costs D1 >= D2), and on a
    phone-class device it does shrink somewhere."""
    model = load_model(random_light("squeezenet"))
    phone = load_profile(FIXED_PHONE_PROFILE)
    ann = annotate(model, phone, load_profile(default_profile_path("server")))
    grid = GridSpec.parse("0.1:1000:24", "1,4", "1,1.5,2,4,8")
    solved = plan(model, ann, grid, encodings=("fp32", "fp16"))
    by_id = {c.id: c for c in solved.cuts}

    def device_cost(objective, cut_id):  # what the device spends on the cut, encoding included
        cut = by_id[cut_id]
        return cut.device_ms if objective == "latency" else cut.device_compute_mj

    moved = 0
    for objective, levels in solved.device_tables.items():
        for li in range(len(grid.load)):
            for b in range(len(grid.bandwidth_mbps)):
                costs = [device_cost(objective, levels[di][li][b]) for di in range(len(grid.device_load))]
                assert all(a >= c - 1e-9 for a, c in zip(costs, costs[1:])), (objective, li, b, costs)
                moved += costs[-1] < costs[0]
    assert moved > 0, "no condition moved work to the server: the test checks nothing"


def test_grid_parsing():
    assert GridSpec.parse("3G,LTE,wifi").bandwidth_mbps == (1.1, 5.85, 18.88)
    grid = GridSpec.parse("0.1:1000:5", "4,1")
    assert np.allclose(grid.bandwidth_mbps, [0.1, 1, 10, 100, 1000]) and grid.load == (1.0, 4.0)
    assert grid.device_load == (1.0, 1.5, 2.0, 4.0) and grid.profiled_level == 0
    assert GridSpec.parse(device_load="4,2").device_load == (1.0, 2.0, 4.0)  # 1, as profiled, is always there
    from nscompile.errors import NscompileError

    for bad in ("0,1", "x", "-2", "inf"):
        with pytest.raises(NscompileError, match="--device-load"):
            GridSpec.parse(device_load=bad)


def test_cuts_are_named_after_layers_as_in_the_paper(tmp_path):
    """A cut behind AlexNet's flatten is 'pool5', as the paper names it; other cuts keep their layer."""
    from nscompile import zoo
    from nscompile.planner import _layer_of

    onnx.save(zoo.build_model("alexnet", size="small"), tmp_path / "alexnet.onnx")
    model = load_model(tmp_path / "alexnet.onnx")
    index = {n.name: i for i, n in enumerate(model.nodes)}
    flatten = next(i for i, n in enumerate(model.nodes) if n.op_type == "Flatten")
    assert model.nodes[_layer_of(model, flatten)].name == "pool5"
    assert _layer_of(model, index["conv1"]) == index["conv1"]
