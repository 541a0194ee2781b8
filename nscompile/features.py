"""Per-node features for the latency regressions (the paper's per-layer-type inputs).

Every node gets a :class:`NodeFeatures`: the *key* its cost is looked up under and a
dict of numbers (MACs, bytes in/out, parameter bytes, op-specific terms such as the
paper's ``(filter/stride)^2 * filters``). The profiler computes the same features for its
microbenchmarks, so a profile's regressions and a model's nodes speak the same language.

Key scheme (why: onnxruntime does not run the ONNX graph node by node):

* ``op_type`` for a node that runs as its own kernel (``"Conv"``, ``"Gemm"``...), with a
  kernel-family suffix where onnxruntime runs the op with a different kernel whose speed
  per MAC differs: ``"Conv.depthwise"`` (group == channels), ``"Conv.grouped"``
  (1 < group < channels). A profile without the suffixed key falls back to ``"Conv"``.
* ``"fused:<op_type>"`` for a node that onnxruntime's graph optimiser folds into its
  producer's kernel: BatchNormalization / Mul / Add by a constant after a Conv (folded
  into the weights), an activation after a Conv or Gemm (FusedConv, FusedGemm, NCHWc
  Conv), a residual Add/Sum after a Conv (NCHWc Conv with a sum input), a constant Add
  after MatMul (Gemm), and Dropout / Identity (removed). Such nodes cost next to nothing;
  the profile measures how little from fused-pattern microbenchmarks.
* ``"folded:<op_type>"`` for a node whose inputs are all constants (shape arithmetic,
  ``ConstantOfShape`` of a constant shape, ``Unsqueeze`` of a weight): onnxruntime
  constant-folds it when the session is created, so it costs nothing per run.

The attribution keeps the sum of node costs equal to the cost of the fused kernel, so a
partition that cuts *inside* a fused group is still costed sensibly (the producer keeps
the bulk of the cost, the absorbed node a small remainder).

Only onnx and numpy are imported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Set as AbstractSet
from dataclasses import dataclass, field
import math

import numpy as np
import onnx

__all__ = [
    "NodeFeatures",
    "graph_features",
    "static_shapes",
    "ACTIVATIONS",
    "BASE_FEATURES",
]

Shapes = Mapping[str, tuple[tuple[int, ...], np.dtype]]

# Element-wise activations onnxruntime fuses into a preceding Conv / Gemm kernel.
ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid"})
# Ops the optimiser removes outright.
_ELIMINATED = frozenset({"Dropout", "Identity"})
# Kernels other nodes can be fused into.
_CONV_LIKE = frozenset({"Conv", "FusedConv"})
_GEMM_LIKE = frozenset({"Gemm", "MatMul"})

#: Features every node has (zeros where they do not apply).
BASE_FEATURES = (
    "macs",
    "flops",
    "bytes_in",
    "bytes_out",
    "param_bytes",
    "elems_in",
    "elems_out",
    "n_inputs",
    "bytes_total",
)


@dataclass(frozen=True)
class NodeFeatures:
    """What the cost model knows about one node.

    Attributes:
        key: Op key the cost model looks up: the op type, or ``"fused:<op>"`` /
            ``"folded:<op>"`` (see the module docstring).
        values: Numeric features, e.g. ``macs``, ``bytes_in``, ``bytes_out``,
            ``param_bytes``, ``flops`` and op-specific ones. Missing features read as 0.
    """

    key: str
    values: dict[str, float] = field(default_factory=dict)

    @property
    def op_type(self) -> str:
        """The ONNX op type behind the key (``"fused:Relu"`` -> ``"Relu"``, ``"Conv.depthwise"`` -> ``"Conv"``)."""
        return (self.key.split(":", 1)[1] if ":" in self.key else self.key).split(".", 1)[0]


# onnxruntime's CPU provider runs convolutions in the blocked NCHWc layout (MLAS block of
# 8 channels on AVX2, 16 on AVX-512: a profile measures which and stores it as
# ``nchwc_block``; NCHWC_BLOCK is the default, for profiles made before). Where
# an NCHWc tensor meets an op without an NCHWc kernel (Concat, an unfused Add or Relu, a
# graph output...), onnxruntime inserts a ReorderOutput / ReorderInput copy. A single-op
# conv microbenchmark always pays both copies, a conv inside a chain of convs none; so
# the copies are a feature of their own ("reorder_bytes"), costed per byte by the profile.
NCHWC_BLOCK = 8

def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= max(int(d), 0)
    return n


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        try:
            out[a.name] = onnx.helper.get_attribute_value(a)
        except Exception:  # an attribute type we do not decode is irrelevant to cost
            pass
    return out


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Static shapes and dtypes of every tensor of a model, via ONNX shape inference.

    A helper for the profiler and the accuracy benchmark (the compiler's frontend has
    its own). Tensors whose shape is unknown or dynamic are left out.

    Args:
        model: A model whose graph inputs have static shapes.

    Returns:
        Tensor name -> (shape, numpy dtype).
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for init in g.initializer:
        out[init.name] = (
            tuple(int(d) for d in init.dims),
            np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)),
        )
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape") or tt.elem_type == 0:
            continue
        dims = []
        for d in tt.shape.dim:
            if not d.HasField("dim_value"):
                break
            dims.append(int(d.dim_value))
        else:
            out.setdefault(
                vi.name, (tuple(dims), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)))
            )
    return out


def _weight_hinges(v: dict[str, float]) -> None:
    # Weight bytes beyond typical cache sizes: a batch-1 fully connected layer streams its
    # weights, and the cost per byte jumps once they no longer fit in L2 / L3. Hinges let
    # a non-negative linear fit learn that convex curve without knowing the cache sizes.
    pb = v.get("param_bytes", 0.0)
    for mb in (1, 8, 32):
        v[f"param_bytes_over_{mb}mb"] = max(pb - mb * 2**20, 0.0)


#: Rows of a matrix product from which MACs, not the weights' traffic, set its speed.
MANY_ROWS = 8


def _split_by_rows(v: dict[str, float], macs: float, rows: int) -> None:
    # A product of few rows (batch-1 to batch-4 layers) streams each weight once and does
    # a few MACs with it while it is loaded: its time is mostly the weights' traffic
    # (param_bytes). From about 8 rows on the MACs dominate, at the GEMM kernel's speed.
    # One MAC count each, so a linear fit gets both regimes instead of a compromise that
    # over-predicts batch-4 layers by 30% and under-predicts transformer layers by 10%.
    v["macs_few_rows"] = macs if rows < MANY_ROWS else 0.0
    v["macs_many_rows"] = macs if rows >= MANY_ROWS else 0.0


def _conv_features(node, attrs, shapes, v: dict[str, float], block: int) -> None:
    x = shapes.get(node.input[0])
    w = shapes.get(node.input[1]) if len(node.input) > 1 else None
    y = shapes.get(node.output[0])
    if not (x and w and y) or len(w[0]) < 3 or len(y[0]) < 3:
        return
    xs, ws, ys = x[0], w[0], y[0]
    group = int(attrs.get("group", 1))
    c_out, c_in_per_group = ws[0], ws[1]
    kernel = _numel(ws[2:])
    strides = attrs.get("strides") or [1] * (len(ws) - 2)
    stride = float(np.prod(strides)) ** (1.0 / max(len(strides), 1))
    k_side = kernel ** (1.0 / max(len(ws) - 2, 1))
    spatial_out = _numel(ys[2:])
    batch = ys[0]
    macs = float(batch * c_out * spatial_out * c_in_per_group * kernel)
    c_in = xs[1] if len(xs) > 1 else c_in_per_group * group
    depthwise = group > 1 and group == c_in
    v["macs"] = macs
    v["flops"] = 2.0 * macs
    v["kernel"] = float(kernel)
    v["stride"] = float(stride)
    v["group"] = float(group)
    v["c_in"] = float(c_in)
    v["c_out"] = float(c_out)
    v["spatial_out"] = float(spatial_out)
    v["spatial_in"] = float(_numel(xs[2:]))
    # The paper's conv feature: (filter size / stride)^2 * number of filters.
    v["paper_conv"] = (k_side / max(stride, 1.0)) ** 2 * c_out
    # One MAC count per kernel family: onnxruntime/MLAS runs them with different
    # kernels (depthwise, grouped, pointwise GEMM, im2col/NCHWc), each at its own speed.
    # The NCHWc kernels (dense and depthwise) compute whole blocks of channels: with
    # AVX2's block of 8, 50 filters cost what 56 do and 20 input channels what 24 do;
    # with AVX-512's 16, 20 to 32 channels all cost what 32 do (both measured: equal
    # times), so those families count the MACs of the padded channels. Fewer than a block
    # of input channels (the first conv, c_in=3) is read unblocked, and vectorises badly.
    pad = (lambda c: _round_up(c, block)) if len(ws) == 4 else int  # NCHWc is for 2-D convs only
    v["macs_dw"] = float(batch * pad(c_out) * spatial_out * kernel) if depthwise else 0.0
    v["macs_grouped"] = macs if (group > 1 and not depthwise) else 0.0
    dense = float(batch * pad(c_out) * spatial_out * (pad(c_in_per_group) if c_in_per_group >= block
                                                      else c_in_per_group) * kernel)
    v["macs_1x1"] = dense if (group == 1 and kernel == 1) else 0.0
    v["macs_kxk"] = dense if (group == 1 and kernel > 1) else 0.0
    v["macs_narrow"] = dense if (group == 1 and c_in_per_group < block) else 0.0
    # Shape terms for the power-law (loglog) form: GEMM dimensions and kernel family
    # indicators, so efficiency can vary with channels and spatial size.
    v["c_in_per_group"] = float(c_in_per_group)
    v["is_dw"] = 1.0 if depthwise else 0.0
    v["is_grouped"] = 1.0 if (group > 1 and not depthwise) else 0.0
    v["is_1x1"] = 1.0 if kernel == 1 else 0.0


def _op_features(node, attrs, shapes, v: dict[str, float], block: int) -> None:
    op = node.op_type
    ins = [shapes.get(n) for n in node.input]
    outs = [shapes.get(n) for n in node.output]
    elems_out = v["elems_out"]
    elems_in = v["elems_in"]
    if op in ("Conv", "FusedConv"):
        _conv_features(node, attrs, shapes, v, block)
    elif op == "ConvTranspose":
        x = ins[0]
        w = ins[1] if len(ins) > 1 else None
        if x and w and len(w[0]) >= 3:
            group = int(attrs.get("group", 1))
            macs = float(_numel(x[0]) * w[0][1] * _numel(w[0][2:]))
            v["macs"] = macs
            v["flops"] = 2 * macs
            v["kernel"] = float(_numel(w[0][2:]))
            v["group"] = float(group)
    elif op == "Gemm":
        a = ins[0]
        y = outs[0]
        if a and y and len(a[0]) == 2:
            k = a[0][0] if attrs.get("transA", 0) else a[0][1]
            macs = float(_numel(y[0]) * k)
            v["macs"] = macs
            v["flops"] = 2 * macs
            v["fc_neurons"] = float(y[0][-1]) if y[0] else 0.0
            _weight_hinges(v)
            _split_by_rows(v, macs, rows=y[0][0] if y[0] else 1)
    elif op == "MatMul":
        a = ins[0]
        y = outs[0]
        if a and y and a[0]:
            macs = float(_numel(y[0]) * a[0][-1])
            v["macs"] = macs
            v["flops"] = 2 * macs
            # Matrix products in a batched MatMul: each is its own GEMM call (attention
            # heads, locally connected layers with one small product per position).
            v["matmul_batch"] = float(_numel(y[0][:-2])) if len(y[0]) > 2 else 1.0
            _weight_hinges(v)
            # Rows per product: against a 2-D weight the leading dimensions are one matrix
            # (onnxruntime flattens them); in a batched product, each matrix's own rows.
            b = ins[1] if len(ins) > 1 else None
            flat = b is not None and len(b[0]) == 2
            _split_by_rows(v, macs, rows=_numel(y[0][:-1]) if flat else (y[0][-2] if len(y[0]) > 1 else 1))
    elif op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = _numel(tuple(attrs.get("kernel_shape", [1])))
        v["kernel"] = float(kernel)
        v["macs"] = float(elems_out * kernel)
        v["flops"] = v["macs"]
    elif op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax"):
        v["macs"] = float(elems_in)
        v["flops"] = float(elems_in)
    elif op == "LRN":
        size = int(attrs.get("size", 5))
        v["macs"] = float(elems_out * size)
        v["flops"] = v["macs"] * 2
    elif op in ("LSTM", "GRU", "RNN"):
        x = ins[0]
        w = ins[1] if len(ins) > 1 else None
        r = ins[2] if len(ins) > 2 else None
        if x and w and r and len(x[0]) == 3 and len(w[0]) == 3:
            seq, batch, in_size = x[0]
            dirs, gates_h, _ = w[0]
            hidden = r[0][2]
            macs = float(seq * batch * dirs * gates_h * (in_size + hidden))
            v["macs"] = macs
            # onnxruntime projects the inputs of all steps in one GEMM (compute-bound),
            # then runs one matrix-vector product per step on the recurrent weights
            # (bound by reading them): two terms with very different speeds.
            v["macs_input"] = float(seq * batch * dirs * gates_h * in_size)
            v["macs_recurrent"] = float(seq * batch * dirs * gates_h * hidden)
            v["flops"] = 2 * macs
            v["seq"] = float(seq)
            v["hidden"] = float(hidden)
            # Every time step reads all the weights again.
            v["weight_traffic"] = float(seq) * v.get("param_bytes", 0.0)
            # ... and multiplies by the recurrent weights: once they outgrow the fast
            # cache levels, every step streams them (a 1024-unit LSTM costs ~2.5x per MAC).
            r_bytes = float(_numel(r[0]) * np.dtype(r[1]).itemsize)
            v["recurrent_traffic_over_4mb"] = float(seq) * max(r_bytes - 4 * 2**20, 0.0)
    elif op == "Gather":
        # One copy per index: the index count and the bytes copied set the cost (an
        # embedding lookup copies a few long rows, an im2col-style gather many scalars).
        idx = ins[1] if len(ins) > 1 else None
        if idx:
            v["n_indices"] = float(_numel(idx[0]))
    elif op in ("Softmax", "LogSoftmax", "BatchNormalization", "InstanceNormalization",
                "LayerNormalization", "Erf", "Exp", "Gelu", "Tanh", "Sigmoid"):
        v["flops"] = float(elems_in) * 4
    else:
        v["flops"] = float(elems_out)


def _node_values(node, attrs, shapes: Shapes, constants: AbstractSet[str], block: int) -> dict[str, float]:
    bytes_in = bytes_param = 0.0
    elems_in = 0
    n_inputs = 0
    for name in node.input:
        if not name or name not in shapes:
            continue
        shape, dtype = shapes[name]
        nb = float(_numel(shape) * np.dtype(dtype).itemsize)
        if name in constants:
            bytes_param += nb
        else:
            bytes_in += nb
            elems_in += _numel(shape)
            n_inputs += 1
    bytes_out = 0.0
    elems_out = 0
    for name in node.output:
        if name and name in shapes:
            shape, dtype = shapes[name]
            bytes_out += float(_numel(shape) * np.dtype(dtype).itemsize)
            elems_out += _numel(shape)
    v = {
        "macs": 0.0,
        "flops": 0.0,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "param_bytes": bytes_param,
        "elems_in": float(elems_in),
        "elems_out": float(elems_out),
        "n_inputs": float(n_inputs),
        # All memory a kernel touches: the work term of memory-bound ops.
        "bytes_total": bytes_in + bytes_out + bytes_param,
    }
    try:
        _op_features(node, attrs, shapes, v, block)
    except Exception:  # malformed attributes or shapes: keep the generic features
        pass
    for k, x in list(v.items()):
        if not math.isfinite(x):
            v[k] = 0.0
    return v


def graph_features(
    graph: onnx.GraphProto,
    shapes: Shapes,
    constants: AbstractSet[str],
    nchwc_block: int = NCHWC_BLOCK,
) -> list[NodeFeatures]:
    """Features of every node of a graph, in ``graph.node`` order.

    Args:
        graph: The graph (topologically ordered, as ONNX requires).
        shapes: Static shape and numpy dtype of every tensor (graph inputs, initializers,
            intermediates, outputs). Tensors missing here count as 0 bytes.
        constants: Names of constant tensors (initializers / weights).
        nchwc_block: Channels per block of the machine's NCHWc convolutions (8 with AVX2,
            16 with AVX-512; a profile's ``nchwc_block``): it sets the padded MAC counts and
            which tensors stay blocked.

    Returns:
        One :class:`NodeFeatures` per node. Never raises on an unknown op type: such a
        node gets the generic features (bytes and elements in and out).
    """
    nodes = list(graph.node)
    graph_outputs = {o.name for o in graph.output}
    consumers: dict[str, int] = {}
    for n in nodes:
        for name in set(n.input):
            if name:
                consumers[name] = consumers.get(name, 0) + 1
    producer: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for name in n.output:
            producer[name] = i

    const = set(constants)
    # Fusion state per node that is a kernel (or absorbed into one): the head op and the
    # stage reached, so that e.g. a second activation after Conv+Relu is not fused.
    stage: dict[int, tuple[str, int, bool]] = {}  # index -> (head family, stage, NCHWc head)
    # stages: 0 = bare kernel, 1 = after BN/affine, 2 = after residual add, 3 = after act.
    result: list[NodeFeatures] = []
    for i, node in enumerate(nodes):
        attrs = _attrs(node)
        values = _node_values(node, attrs, shapes, const, nchwc_block)
        op = node.op_type
        real_inputs = [x for x in node.input if x]
        dyn_inputs = [x for x in real_inputs if x not in const]
        key = op
        if op == "Constant" or (real_inputs and not dyn_inputs) or (
            not real_inputs and op in ("ConstantOfShape", "Constant")
        ):
            key = f"folded:{op}"
            const.update(o for o in node.output if o)
        elif op in _ELIMINATED:
            key = f"fused:{op}"
        else:
            fused = _fusion(node, op, dyn_inputs, nodes, producer, consumers, graph_outputs, stage, shapes)
            if fused is not None:
                key = f"fused:{op}"
                stage[i] = fused
            elif op in _CONV_LIKE:
                stage[i] = ("conv", 0, _nchwc_eligible(op, values, nchwc_block) and _nchwc_output_kept(op, values, nchwc_block))
                if values.get("is_dw"):
                    key = f"{op}.depthwise"
                elif values.get("is_grouped"):
                    key = f"{op}.grouped"
            elif op in _GEMM_LIKE:
                stage[i] = ("gemm", 0, False)
        result.append(NodeFeatures(key=key, values=values))
    _skip_layer_norms(nodes, result, producer, consumers, graph_outputs, shapes, const)
    _layout_reorders(nodes, result, stage, producer, graph_outputs, shapes, const, nchwc_block)
    _cold_weights(nodes, result, shapes, constants)
    return result


#: The weights of a whole model compete for the last-level cache. Once its streamed
#: weights outgrow COLD_FROM_BYTES, part of them is re-read from DRAM on every run even
#: where each layer alone would fit (a lone layer's microbenchmark keeps its weights
#: cached between runs); beyond COLD_FULL_BYTES all are. Measured on the profiled EPYC VM
#: (32 MB L3 reported): stacks of 4 MB fully connected layers take 0.092 ms per layer
#: up to 8 MB in all, 0.145 at 16 MB, 0.200 at 32 MB, 0.216 at 64 MB.
COLD_FROM_BYTES = 8 * 2**20
COLD_FULL_BYTES = 36 * 2**20
_STREAMED = frozenset({"Gemm", "MatMul", "Conv", "FusedConv", "LSTM", "GRU", "RNN"})


def _cold_weights(nodes, result, shapes, constants) -> None:
    """Fill ``param_bytes_cold`` of Gemm / MatMul: the weight bytes that come from DRAM.

    The cold share is 0 while the graph's streamed weights (those of Gemm, MatMul, Conv
    and recurrent nodes; not embedding tables, read a few rows at a time) stay under
    ``COLD_FROM_BYTES`` and grows linearly to 1 at ``COLD_FULL_BYTES`` (an LRU cache
    streamed cyclically through more than it holds keeps nothing).
    """
    total = 0.0
    seen: set[str] = set()
    for node in nodes:
        if node.op_type not in _STREAMED:
            continue
        for x in node.input[1:]:
            if x and x in constants and x in shapes and x not in seen:
                seen.add(x)
                shape, dtype = shapes[x]
                total += float(_numel(shape) * np.dtype(dtype).itemsize)
    share = min(max((total - COLD_FROM_BYTES) / (COLD_FULL_BYTES - COLD_FROM_BYTES), 0.0), 1.0)
    for node, f in zip(nodes, result):
        if f.key in ("Gemm", "MatMul"):
            f.values["param_bytes_cold"] = f.values.get("param_bytes", 0.0) * share


_NCHWC_POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})


def _round_up(channels: int, block: int) -> int:
    return -(-int(channels) // block) * block


def _nchwc_eligible(op: str, v: dict[str, float], block: int = NCHWC_BLOCK) -> bool:
    """Whether onnxruntime runs this node in the NCHWc layout.

    Checked against onnxruntime 1.32's optimised graphs: a plain or depthwise conv always
    qualifies (channels are padded up to the block), a grouped conv only with
    block-aligned channels per group.
    """
    if op == "BatchNormalization":
        return v.get("elems_in", 0) > 0 and v.get("param_bytes", 0) > 0 and \
            (v["param_bytes"] / 16) % block == 0  # 4 float vectors of C channels
    if op not in ("Conv", "FusedConv") or "group" not in v:
        return False
    g, cin, cout = int(v["group"]), int(v["c_in"]), int(v["c_out"])
    if g == 1 or g == cin == cout:
        return True
    return (cin // g) % block == 0 and (cout // g) % block == 0


def _nchwc_output_kept(op: str, v: dict[str, float], block: int = NCHWC_BLOCK) -> bool:
    """Whether an NCHWc node's output stays blocked for its consumers.

    A padded output (channels not a multiple of the block) is copied back to NCHW at once.
    """
    if op not in ("Conv", "FusedConv"):
        return True
    return int(v.get("c_out", 0)) % block == 0


def _layout_reorders(nodes, result, stage, producer, graph_outputs, shapes, const, block: int = NCHWC_BLOCK) -> None:
    """Fill ``reorder_bytes`` and ``reorder_copies``: the NCHWc<->NCHW copies onnxruntime adds around each node."""
    nchwc = [False] * len(nodes)
    resident: set[str] = set()
    for i, (node, f) in enumerate(zip(nodes, result)):
        op = node.op_type
        dyn = [x for x in node.input if x and x not in const]
        if f.key.startswith("fused:") and f.key != "fused:Dropout" and f.key != "fused:Identity":
            on = any(producer.get(x) is not None and nchwc[producer[x]] and x in resident for x in dyn)
        elif ":" in f.key:
            on = False
        elif op in _NCHWC_POOLS:
            on = bool(dyn) and dyn[0] in resident
        elif op in ACTIVATIONS and len(dyn) == 1 and dyn[0] in resident:
            on = True  # element-wise: runs on the blocked tensor as it is
        elif op == "Mul" and len(dyn) == 1 and dyn[0] in resident:
            # A per-channel scale of an NCHWc tensor becomes a depthwise NCHWc conv.
            on = True
        elif op == "Concat":
            # NCHWc Concat along channels of NCHWc inputs with block-aligned channels.
            on = (len(dyn) == len([x for x in node.input if x]) and all(x in resident for x in dyn)
                  and all(len(shapes.get(x, ((),))[0]) == 4 and shapes[x][0][1] % block == 0 for x in dyn)
                  and _attrs(node).get("axis") == 1)
        else:
            on = _nchwc_eligible(op, f.values, block)
        nchwc[i] = on
        if on and _nchwc_output_kept(op, f.values, block):
            resident.update(o for o in node.output if o)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for x in node.input:
            if x:
                consumers.setdefault(x, []).append(i)

    def nbytes(t):
        if t not in shapes:
            return 0.0
        shape, dtype = shapes[t]
        return float(_numel(shape) * np.dtype(dtype).itemsize)

    for i, (node, f) in enumerate(zip(nodes, result)):
        if not nchwc[i]:
            continue
        rb, copies = 0.0, 0
        dyn = [x for x in node.input if x and x not in const]
        for j, x in enumerate(dyn):
            if x in resident:
                continue
            if j == 0 and node.op_type in _CONV_LIKE and f.values.get("c_in", block) < block:
                continue  # narrow-input convs read NCHW directly
            rb += nbytes(x)
            copies += 1
        for o in node.output:
            if o and (o not in resident or o in graph_outputs or any(not nchwc[c] for c in consumers.get(o, []))):
                rb += nbytes(o)
                copies += 1
        f.values["reorder_bytes"] = rb
        f.values["reorder_copies"] = float(copies)


def _skip_layer_norms(nodes, result, producer, consumers, graph_outputs, shapes, const) -> None:
    """Residual Add + LayerNormalization: onnxruntime runs both as one SkipLayerNormalization.

    That kernel costs far more than a LayerNormalization (about 8x on onnxruntime 1.32's
    CPU provider, 1 thread), so it is an op key of its own, and the Add is absorbed.
    """
    for i, node in enumerate(nodes):
        if node.op_type != "LayerNormalization" or not node.input or result[i].key != "LayerNormalization":
            continue
        x = node.input[0]
        p = producer.get(x)
        if p is None or result[p].key != "Add" or x in graph_outputs or consumers.get(x, 0) != 1:
            continue
        dyn = [t for t in nodes[p].input if t and t not in const]
        if len(dyn) == 2 and all(shapes.get(t, (None,))[0] == shapes.get(x, (None,))[0] for t in dyn):
            result[i] = NodeFeatures(key="SkipLayerNormalization", values=result[i].values)
            result[p] = NodeFeatures(key="fused:Add", values=result[p].values)


def _fusion(node, op, dyn_inputs, nodes, producer, consumers, graph_outputs, stage, shapes):
    """The (family, stage) a node reaches if it fuses into its producer's kernel, else None."""
    if not dyn_inputs:
        return None

    def fusable_from(name):
        # The intermediate tensor must vanish: produced by a kernel, used only here.
        if name in graph_outputs or consumers.get(name, 0) != 1:
            return None
        p = producer.get(name)
        if p is None or p not in stage:
            return None
        return stage[p]

    if len(dyn_inputs) == 1:
        st = fusable_from(dyn_inputs[0])
        if st is None:
            return None
        family, level, blocked = st
        if op in ("BatchNormalization", "Mul", "Add", "Sub", "Div") and family == "conv" and level == 0:
            return (family, 0, blocked)  # folded into the conv weights / bias
        if op in ("Add",) and family == "gemm" and level == 0:
            return (family, 1, blocked)  # MatMul + Add -> Gemm bias
        if op in ACTIVATIONS and level < 3 and not (family == "gemm" and op == "Clip"):
            # (onnxruntime's Gemm fusion takes no Clip; its Conv fusion does, e.g. ReLU6)
            return (family, 3, blocked)
        return None
    if op in ("Add", "Sum") and len(dyn_inputs) == 2:
        # Residual add: one operand straight from an NCHWc conv (only those kernels take
        # a sum input), the other of the same shape.
        a, b = dyn_inputs
        for mine, other in ((a, b), (b, a)):
            st = fusable_from(mine)
            if st is None or st[0] != "conv" or st[1] >= 2 or not st[2]:
                continue
            if shapes.get(mine, (None,))[0] == shapes.get(other, (None,))[0]:
                return ("conv", 2, True)
    return None
