"""Frontend: loading, checking, pinning shapes, folding constants, naming nodes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from nscompile.errors import NscompileError
from nscompile.examples import LIGHT_MODELS, light_model_path
from nscompile.frontend import load_model, parse_input_shapes


def _save(tmp_path, text: str, name: str = "m.onnx"):
    path = tmp_path / name
    onnx.save(onnx.parser.parse_model(text), path)
    return path


DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 2] y) <float[4, 2] w = {1., 2., 3., 4., 5., 6., 7., 8.}>
{
  h = MatMul(x, w)
  y = Relu(h)
}
"""


def test_dynamic_dimension_needs_input_shape(tmp_path):
    path = _save(tmp_path, DYNAMIC)
    with pytest.raises(NscompileError, match=r"input 'x' has a dynamic dimension 'N'.*--input-shape x=Nx4"):
        load_model(path)
    loaded = load_model(path, parse_input_shapes(["x=3x4"]))
    assert loaded.tensors["h"].shape == (3, 2)
    assert loaded.tensors["y"].shape == (3, 2) and loaded.tensors["y"].is_output


@pytest.mark.parametrize("spec", ["x", "x=", "x=3xa", "x=0x4", "=3x4"])
def test_bad_input_shape_spec(spec):
    with pytest.raises(NscompileError, match="--input-shape"):
        parse_input_shapes([spec])


def test_input_shape_must_name_an_input_and_match_rank(tmp_path):
    path = _save(tmp_path, DYNAMIC)
    with pytest.raises(NscompileError, match="model's inputs are"):
        load_model(path, {"nope": (1, 4)})
    with pytest.raises(NscompileError, match="gives 'x' 3 dims but the model has 2"):
        load_model(path, {"x": (1, 4, 1)})
    with pytest.raises(NscompileError, match="the model fixes it to 4"):
        load_model(path, {"x": (1, 5)})


FOLDABLE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 8] x) => (float[2, 16] y)
{
  shape = Constant<value = int64[2] {8, 16}>()
  w = ConstantOfShape<value = float[1] {0.5}>(shape)
  two = Constant<value_float = 2.0>()
  w2 = Mul(w, two)
  h = MatMul(x, w2)
  s = Shape(h)
  y = Reshape(h, s)
}
"""


def test_constants_and_shape_queries_fold_into_initializers(tmp_path):
    loaded = load_model(_save(tmp_path, FOLDABLE))
    assert [n.op_type for n in loaded.nodes] == ["MatMul", "Reshape"]
    w2 = loaded.weights.arrays.get("w2")
    if w2 is None:  # small enough to stay inline
        w2 = numpy_helper.to_array(next(t for t in loaded.model.graph.initializer if t.name == "w2"))
    np.testing.assert_array_equal(w2, np.full((8, 16), 1.0, np.float32))
    shape = next(t for t in loaded.model.graph.initializer if t.name == "s")
    np.testing.assert_array_equal(numpy_helper.to_array(shape), [2, 16])


def test_unnamed_and_duplicate_nodes_get_unique_names(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"], name="dup"),
             helper.make_node("Relu", ["b"], ["y"], name="dup")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 4])], [helper.make_tensor_value_info("y", 1, [1, 4])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    names = [n.name for n in load_model(path).nodes]
    assert len(set(names)) == 3 and all(names)
    assert names[0] == "Relu_a"


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_models_load_as_shipped(name):
    loaded = load_model(light_model_path(name))
    assert loaded.model.ir_version >= 4
    assert not any(n.op_type == "ConstantOfShape" for n in loaded.nodes), "weights must be folded"
    assert all(not loaded.tensors[i].is_constant for i in loaded.inputs)
    assert loaded.tensors[loaded.outputs[0]].shape[:2] == (1, 1000)
    assert loaded.weights.nbytes() > 1e6


def test_external_data_is_memory_mapped(tmp_path):
    weight = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", 1, [1, 64])], [helper.make_tensor_value_info("y", 1, [1, 32])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    loaded = load_model(tmp_path / "ext.onnx")
    assert isinstance(loaded.weights.arrays["w"], np.memmap)
    np.testing.assert_array_equal(loaded.weights.arrays["w"], weight)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(NscompileError, match="ext.data', which does not exist"):
        load_model(tmp_path / "ext.onnx")


def _matmul_model(weight: np.ndarray, ir_version: int = 8, opset: int = 17, op: str = "MatMul") -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", 1, [1, weight.shape[0]])],
                              [helper.make_tensor_value_info("y", 1, [1, weight.shape[1]])],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def test_checker_still_sees_a_model_whose_weights_were_taken_out(tmp_path):
    weight = np.ones((64, 32), np.float32)  # 8 KB: stored, so checked as a graph input
    bad_op = _matmul_model(weight, op="MatMulTypo")
    onnx.save(bad_op, tmp_path / "op.onnx")
    with pytest.raises(NscompileError, match="fails the ONNX checker.*MatMulTypo"):
        load_model(tmp_path / "op.onnx")
    dangling = _matmul_model(weight)
    dangling.graph.node[0].input[1] = "nowhere"
    onnx.save(dangling, tmp_path / "dangling.onnx")
    with pytest.raises(NscompileError, match="fails the ONNX checker.*nowhere"):
        load_model(tmp_path / "dangling.onnx")
    # IR 3 lists the initializer among the inputs too; the light view must not list it twice.
    ir3 = _matmul_model(weight, ir_version=3, opset=9)
    ir3.graph.input.append(helper.make_tensor_value_info("w", 1, [64, 32]))
    onnx.save(ir3, tmp_path / "ir3.onnx")
    assert load_model(tmp_path / "ir3.onnx").weights.arrays["w"].shape == (64, 32)


def test_damaged_inline_payload_is_a_user_error(tmp_path):
    model = _matmul_model(np.ones((64, 32), np.float32))
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    onnx.save(model, tmp_path / "short.onnx")
    with pytest.raises(NscompileError, match="initializer 'w' .*damaged payload"):
        load_model(tmp_path / "short.onnx")
    both = _matmul_model(np.ones((64, 32), np.float32))
    both.graph.initializer[0].float_data.extend([1.0] * 64 * 32)
    onnx.save(both, tmp_path / "both.onnx")
    with pytest.raises(NscompileError, match="initializer 'w' .*2 value fields"):
        load_model(tmp_path / "both.onnx")


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    model = _matmul_model(np.ones((64, 32), np.float32))
    (tmp_path / "models").mkdir()
    onnx.save(model, tmp_path / "models" / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    (tmp_path / "models" / "m.data").rename(tmp_path / "outside.data")
    moved = onnx.load(tmp_path / "models" / "m.onnx", load_external_data=False)  # onnx.save refuses to write it
    next(e for e in moved.graph.initializer[0].external_data if e.key == "location").value = "../outside.data"
    (tmp_path / "models" / "m.onnx").write_bytes(moved.SerializeToString())
    with pytest.raises(NscompileError, match="fails the ONNX checker"):
        load_model(tmp_path / "models" / "m.onnx")
