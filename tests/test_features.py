"""Features and fusion keys of small hand-written graphs."""

import numpy as np
import onnx
import onnx.parser
import pytest

from nscompile.features import NodeFeatures, graph_features, static_shapes


def _feats(text, **kwargs):
    # The text format declares weights as typed value_info without data: treat every
    # tensor that is neither a graph input nor produced by a node as a weight.
    model = onnx.parser.parse_model(text)
    shapes = static_shapes(model)
    produced = {o for n in model.graph.node for o in n.output}
    inputs = {i.name for i in model.graph.input}
    consts = {v.name for v in model.graph.value_info if v.name not in produced | inputs}
    return graph_features(model.graph, shapes, consts, **kwargs)


CONV_BN_RELU = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,16,32,32] x) => (float[1,32,16,16] y) <float[32,16,3,3] w, float[32] b, float[32] s,
                                                float[32] bb, float[32] m, float[32] v> {
  c = Conv <kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1]> (x, w, b)
  n = BatchNormalization (c, s, bb, m, v)
  y = Relu (n)
}
"""


def test_conv_macs_bytes_and_paper_feature():
    f = _feats(CONV_BN_RELU)
    conv = f[0]
    assert conv.key == "Conv"
    assert conv.values["macs"] == 32 * 16 * 16 * 16 * 9
    assert conv.values["flops"] == 2 * conv.values["macs"]
    assert conv.values["bytes_in"] == 16 * 32 * 32 * 4
    assert conv.values["bytes_out"] == 32 * 16 * 16 * 4
    assert conv.values["param_bytes"] == (32 * 16 * 9 + 32) * 4
    assert conv.values["paper_conv"] == pytest.approx((3 / 2) ** 2 * 32)
    assert conv.values["macs_kxk"] == conv.values["macs"] and conv.values["macs_1x1"] == 0


def test_conv_bn_relu_fuse_into_conv():
    assert [x.key for x in _feats(CONV_BN_RELU)] == ["Conv", "fused:BatchNormalization", "fused:Relu"]


def test_no_fusion_when_intermediate_has_two_consumers():
    f = _feats("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,8,8,8] x) => (float[1,8,8,8] y, float[1,8,8,8] z) <float[8,8,1,1] w> {
      c = Conv (x, w)
      y = Relu (c)
      z = Sigmoid (c)
    }
    """)
    assert [x.key for x in f] == ["Conv", "Relu", "Sigmoid"]


def test_residual_add_and_second_activation():
    f = _feats("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,8,8,8] x) => (float[1,8,8,8] y) <float[8,8,3,3] w> {
      c = Conv <pads=[1,1,1,1]> (x, w)
      a = Add (c, x)
      r = Relu (a)
      y = Relu (r)
    }
    """)
    assert [x.key for x in f] == ["Conv", "fused:Add", "fused:Relu", "Relu"]


def test_matmul_bias_dropout_and_folded_constants():
    f = _feats("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,64] x) => (float[2,1,32] y) <float[64,32] w, float[32] b, int64[1] ax> {
      m = MatMul (x, w)
      a = Add (m, b)
      d = Dropout (a)
      bu = Unsqueeze (b, ax)
      y = Unsqueeze (d, ax)
    }
    """)
    keys = [x.key for x in f]
    assert keys == ["MatMul", "fused:Add", "fused:Dropout", "folded:Unsqueeze", "Unsqueeze"]
    assert f[0].values["macs"] == 2 * 64 * 32
    assert f[0].values["param_bytes"] == 64 * 32 * 4


def test_depthwise_and_gemm_and_pool_features():
    f = _feats("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,32,14,14] x) => (float[1,10] y) <float[32,1,3,3] w, float[10,1568] fw, float[10] fb> {
      c = Conv <group=32, pads=[1,1,1,1]> (x, w)
      p = MaxPool <kernel_shape=[2,2], strides=[2,2]> (c)
      fl = Flatten (p)
      y = Gemm <transB=1> (fl, fw, fb)
    }
    """)
    conv, pool, flat, gemm = f
    assert conv.key == "Conv.depthwise" and conv.op_type == "Conv"
    assert conv.values["macs"] == 32 * 14 * 14 * 9
    assert conv.values["macs_dw"] == conv.values["macs"] and conv.values["is_dw"] == 1
    assert pool.key == "MaxPool" and pool.values["macs"] == 32 * 7 * 7 * 4
    assert gemm.key == "Gemm" and gemm.values["macs"] == 10 * 1568


def test_lstm_macs():
    f = _feats("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[5,1,16] x) => (float[5,1,1,32] y) <float[1,128,16] w, float[1,128,32] r> {
      y = LSTM <hidden_size=32> (x, w, r)
    }
    """)
    assert f[0].values["macs"] == 5 * 1 * 128 * (16 + 32)
    # The input projection (one GEMM) and the recurrent steps run at different speeds.
    assert f[0].values["macs_input"] == 5 * 128 * 16 and f[0].values["macs_recurrent"] == 5 * 128 * 32


def test_unknown_op_and_missing_shapes_never_raise():
    node = onnx.helper.make_node("FancyOp", ["x", "w"], ["y"], domain="com.example", mode="weird")
    graph = onnx.helper.make_graph([node, onnx.helper.make_node("Conv", ["y", "w2"], ["z"])], "g", [], [])
    shapes = {"x": ((1, 4, 8, 8), np.dtype(np.float32)), "y": ((1, 4, 8, 8), np.dtype(np.float32))}
    f = graph_features(graph, shapes, {"w"})
    assert isinstance(f[0], NodeFeatures) and f[0].key == "FancyOp"
    assert f[0].values["bytes_in"] == 4 * 64 * 4 and f[0].values["bytes_out"] == 4 * 64 * 4
    assert f[1].key == "Conv" and f[1].values["macs"] == 0  # no weight shape: generic only
    assert all(np.isfinite(v) for x in f for v in x.values.values())


def test_one_feature_per_node_in_order():
    model = onnx.parser.parse_model(CONV_BN_RELU)
    f = graph_features(model.graph, static_shapes(model), {"w", "b", "s", "bb", "m", "v"})
    assert len(f) == len(model.graph.node)
    assert f[0].op_type == "Conv" and f[2].op_type == "Relu"


def test_bn_fuses_into_grouped_and_depthwise_convs():
    f = _feats("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,16,8,8] x) => (float[1,16,8,8] y) <float[16,4,1,1] w, float[16,1,3,3] d, float[16] s,
                                                 float[16] bb, float[16] m, float[16] v> {
      c = Conv <group=4> (x, w)
      n = BatchNormalization (c, s, bb, m, v)
      e = Conv <group=16, pads=[1,1,1,1]> (n, d)
      y = BatchNormalization (e, s, bb, m, v)
    }
    """)
    assert [x.key for x in f] == ["Conv.grouped", "fused:BatchNormalization", "Conv.depthwise",
                                  "fused:BatchNormalization"]


def test_residual_add_and_layer_norm_are_one_skip_layer_norm():
    f = _feats("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,16,64] x, float[1,16,64] r) => (float[1,16,64] y, float[1,16,64] z) <float[64] s, float[64] b> {
      a = Add (x, r)
      y = LayerNormalization <axis=-1> (a, s, b)
      c = Add (x, b)
      z = LayerNormalization <axis=-1> (c, s, b)
    }
    """)
    # A residual sum of two activations fuses; a bias add (broadcast) does not.
    assert [x.key for x in f] == ["fused:Add", "SkipLayerNormalization", "Add", "LayerNormalization"]


def test_layout_copies_follow_onnxruntime_padding():
    # onnxruntime 1.32 (checked on its optimised graphs): LeNet's 1->20 and 20->50 convs run
    # blocked with padded channels; an unaligned output is copied back at once.
    f = _feats("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,1,28,28] x) => (float[1,50,8,8] y) <float[20,1,5,5] w1, float[50,20,5,5] w2> {
      c = Conv <kernel_shape=[5,5]> (x, w1)
      p = MaxPool <kernel_shape=[2,2], strides=[2,2]> (c)
      y = Conv <kernel_shape=[5,5]> (p, w2)
    }
    """)
    conv1, pool, conv2 = f
    assert conv1.values["reorder_copies"] == 1 and conv1.values["reorder_bytes"] == 20 * 24 * 24 * 4
    assert "reorder_copies" not in pool.values  # plain NCHW MaxPool
    assert conv2.values["reorder_copies"] == 2  # ReorderInput of p, ReorderOutput of y
    assert conv2.values["reorder_bytes"] == (20 * 12 * 12 + 50 * 8 * 8) * 4


def test_padded_macs_follow_the_machines_nchwc_block():
    # MLAS blocks 8 channels with AVX2 and 16 with AVX-512: a 24->24 conv computes 24 or
    # 32 channels each way, and a 24-channel output stays blocked only with 8.
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,16,14,14] x) => (float[1,24,14,14] y) <float[24,16,3,3] w1, float[24,24,3,3] w2> {
      c = Conv <pads=[1,1,1,1]> (x, w1)
      y = Conv <pads=[1,1,1,1]> (c, w2)
    }
    """
    by_block = {b: _feats(text, nchwc_block=b) for b in (8, 16)}
    assert by_block[8][1].values["macs_kxk"] == 24 * 24 * 14 * 14 * 9
    assert by_block[16][1].values["macs_kxk"] == 32 * 32 * 14 * 14 * 9
    assert by_block[8][1].values["macs"] == by_block[16][1].values["macs"] == 24 * 24 * 14 * 14 * 9
    # Block 8: x is copied in, c stays blocked, y (a graph output) is copied back.
    assert [f.values["reorder_copies"] for f in by_block[8]] == [1, 1]
    # Block 16: c is unaligned, so it is copied back after the first conv and in again.
    assert [f.values["reorder_copies"] for f in by_block[16]] == [2, 2]
    assert _feats(text)[1].values == by_block[8][1].values  # the default block
