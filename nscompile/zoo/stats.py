"""Layers, parameters and multiply-accumulates of an ONNX model, read from the graph.

These work on any static-shape ONNX model, not only the zoo's, and never read weight
values (only dims), so they also work on the zoo's dims-only skeletons.
"""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


def layer_of(node_name: str) -> str:
    """The layer a node belongs to: its name up to the first ``/``.

    The zoo names the node doing a layer's work after the layer (``fc6``) and the
    helpers ONNX needs around it ``<layer>/<what>`` (``fc6/flatten``).
    """
    return node_name.split("/", 1)[0]


def count_layers(model: onnx.ModelProto, exclude: tuple[str, ...] = ()) -> int:
    """Count layers the way Neurosurgeon's Table 3 does.

    The paper counts the layers of the Caffe deploy prototxts of the Tonic suite: every
    Caffe layer is one, including in-place ReLUs, Dropouts, the final Softmax and
    ArgMax; the input blob is not a layer, and Caffe's InnerProduct flattens on its own.
    Here a layer is a distinct :func:`layer_of` over the graph's node names, so the ONNX
    helpers (``fc6/flatten``, the unfold of a locally connected layer) fold into the
    layer they serve and every other node counts once.

    Args:
        model: an ONNX model whose nodes are all named.
        exclude: layer names to leave out (SENNA's ``lookup``, which Tonic ran in the
            application rather than in the network).

    Returns:
        The number of layers.

    Raises:
        ValueError: a node has no name.
    """
    layers = set()
    for i, node in enumerate(model.graph.node):
        if not node.name:
            raise ValueError(f"node {i} ({node.op_type}) has no name")
        layers.add(layer_of(node.name))
    return len(layers - set(exclude))


def count_params(model: onnx.ModelProto) -> int:
    """Number of trainable-looking parameters: elements of floating-point initializers.

    Integer initializers (shapes, axes, index tables) and single-element constants
    (Clip bounds, attention scale) are not parameters.
    """
    total = 0
    for init in model.graph.initializer:
        n = math.prod(init.dims)
        if init.data_type in _FLOAT_TYPES and n > 1:
            total += n
    return total


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor; runs ONNX shape inference when value_info is incomplete."""

    def collect(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
        shapes = {t.name: tuple(t.dims) for t in graph.initializer}
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            tt = vi.type.tensor_type
            if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
                shapes[vi.name] = tuple(d.dim_value for d in tt.shape.dim)
        return shapes

    shapes = collect(model.graph)
    needed = {t for n in model.graph.node for t in [*n.input, *n.output] if t}
    if needed <= shapes.keys():
        return shapes
    # Shape inference serialises the model: hand it a skeleton whose large weights are
    # typed graph inputs instead of data, so a 500 MB VGG costs nothing to infer.
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    del skeleton.graph.initializer[:]
    for init in model.graph.initializer:
        if math.prod(init.dims) > 1024 or not (init.raw_data or _has_typed_data(init)):
            skeleton.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            skeleton.graph.initializer.append(init)
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    shapes.update(collect(inferred.graph))
    return shapes


def _has_typed_data(t: TensorProto) -> bool:
    return bool(t.float_data or t.int32_data or t.int64_data or t.double_data or t.uint64_data)


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of one inference, from the compute-heavy nodes.

    Counted: Conv (output elements x input channels per group x kernel area), Gemm and
    MatMul (output elements x reduction length), LSTM/GRU/RNN (time x directions x
    batch x gates x hidden x (input + hidden)). Elementwise, pooling and normalisation
    nodes are not MACs and count zero.

    Args:
        model: an ONNX model with static shapes.

    Returns:
        The MAC count (0 for a node whose shapes cannot be inferred).
    """
    shapes = _static_shapes(model)
    total = 0
    for node in model.graph.node:
        ins = [shapes.get(t) for t in node.input]
        out = shapes.get(node.output[0]) if node.output else None
        op = node.op_type
        try:
            if op == "Conv" and out and ins[1]:
                total += math.prod(out) * math.prod(ins[1][1:])
            elif op == "Gemm" and out and ins[0]:
                trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
                total += math.prod(out) * ins[0][0 if trans_a else -1]
            elif op == "MatMul" and out and ins[0]:
                total += math.prod(out) * ins[0][-1]
            elif op in ("LSTM", "GRU", "RNN") and ins[0] and ins[2]:
                # R is (directions, gates * hidden, hidden): LSTM 4 gates, GRU 3, RNN 1.
                dirs, gates_x_hidden, hidden = ins[2]
                seq, batch, nin = ins[0]
                total += seq * batch * dirs * gates_x_hidden * (nin + hidden)
        except (IndexError, TypeError, ValueError):
            continue
    return int(total)
