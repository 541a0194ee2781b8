"""A small ONNX graph builder for the zoo: layers in, a checked ``ModelProto`` out.

The builder tracks every tensor's static shape itself (the zoo has no dynamic
dimensions), so layer helpers can size their weights and the finished model carries a
``value_info`` entry for every intermediate tensor; ``onnx.checker`` with
``full_check=True`` then cross-checks those shapes against ONNX's own inference.

Naming convention, relied on by :func:`nscompile.zoo.stats.count_layers`: the node that
does a layer's work is named after the layer (``conv1``, ``fc6``); helper nodes that
only exist because ONNX spells the layer in several ops (the ``Flatten`` in front of a
fully connected layer, the unfold of a locally connected one) are named
``<layer>/<what>``. Output tensors take the name of the node that produces them, so a
cut after ``pool5`` uploads the tensor ``pool5``.

Weights are drawn from ``numpy.random.default_rng`` seeded by ``(seed, crc32(name))``:
a tensor's values depend only on the seed and its own name, never on the order in which
layers were built, so the same seed always writes the same bytes.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: ONNX opset the zoo targets: 20 is the first with a ``Gelu`` operator (BERT) and
#: includes ``LayerNormalization`` (17).
OPSET = 20
#: IR version written into every model (onnx 1.15's default for opset 20, and the
#: newest onnxruntime 1.17+ loads).
IR_VERSION = 9

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
INT32 = TensorProto.INT32


class Net:
    """Accumulates nodes, weights and shapes for one model.

    Args:
        name: graph name (the zoo model name).
        seed: seed for every weight tensor.
        materialize: when False, float weights are written as dims-only tensors without
            data. Such a model is not valid ONNX; it exists so that ``--list`` can count
            parameters and MACs of full-size models without drawing 140M random numbers.
    """

    def __init__(self, name: str, seed: int = 0, materialize: bool = True) -> None:
        self.name = name
        self.seed = int(seed)
        self.materialize = materialize
        self.nodes: list[onnx.NodeProto] = []
        # Constants as TensorProtos; weights as (name, shape, std, mean), drawn in model().
        self.initializers: list[TensorProto | tuple[str, tuple[int, ...], float, float]] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.shapes: dict[str, tuple[tuple[int, ...], int]] = {}
        self._consts: dict[tuple, str] = {}

    # ------------------------------------------------------------------ plumbing
    def shape(self, tensor: str) -> tuple[int, ...]:
        """Static shape of a tensor built so far."""
        return self.shapes[tensor][0]

    def input(self, name: str, shape: Sequence[int], dtype: int = FLOAT) -> str:
        """Declare a graph input with a static shape."""
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        self.shapes[name] = (tuple(shape), dtype)
        return name

    def param(self, name: str, shape: Sequence[int], std: float, mean: float = 0.0) -> str:
        """A float32 weight drawn from N(mean, std^2), seeded by (seed, name)."""
        shape = tuple(int(d) for d in shape)
        if name in self.shapes:
            raise ValueError(f"duplicate tensor name {name!r}")
        # Drawn in model(), straight into the ModelProto: a full VGG's 550 MB of weights
        # would otherwise be copied three times on the way (array, tensor, graph, model).
        self.initializers.append((name, shape, float(std), float(mean)))
        self.shapes[name] = (shape, FLOAT)
        return name

    def _fill(self, t: TensorProto, name: str, shape: tuple[int, ...], std: float, mean: float) -> None:
        t.name = name
        t.data_type = FLOAT
        t.dims.extend(shape)
        if not self.materialize:
            return
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        arr = rng.standard_normal(shape, dtype=np.float32)
        arr *= np.float32(std)
        if mean:
            arr += np.float32(mean)
        t.raw_data = arr.astype("<f4", copy=False).tobytes()

    def const(self, array: np.ndarray, name: str | None = None) -> str:
        """A constant initializer (shapes, axes, scalars, index tables); deduplicated."""
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 64 else None
        if key is not None and key in self._consts and name is None:
            return self._consts[key]
        if name is None:
            name = f"const_{len(self._consts)}"
        self.initializers.append(numpy_helper.from_array(array, name))
        self.shapes[name] = (tuple(array.shape), helper.np_dtype_to_tensor_dtype(array.dtype))
        if key is not None:
            self._consts[key] = name
        return name

    def node(
        self,
        op: str,
        name: str,
        inputs: Sequence[str],
        shape: Sequence[int],
        dtype: int = FLOAT,
        **attrs,
    ) -> str:
        """Append one node whose single output tensor is named after the node."""
        if name in self.shapes:
            raise ValueError(f"duplicate node/tensor name {name!r}")
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        self.shapes[name] = (tuple(int(d) for d in shape), dtype)
        return name

    # ------------------------------------------------------------------ layers
    def conv(
        self,
        name: str,
        x: str,
        cout: int,
        k: int | tuple[int, int],
        stride: int = 1,
        pad: int | tuple[int, int] = 0,
        group: int = 1,
        bias: bool = True,
        gain: float = 2.0,
    ) -> str:
        """Conv2d with He-scaled weights (``gain`` 2 for ReLU, 1 for linear)."""
        n, cin, h, w = self.shape(x)
        kh, kw = (k, k) if isinstance(k, int) else k
        ph, pw = (pad, pad) if isinstance(pad, int) else pad
        if cin % group or cout % group:
            raise ValueError(f"{name}: channels {cin}->{cout} not divisible by group {group}")
        fan_in = cin // group * kh * kw
        wname = self.param(f"{name}.weight", (cout, cin // group, kh, kw), math.sqrt(gain / fan_in))
        ins = [x, wname]
        if bias:
            ins.append(self.param(f"{name}.bias", (cout,), 0.01))
        oh = (h + 2 * ph - kh) // stride + 1
        ow = (w + 2 * pw - kw) // stride + 1
        return self.node(
            "Conv", name, ins, (n, cout, oh, ow),
            kernel_shape=[kh, kw], strides=[stride, stride], pads=[ph, pw, ph, pw], group=group,
        )

    def _pool(self, op: str, name: str, x: str, k: int, stride: int, pad: int, ceil: bool) -> str:
        n, c, h, w = self.shape(x)

        def out(size: int) -> int:
            span = size + 2 * pad - k
            o = (-(-span // stride) if ceil else span // stride) + 1
            # Like Caffe and PyTorch, drop a last window that would start in the padding.
            if ceil and (o - 1) * stride >= size + pad:
                o -= 1
            return o

        attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        if ceil:
            attrs["ceil_mode"] = 1
        return self.node(op, name, [x], (n, c, out(h), out(w)), **attrs)

    def maxpool(self, name: str, x: str, k: int, stride: int, pad: int = 0, ceil: bool = False) -> str:
        """MaxPool2d; ``ceil`` reproduces Caffe's rounding."""
        return self._pool("MaxPool", name, x, k, stride, pad, ceil)

    def avgpool(self, name: str, x: str, k: int, stride: int, pad: int = 0, ceil: bool = False) -> str:
        """AveragePool2d (padding excluded from the count)."""
        return self._pool("AveragePool", name, x, k, stride, pad, ceil)

    def global_avgpool(self, name: str, x: str) -> str:
        """GlobalAveragePool to ``(N, C, 1, 1)``."""
        n, c, _, _ = self.shape(x)
        return self.node("GlobalAveragePool", name, [x], (n, c, 1, 1))

    def unary(self, op: str, name: str, x: str, **attrs) -> str:
        """A shape-preserving elementwise node (Relu, Sigmoid, Tanh, Gelu, Softmax...)."""
        return self.node(op, name, [x], self.shape(x), self.shapes[x][1], **attrs)

    def relu(self, name: str, x: str) -> str:
        """ReLU."""
        return self.unary("Relu", name, x)

    def clip(self, name: str, x: str, lo: float, hi: float) -> str:
        """Clip to [lo, hi]: ReLU6 (0, 6) and SENNA's HardTanh (-1, 1)."""
        ins = [x, self.const(np.array(lo, np.float32)), self.const(np.array(hi, np.float32))]
        return self.node("Clip", name, ins, self.shape(x))

    def dropout(self, name: str, x: str) -> str:
        """Dropout, an identity at inference; kept because the paper's tables count it."""
        return self.unary("Dropout", name, x)

    def lrn(self, name: str, x: str, size: int = 5, alpha: float = 1e-4, beta: float = 0.75) -> str:
        """Local response normalisation across channels (AlexNet, GoogLeNet)."""
        return self.unary("LRN", name, x, size=size, alpha=alpha, beta=beta, bias=1.0)

    def softmax(self, name: str, x: str, axis: int = -1) -> str:
        """Softmax over ``axis``."""
        return self.unary("Softmax", name, x, axis=axis)

    def argmax(self, name: str, x: str) -> str:
        """ArgMax over the last axis (the class id an application returns)."""
        shape = list(self.shape(x))
        shape[-1] = 1
        return self.node("ArgMax", name, [x], shape, INT64, axis=len(shape) - 1, keepdims=1)

    def reshape(self, name: str, x: str, shape: Sequence[int]) -> str:
        """Reshape to a fully static shape."""
        if math.prod(shape) != math.prod(self.shape(x)):
            raise ValueError(f"{name}: cannot reshape {self.shape(x)} to {tuple(shape)}")
        s = self.const(np.array(shape, np.int64))
        return self.node("Reshape", name, [x, s], shape, self.shapes[x][1])

    def flatten(self, name: str, x: str) -> str:
        """Flatten to ``(N, rest)``."""
        shape = self.shape(x)
        return self.node("Flatten", name, [x], (shape[0], math.prod(shape[1:])), self.shapes[x][1], axis=1)

    def transpose(self, name: str, x: str, perm: Sequence[int]) -> str:
        """Transpose by ``perm``."""
        shape = self.shape(x)
        return self.node("Transpose", name, [x], [shape[p] for p in perm], self.shapes[x][1], perm=list(perm))

    def fc(self, name: str, x: str, nout: int, gain: float = 2.0, bias: bool = True) -> str:
        """Fully connected layer as Gemm (flattening a >2-D input first, as Caffe does)."""
        if len(self.shape(x)) != 2:
            x = self.flatten(f"{name}/flatten", x)
        n, nin = self.shape(x)
        ins = [x, self.param(f"{name}.weight", (nout, nin), math.sqrt(gain / nin))]
        if bias:
            ins.append(self.param(f"{name}.bias", (nout,), 0.01))
        return self.node("Gemm", name, ins, (n, nout), transB=1)

    def linear(self, name: str, x: str, nout: int, gain: float = 1.0) -> str:
        """Dense layer over the last axis of an N-D tensor: MatMul then a bias Add."""
        shape = self.shape(x)
        w = self.param(f"{name}.weight", (shape[-1], nout), math.sqrt(gain / shape[-1]))
        out_shape = (*shape[:-1], nout)
        y = self.node("MatMul", name, [x, w], out_shape)
        b = self.param(f"{name}.bias", (nout,), 0.01)
        return self.node("Add", f"{name}/bias", [y, b], out_shape)

    def add(self, name: str, a: str, b: str) -> str:
        """Elementwise sum of two same-shape tensors (residual connections)."""
        return self.node("Add", name, [a, b], np.broadcast_shapes(self.shape(a), self.shape(b)))

    def concat(self, name: str, xs: Sequence[str], axis: int = 1) -> str:
        """Concatenate along ``axis``."""
        shape = list(self.shape(xs[0]))
        shape[axis] = sum(self.shape(x)[axis] for x in xs)
        return self.node("Concat", name, list(xs), shape, self.shapes[xs[0]][1], axis=axis)

    def layernorm(self, name: str, x: str, eps: float = 1e-12) -> str:
        """LayerNormalization over the last axis with learned scale and bias."""
        h = self.shape(x)[-1]
        scale = self.param(f"{name}.weight", (h,), 0.02, mean=1.0)
        bias = self.param(f"{name}.bias", (h,), 0.02)
        return self.node("LayerNormalization", name, [x, scale, bias], self.shape(x), axis=-1, epsilon=eps)

    # ------------------------------------------------------------------ finish
    def model(self, outputs: Sequence[str], doc: str = "") -> onnx.ModelProto:
        """Close the graph over ``outputs`` and wrap it in a ModelProto.

        Args:
            outputs: tensor names that become graph outputs, in order.
            doc: model docstring (what the network is, deviations from the paper).

        Returns:
            The model, with value_info for every intermediate tensor.
        """
        out_set = set(outputs)
        value_info = [
            helper.make_tensor_value_info(n.output[0], self.shapes[n.output[0]][1], list(self.shape(n.output[0])))
            for n in self.nodes
            if n.output[0] not in out_set
        ]
        graph = helper.make_graph(
            self.nodes,
            self.name,
            self.inputs,
            [helper.make_tensor_value_info(o, self.shapes[o][1], list(self.shape(o))) for o in outputs],
            value_info=value_info,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="nscompile.zoo",
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        # Initializers are filled in place, after make_model, which copies its graph.
        for init in self.initializers:
            if isinstance(init, TensorProto):
                model.graph.initializer.append(init)
            else:
                self._fill(model.graph.initializer.add(), *init)
        return model
