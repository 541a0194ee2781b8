"""The oracle's candidates: every layer boundary of a chain, thinned topological prefixes of a DAG, encodings, emitted cuts."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from helpers import layered_dag, make_model, random_dag
from nscompile.frontend import load_model
from nscompile.partition import CutGraph, is_closed, upload_set
from nscompile.planner import cut_graph
from nscompile.testbed.candidates import MAX_CROSSING, MAX_DAG_SETS, crossings, device_sets, oracle_candidates


def _chain_model(layers: int = 7) -> onnx.ModelProto:
    """conv, relu, conv, relu, ..., flatten, gemm: one tensor crosses every boundary."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        if i % 2 == 0:
            inits.append(numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), f"w{i}"))
            nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"t{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"))
        else:
            nodes.append(helper.make_node("Relu", [x], [f"t{i}"], name=f"relu{i}"))
        x = f"t{i}"
    inits.append(numpy_helper.from_array(rng.standard_normal((256, 10)).astype(np.float32), "wf"))
    nodes += [helper.make_node("Flatten", [x], ["flat"], name="flat"), helper.make_node("Gemm", ["flat", "wf"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _load(tmp_path, proto):
    onnx.save(proto, tmp_path / "m.onnx")
    return load_model(tmp_path / "m.onnx")


def test_a_chain_gives_every_layer_boundary(tmp_path):
    model = _load(tmp_path, _chain_model())
    graph, names = cut_graph(model)
    kind, sets = device_sets(graph)
    n = len(model.nodes)
    assert kind == "chain" and len(sets) == n + 1  # all-cloud, one per boundary between nodes, all-device
    assert [int(m.sum()) for m in sets] == list(range(n + 1))
    assert all(len(upload_set(graph, m)) == 1 for m in sets[:-1]) and len(upload_set(graph, sets[-1])) == 0
    kind, cands = oracle_candidates(model, graph, names, ("fp32", "fp16", "int8"), {})
    # Lossy variants only where a float32 tensor made on the device crosses: not all-cloud (the raw
    # input travels as it is), not all-device (nothing crosses).
    assert len(cands) == (n + 1) + 2 * (n - 1)
    assert {c.encoding for c in cands if not c.mask.any() or c.mask.all()} == {"fp32"}


def test_crossings_count_each_tensor_once_and_graph_inputs_too(tmp_path):
    model = _load(tmp_path, make_model())  # two inputs ('scale' read by the last Mul), a side output, a residual
    graph, _ = cut_graph(model)
    cross = crossings(graph)
    for k in range(len(model.nodes) + 1):
        assert cross[k] == len(upload_set(graph, np.arange(len(model.nodes)) < k)), k


def test_a_dag_gives_at_most_24_thinned_prefixes_each_closed_and_narrow():
    rng = np.random.default_rng(3)
    graph = layered_dag(rng, 400, 2)
    cross = crossings(graph)
    qualifying = [k for k in range(1, graph.n_nodes) if cross[k] <= MAX_CROSSING]
    assert len(qualifying) > 3 * MAX_DAG_SETS  # so the thinning has work to do
    kind, sets = device_sets(graph)
    assert kind == "dag" and len(sets) == MAX_DAG_SETS
    assert not sets[0].any() and sets[-1].all()
    ks = [int(m.sum()) for m in sets]
    assert ks == sorted(set(ks))
    assert all(cross[k] <= MAX_CROSSING for k in ks[1:-1])
    positions = [([0] + qualifying + [graph.n_nodes]).index(k) for k in ks]  # evenly spread over the qualifying list
    gaps = np.diff(positions)
    assert gaps.max() - gaps.min() <= 1
    assert all(is_closed(graph, m) for m in sets)


def test_small_dags_keep_every_narrow_prefix_and_all_sets_are_closed():
    rng = np.random.default_rng(5)
    for _ in range(20):
        graph = random_dag(rng, int(rng.integers(3, 30)))
        kind, sets = device_sets(graph)
        cross = crossings(graph)
        ks = [int(m.sum()) for m in sets]
        if kind == "dag":
            want = [0] + [k for k in range(1, graph.n_nodes) if cross[k] <= MAX_CROSSING] + [graph.n_nodes]
            assert ks == (want if len(want) <= MAX_DAG_SETS else ks) and len(ks) <= MAX_DAG_SETS
        assert all(is_closed(graph, m) for m in sets)


def test_emitted_cuts_keep_their_ids_and_are_added_when_they_are_no_prefix(tmp_path):
    model = _load(tmp_path, make_model())
    graph, names = cut_graph(model)
    n = len(model.nodes)
    _, sets = device_sets(graph)
    index = {node.name: i for i, node in enumerate(model.nodes)}
    branch = np.zeros(n, bool)  # conv1, relu1, conv2, relu2: closed, and no prefix of the order (gap_aux is left out)
    branch[[index[k] for k in ("conv1", "relu1", "conv2", "relu2")]] = True
    assert not any((branch == m).all() for m in sets)
    emitted = {"prob": (np.ones(n, bool), "fp32"), "relu2": (branch, "fp16")}
    _, cands = oracle_candidates(model, graph, names, ("fp32", "fp16"), emitted)
    by_id = {c.cut_id: c for c in cands if c.cut_id}
    assert set(by_id) == {"prob", "relu2"} and by_id["relu2"].source == "emitted"
    assert by_id["prob"].source == "prefix"  # all-device is also a prefix: one candidate, the build's id
    assert len({c.key for c in cands}) == len(cands)
    assert all(is_closed(graph, c.mask) for c in cands)


def test_every_candidate_of_a_real_dag_is_closed(random_light, tmp_path):
    model = load_model(random_light("resnet50"))
    graph, names = cut_graph(model)
    kind, cands = oracle_candidates(model, graph, names, ("fp32", "fp16", "int8"), {})
    assert kind == "dag" and len({c.mask.tobytes() for c in cands}) <= MAX_DAG_SETS
    assert all(is_closed(graph, c.mask) for c in cands)
    assert all(len(upload_set(graph, c.mask)) <= MAX_CROSSING for c in cands if c.mask.any())


def test_cut_graph_nodes_are_in_topological_order(random_light):
    """device_sets relies on it: every consumer comes after its producer."""
    model = load_model(random_light("inception_v1"))
    graph, _ = cut_graph(model)
    assert isinstance(graph, CutGraph)
    assert all(c > graph.producers[t] for t in range(graph.n_tensors) for c in graph.consumers[t])
