"""The backend's public emit API: any closed device set, any encoding, written and verified like a build's cuts."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from helpers import make_model, transformer_block
from nscompile.annotate import annotate
from nscompile.backend import CutEmitter, emit_cut
from nscompile.cost_model import default_profile_path, load_profile
from nscompile.errors import NscompileError
from nscompile.frontend import load_model
from nscompile.partition import is_closed
from nscompile.planner import cut_graph


def _loaded(tmp_path, proto):
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    model = load_model(path)
    ann = annotate(model, load_profile(default_profile_path("device")), load_profile(default_profile_path("server")))
    return model, ann


def _closure(model, seeds) -> np.ndarray:
    """The smallest closed set holding the nodes named in ``seeds``."""
    index = {n.name: i for i, n in enumerate(model.nodes)}
    mask = np.zeros(len(model.nodes), bool)
    stack = [index[s] for s in seeds]
    while stack:
        i = stack.pop()
        if not mask[i]:
            mask[i] = True
            stack += [model.tensors[t].producer for t in model.nodes[i].input
                      if t in model.tensors and model.tensors[t].producer >= 0]
    return mask


def _run_pair(build_dir, entry, feeds) -> dict:
    """Prefix then suffix, fresh sessions at full optimisation, as a device and a server run them."""
    values = dict(feeds)
    for key, inputs in (("prefix", None), ("suffix", [t["name"] for t in entry["tensors"]])):
        if entry[key]:
            sess = ort.InferenceSession(str(build_dir / entry[key]), providers=["CPUExecutionProvider"])
            names = inputs or [i.name for i in sess.get_inputs()]
            values.update(zip([o.name for o in sess.get_outputs()], sess.run(None, {n: values[n] for n in names})))
    return values


def test_an_arbitrary_closed_set_of_a_dag_emits_a_pair_equal_to_the_model(tmp_path):
    """Not a prefix of the topological order and not a cut any bucket picks: the closure of the
    residual branch alone (the side output 'aux' stays on the server)."""
    model, ann = _loaded(tmp_path, make_model())
    mask = _closure(model, ["relu2"])
    order_prefixes = [np.arange(len(mask)) < k for k in range(len(mask) + 1)]
    assert not any((mask == p).all() for p in order_prefixes)
    graph, _ = cut_graph(model)
    assert is_closed(graph, mask)
    out = tmp_path / "build"
    entry = emit_cut(model, ann, mask, "fp32", out)
    assert entry["device_nodes"] == int(mask.sum()) and entry["encoding"] == "fp32"
    assert {t["name"] for t in entry["tensors"]} == {"relu1", "relu2", "scale"}  # a DAG cut: three tensors cross
    rng = np.random.default_rng(7)
    feeds = {"x": rng.standard_normal((1, 8, 32, 32)).astype(np.float32),
             "scale": rng.standard_normal((1, 10)).astype(np.float32)}
    whole = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in whole.get_outputs()], whole.run(None, feeds)))
    got = _run_pair(out, entry, feeds)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def test_every_encoding_of_one_set_shares_its_name_and_lossy_pairs_carry_their_accuracy(tmp_path):
    model, ann = _loaded(tmp_path, transformer_block(seq=4, dim=8, heads=2))
    mask = _closure(model, ["residual1"])
    with CutEmitter(model, ann, tmp_path / "b") as emitter:
        entries = [emitter.emit(mask, enc) for enc in ("fp32", "fp16", "int8")]
        with pytest.raises(NscompileError, match="emitted under this encoding already"):
            emitter.emit(mask, "fp16")
    base = entries[0]["id"]
    assert [e["id"] for e in entries] == [base, f"{base}@fp16", f"{base}@int8"]
    assert entries[0]["accuracy"] is None
    for e in entries[1:]:
        assert e["accuracy"]["passed"] and e["accuracy"]["inputs"] >= 1
        assert e["upload_bytes_by_encoding"][e["encoding"]] == sum(t["bytes"] for t in e["tensors"])
    assert {t["dtype"] for t in entries[1]["tensors"]} == {"float16"}
    for e in entries:
        assert (tmp_path / "b" / e["prefix"]).is_file() and (tmp_path / "b" / e["suffix"]).is_file()


def test_a_set_that_is_not_closed_is_refused_naming_the_missing_producer(tmp_path):
    model, ann = _loaded(tmp_path, make_model())
    index = {n.name: i for i, n in enumerate(model.nodes)}
    mask = _closure(model, ["relu2"])
    mask[index["conv2"]] = False  # relu2 stays, the conv making its input goes
    out = tmp_path / "b"
    with pytest.raises(NscompileError, match="not closed under producers: node 'relu2' is in it but 'conv2'"):
        emit_cut(model, ann, mask, "fp32", out)
    assert not list((out / "cloud").iterdir()) and not list((out / "device").glob("prefix_*"))


def test_bad_masks_and_encodings_are_refused_with_what_to_do(tmp_path):
    model, ann = _loaded(tmp_path, make_model())
    n = len(model.nodes)
    with CutEmitter(model, ann, tmp_path / "b") as emitter:
        with pytest.raises(NscompileError, match=f"has {n} nodes"):
            emitter.emit(np.ones(n + 1, bool))
        with pytest.raises(NscompileError, match="changes nothing on the wire; emit it as fp32"):
            emitter.emit(np.zeros(n, bool), "fp16")  # all-cloud uploads the raw inputs, which travel as they are
        with pytest.raises(NscompileError, match="encoding 'bf16' is not usable"):
            emitter.emit(np.zeros(n, bool), "bf16")
        first = emitter.emit(np.zeros(n, bool))
        with pytest.raises(NscompileError, match=f"cut id '{first['id']}' cannot be used: it is taken"):
            emitter.emit(np.ones(n, bool), cut_id=first["id"])


def test_emitting_into_a_build_keeps_its_cuts_and_ids(tmp_path):
    """Into an existing build: its weights file is reused and its ids are not given out again."""
    from nscompile.compiler import build
    from nscompile.planner import GridSpec

    path = tmp_path / "m.onnx"
    onnx.save(make_model(), path)
    result = build(path, tmp_path / "build", grid=GridSpec.parse("0.1:1000:8", "1"), report=False, include_all_cloud=True)
    ids = {c["id"] for c in result.plan["cuts"]}
    model = load_model(path)
    ann = annotate(model, load_profile(default_profile_path("device")), load_profile(default_profile_path("server")))
    weights = (tmp_path / "build" / "device" / "weights.bin").read_bytes()
    entry = emit_cut(model, ann, np.zeros(len(model.nodes), bool), "fp32", tmp_path / "build")
    assert entry["id"] not in ids and entry["id"].startswith("input")  # all-cloud is in the build already as 'input'
    assert (tmp_path / "build" / "device" / "weights.bin").read_bytes() == weights
    assert {c["id"] for c in json.loads((tmp_path / "build" / "plan.json").read_text())["cuts"]} == ids  # plan.json untouched


def test_linked_suffix_weights_share_the_device_file(tmp_path):
    model, ann = _loaded(tmp_path, make_model())
    out = tmp_path / "b"
    entry = emit_cut(model, ann, _closure(model, ["relu1"]), "fp32", out, link_weights=True)
    data = out / entry["suffix"].replace("model.onnx", "model.onnx.data")
    assert data.stat().st_ino == (out / "device" / "weights.bin").stat().st_ino
    feeds = {"x": np.ones((1, 8, 32, 32), np.float32), "scale": np.ones((1, 10), np.float32)}
    whole = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    got = _run_pair(out, entry, feeds)
    for name, value in zip([o.name for o in whole.get_outputs()], whole.run(None, feeds)):
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def test_emit_all_checks_many_pairs_and_reports_each_failure_in_place(tmp_path):
    model, ann = _loaded(tmp_path, transformer_block(seq=4, dim=8, heads=2))
    n = len(model.nodes)
    good = _closure(model, ["residual1"])
    broken = good.copy()
    broken[int(np.flatnonzero(good)[0])] = False  # its first node's consumers stay: not closed
    with CutEmitter(model, ann, tmp_path / "b") as emitter:
        out = emitter.emit_all([(good, "fp32"), (broken, "fp32"), (good, "int8"), (np.zeros(n, bool), "fp16"),
                                (np.ones(n, bool), "fp32")])
    assert [type(o).__name__ for o in out] == ["dict", "NscompileError", "dict", "NscompileError", "dict"]
    assert out[2]["accuracy"]["passed"] and out[0]["id"] + "@int8" == out[2]["id"]
    assert "not closed under producers" in str(out[1]) and "changes nothing" in str(out[3])
