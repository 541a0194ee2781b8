"""Single-op (and fused-pattern) ONNX microbenchmarks sweeping each op's configuration space.

Each :class:`Case` is a tiny model: one node under test, or a pattern onnxruntime fuses
into one kernel (Conv+BatchNormalization+Relu, Conv+Add+Relu, MatMul+Add, Gemm+Relu).
Configurations are drawn from a seeded generator over realistic ranges (channel counts,
spatial sizes, kernels and strides of image CNNs; widths of fully connected and
transformer layers), with a MAC cap so that no single case runs for long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Case", "generate_cases", "count_cases", "OPSET"]

OPSET = 17


@dataclass
class Case:
    """One microbenchmark.

    Attributes:
        name: Human-readable configuration, unique within a run.
        group: What it measures: the op key for single-op cases, ``"pattern"`` for fused
            patterns (their time beyond the base kernel is attributed to the fused nodes'
            ``fused:<op>`` keys).
        model: The ONNX model (weights as initializers, one or more float inputs).
        feeds: Input name -> numpy array.
        base: For a pattern, the same model without the nodes fused into its kernel,
            timed next to it: what the fused nodes cost is the difference (a fused Clip
            adds 3% to a conv, far less than any regression's error on the conv).
        base_feeds: The base model's inputs.
    """

    name: str
    group: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    base: onnx.ModelProto | None = None
    base_feeds: dict[str, np.ndarray] | None = None


class _Builder:
    """Accumulates nodes, initializers and inputs of a small model."""

    # Set by generate_cases: the generator for weights and inputs (kept apart from the
    # configuration generator so that a dry pass draws the same configurations), and
    # whether this is a dry pass (count cases, build nothing).
    data_rng: np.random.Generator = np.random.default_rng(0)
    dry: bool = False

    def __init__(self, rng: np.random.Generator):
        self.rng = _Builder.data_rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.feeds: dict[str, np.ndarray] = {}
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def input(self, shape, dtype=np.float32, low=None, high=None) -> str:
        n = self.name("x")
        if self.dry:
            return n
        if np.issubdtype(dtype, np.integer):
            arr = self.rng.integers(low or 0, high or 2, size=shape).astype(dtype)
        else:
            arr = self.rng.standard_normal(shape).astype(dtype)
        et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        self.inputs.append(helper.make_tensor_value_info(n, et, list(shape)))
        self.feeds[n] = arr
        return n

    def weight(self, shape, positive=False, dtype=np.float32, values=None) -> str:
        n = self.name("w")
        if self.dry:
            return n
        if values is not None:
            arr = np.asarray(values, dtype=dtype)
        elif positive:
            arr = self.rng.uniform(0.5, 1.5, size=shape).astype(dtype)
        else:
            fan = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0]) if shape else 1
            arr = (self.rng.standard_normal(shape) * np.sqrt(2.0 / max(fan, 1))).astype(dtype)
        self.inits.append(numpy_helper.from_array(arr, n))
        return n

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:
        outs = [self.name("t") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, **attrs))
        return outs

    def model(self, outputs: list[str], opset: int = OPSET) -> onnx.ModelProto | None:
        if self.dry:
            return None
        g = helper.make_graph(
            self.nodes,
            "bench",
            self.inputs,
            [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
            self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        # Fill in output types so onnxruntime accepts the model.
        m = onnx.shape_inference.infer_shapes(m)
        vi = {v.name: v for v in list(m.graph.value_info)}
        new_outs = [vi.get(o, None) for o in outputs]
        if all(v is not None for v in new_outs):
            del m.graph.output[:]
            m.graph.output.extend(new_outs)
        return m


#: Elements of the largest conv input or output the sweep draws.
MAX_FEATURE_MAP = 3_300_000


def _conv_out(h, k, s, p):
    return (h + 2 * p - k) // s + 1


def _sample_conv(rng, cap):
    """A realistic Conv configuration with MACs under ``cap`` (or None)."""
    spatial = int(rng.choice([7, 12, 13, 14, 17, 24, 27, 28, 35, 55, 56, 112, 224]))
    # Channels off the 8-channel NCHWc block too (LeNet's 20 and 50), which cost the padded count.
    chans = [3, 8, 16, 20, 24, 32, 48, 50, 64, 96, 100, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 2048]
    kind = rng.choice(["dense", "dense", "dense", "dense", "pointwise", "pointwise", "depthwise", "depthwise",
                       "grouped", "grouped"])
    k = int(rng.choice([1, 3, 3, 3, 5, 7, 11])) if kind == "dense" else 1
    if kind == "depthwise":
        k = int(rng.choice([3, 3, 5]))
    if kind == "grouped":
        k = int(rng.choice([1, 1, 3]))
        spatial = int(rng.choice([7, 14, 28, 56]))
    stride = int(rng.choice([1, 1, 1, 2]))
    if k >= 7 and rng.random() < 0.5:
        stride = int(rng.choice([2, 4]))
    c_in = int(rng.choice(chans[:-2] if spatial > 28 else chans))
    c_out = int(rng.choice(chans[1:]))
    group = 1
    if kind == "depthwise":
        c_in = c_out = int(rng.choice([16, 24, 32, 64, 96, 112, 128, 144, 192, 240, 256, 384, 512, 576, 960]))
        group = c_in
    elif kind == "grouped":
        r = rng.random()
        if r < 0.25:  # ResNeXt-style: many narrow groups, 3x3
            group, k = 32, 3
            c_in = c_out = group * int(rng.choice([4, 8, 16]))
        elif r < 0.45:  # AlexNet-style: two wide groups, 3x3 or 5x5
            group, k = 2, int(rng.choice([3, 5]))
            spatial = int(rng.choice([13, 27]))
            c_in = group * int(rng.choice([48, 96, 128, 192]))
            c_out = group * int(rng.choice([64, 128, 192]))
        else:  # ShuffleNet-style: a few groups of 1x1
            group = int(rng.choice([2, 3, 4, 8]))
            c_in = group * int(rng.choice([6, 8, 16, 28, 32, 34, 60, 64, 68, 136]))
            c_out = group * int(rng.choice([6, 8, 16, 28, 32, 34, 60, 64, 68, 136]))
    pad = k // 2 if rng.random() < 0.85 else 0
    ho = _conv_out(spatial, k, stride, pad)
    if ho < 1:
        return None
    macs = c_out * ho * ho * (c_in // group) * k * k
    if macs > cap or macs < 1e4:
        return None
    # No feature map beyond a real CNN's (VGG's largest: 64 x 224 x 224, 3.2 M elements): a
    # 768-filter 1x1 conv at 224 px spends its time on 150 MB of layout copies, and the
    # conv's own cost left after taking them off fits no model's convs.
    if max(c_in * spatial * spatial, c_out * ho * ho) > MAX_FEATURE_MAP:
        return None
    return dict(spatial=spatial, c_in=c_in, c_out=c_out, k=k, stride=stride, pad=pad, group=group)


def _conv(b: _Builder, x: str, cfg, bias=True) -> str:
    w = b.weight((cfg["c_out"], cfg["c_in"] // cfg["group"], cfg["k"], cfg["k"]))
    ins = [x, w] + ([b.weight((cfg["c_out"],), positive=True)] if bias else [])
    p = cfg["pad"]
    return b.node(
        "Conv", ins, kernel_shape=[cfg["k"], cfg["k"]], strides=[cfg["stride"]] * 2,
        pads=[p, p, p, p], group=cfg["group"],
    )[0]


def _conv_cases(rng, n, cap, pattern_share=0.0) -> Iterator[Case]:
    made = 0
    tries = 0
    while made < n and tries < n * 200:
        tries += 1
        cfg = _sample_conv(rng, cap)
        if cfg is None:
            continue
        made += 1
        b = _Builder(rng)
        x = b.input((1, cfg["c_in"], cfg["spatial"], cfg["spatial"]))
        r = rng.random()
        tag = "conv"
        if r < pattern_share:
            # Fused pattern: the conv plus what onnxruntime folds into it.
            y = _conv(b, x, cfg)
            base, base_feeds = b.model([y]), dict(b.feeds)
            c = cfg["c_out"]
            which = rng.choice(["bn_relu", "relu", "bn", "add_relu", "clip", "bn_clip"])
            if which in ("bn_relu", "bn", "bn_clip"):
                y = b.node("BatchNormalization", [y, b.weight((c,), positive=True), b.weight((c,)),
                                                  b.weight((c,)), b.weight((c,), positive=True)])[0]
            if which == "add_relu":
                ho = _conv_out(cfg["spatial"], cfg["k"], cfg["stride"], cfg["pad"])
                other = b.input((1, c, ho, ho))
                y = b.node("Add", [y, other])[0]
            if which.endswith("clip"):  # ReLU6 (MobileNet): fused, but not free like Relu
                y = b.node("Clip", [y, b.weight((), values=0.0), b.weight((), values=6.0)])[0]
            elif which != "bn":
                y = b.node("Relu", [y])[0]
            tag = f"conv+{which}"
            group = "pattern"
        else:
            y = _conv(b, x, cfg, bias=rng.random() < 0.7)
            group = "Conv"  # the family key (Conv.depthwise...) comes from the features
            base = base_feeds = None
        name = (f"{tag} c{cfg['c_in']}->{cfg['c_out']} {cfg['spatial']}px k{cfg['k']} s{cfg['stride']}"
                f" p{cfg['pad']} g{cfg['group']} #{made}")
        yield Case(name, group, b.model([y]), b.feeds, base, base_feeds)


def _gemm_cases(rng, n, cap) -> Iterator[Case]:
    widths = [10, 64, 128, 256, 384, 512, 768, 1000, 1024, 2048, 3072, 4096, 9216, 25088]
    made = tries = 0
    while made < n and tries < n * 200:
        tries += 1
        m = int(rng.choice([1, 1, 1, 1, 1, 1, 2, 8, 32, 128]))
        k = int(rng.choice(widths))
        nn = int(rng.choice(widths[:-2]))
        if m * k * nn > cap or k * nn * 4 > 450e6:
            continue
        made += 1
        b = _Builder(rng)
        x = b.input((m, k))
        kind = rng.choice(["gemm", "gemm", "gemm_relu", "matmul", "matmul_add"])
        if kind.startswith("gemm"):
            y = b.node("Gemm", [x, b.weight((nn, k)), b.weight((nn,))], transB=1)[0]
        else:
            y = b.node("MatMul", [x, b.weight((k, nn))])[0]
        base = base_feeds = None
        group = "Gemm" if kind == "gemm" else "MatMul"
        if kind in ("gemm_relu", "matmul_add"):  # a fused pattern, timed next to its base
            base, base_feeds, group = b.model([y]), dict(b.feeds), "pattern"
            y = b.node("Relu", [y])[0] if kind == "gemm_relu" else b.node("Add", [y, b.weight((nn,))])[0]
        yield Case(f"{kind} {m}x{k}x{nn} #{made}", group, b.model([y]), b.feeds, base, base_feeds)
    # Small-batch layers whose weights span the caches (64 KB to 8 MB, log-spaced): there
    # the time per weight byte changes most (L2 to L3 here), and the random widths above
    # land in that range only a few times.
    for i, nbytes in enumerate(np.geomspace(64 * 2**10, 8 * 2**20, max(n // 4, 3))):
        m = int(rng.choice([1, 1, 4]))
        k = max(int(np.sqrt(nbytes / 4 * float(rng.choice([0.25, 1.0, 4.0])))), 8)
        nn = max(int(nbytes / 4 / k), 8)
        b = _Builder(rng)
        x = b.input((m, k))
        if i % 2 == 0:
            y, group = b.node("Gemm", [x, b.weight((nn, k)), b.weight((nn,))], transB=1)[0], "Gemm"
        else:
            y, group = b.node("MatMul", [x, b.weight((k, nn))])[0], "MatMul"
        yield Case(f"fc-cache {group} {m}x{k}x{nn} #{i}", group, b.model([y]), b.feeds)
    # Transformer projections: a sequence of token vectors times a weight matrix, the
    # 3-D MatMul of every BERT layer, which the random widths above rarely draw.
    for i in range(max(n // 4, 2)):
        s = int(rng.choice([16, 64, 128, 256, 512]))
        k = int(rng.choice([128, 256, 384, 512, 768, 1024]))
        nn = int(rng.choice([128, 256, 384, 512, 768, 1024, 3072]))
        if s * k * nn > cap:
            continue
        b = _Builder(rng)
        y = b.node("MatMul", [b.input((1, s, k)), b.weight((k, nn))])[0]
        yield Case(f"matmul-proj 1x{s}x{k}x{nn} #{i}", "MatMul", b.model([y]), b.feeds)
    # Stacks of fully connected layers whose weights together exceed the caches, so each
    # layer's weights come from DRAM on every run (a lone layer of a few MB stays cached
    # between runs). One sample per stack: the per-layer time of identical layers.
    for i in range(max(n // 6, 2)):
        m = int(rng.choice([1, 1, 1, 4, 16]))
        k = int(rng.choice([512, 1024, 1536, 2048, 3072]))
        # 16 and 24 MB: partly cold (see nscompile.features.COLD_FROM_BYTES); the rest all cold.
        # Up to AlexNet's and VGG's 240-550 MB of fully connected weights: a last-level
        # cache of hundreds of MB (a Xeon's 480) keeps a 128 MB stack partly warm.
        layers = int(np.ceil(float(rng.choice([16, 24, 48, 80, 128, 256, 384])) * 2**20 / (k * k * 4)))
        b = _Builder(rng)
        y = b.input((m, k))
        act = rng.random() < 0.5
        for _ in range(layers):
            y = b.node("Gemm", [y, b.weight((k, k)), b.weight((k,))], transB=1)[0]
            if act:
                y = b.node("Sigmoid" if rng.random() < 0.5 else "Relu", [y])[0]
        yield Case(f"fc-stack {layers}x{m}x{k} #{i}", "stack", b.model([y]), b.feeds)
    # Batched MatMul with a constant batched weight (locally connected layers: one small
    # matrix product per output position).
    for i in range(max(n // 6, 2)):
        pos = int(rng.choice([64, 256, 441, 625, 1024, 3025]))
        kk = int(rng.choice([27, 144, 400, 784, 1296]))
        nn = int(rng.choice([8, 16, 32, 64]))
        if pos * kk * nn * 4 > 300e6:
            continue
        b = _Builder(rng)
        x = b.input((pos, 1, kk))
        y = b.node("MatMul", [x, b.weight((pos, kk, nn))])[0]
        yield Case(f"matmul-local p{pos} k{kk} n{nn} #{i}", "MatMul", b.model([y]), b.feeds)
    # Batched MatMul of two activations (attention scores / context).
    for i in range(max(n // 3, 1)):
        heads = int(rng.choice([1, 4, 8, 12]))
        s = int(rng.choice([16, 64, 128, 256]))
        d = int(rng.choice([32, 64]))
        b = _Builder(rng)
        if i % 2:
            q = b.input((1, heads, s, s))
            kt = b.input((1, heads, s, d))
        else:
            q = b.input((1, heads, s, d))
            kt = b.input((1, heads, d, s))
        y = b.node("MatMul", [q, kt])[0]
        yield Case(f"matmul-act h{heads} s{s} d{d} #{i}", "MatMul", b.model([y]), b.feeds)


def _act_shape(rng, max_elems, vectors=False):
    """An activation shape (1, C, H, H) from a few elements (the last layers of LeNet-sized
    models) to ``max_elems``; with ``vectors``, a quarter are (1, N): fully connected
    activations, N log-uniform from 16 to 64 Ki."""
    if vectors and rng.random() < 0.25:
        return (1, int(np.exp(rng.uniform(np.log(16), np.log(min(65536, max_elems))))))
    while True:
        c = int(rng.choice([6, 16, 20, 32, 50, 64, 96, 128, 192, 256, 384, 512, 1024]))
        h = int(rng.choice([1, 4, 7, 8, 12, 14, 24, 28, 56, 112]))
        if c * h * h <= max_elems:
            return (1, c, h, h)


def _unary_cases(rng, ops, n_each, max_elems) -> Iterator[Case]:
    for op in ops:
        for i in range(n_each):
            b = _Builder(rng)
            shape = _act_shape(rng, max_elems, vectors=op != "LRN")
            x = b.input(shape)
            attrs = {}
            ins = [x]
            if op == "LeakyRelu":
                attrs["alpha"] = 0.1
            if op == "Clip":
                ins = [x, b.weight((), values=0.0), b.weight((), values=6.0)]
            if op == "LRN":
                attrs = dict(size=5, alpha=1e-4, beta=0.75, bias=1.0)
            y = b.node(op, ins, **attrs)[0]
            yield Case(f"{op} {shape} #{i}", op, b.model([y], opset=20 if op == "Gelu" else OPSET), b.feeds)


def _binary_cases(rng, n_each, max_elems) -> Iterator[Case]:
    for op in ("Add", "Mul", "Sum", "Sub", "Div"):
        for i in range(n_each):
            b = _Builder(rng)
            shape = _act_shape(rng, max_elems, vectors=True)
            x = b.input(shape)
            if op in ("Mul", "Div") and i % 2 == 0:
                other = b.weight((1, shape[1]) + (1,) * (len(shape) - 2), positive=True)  # per-channel scale
            else:
                other = b.input(shape)
            y = b.node(op, [x, other])[0]
            yield Case(f"{op} {shape} #{i}", op, b.model([y]), b.feeds)


def _pool_cases(rng, n_each, max_elems) -> Iterator[Case]:
    for op in ("MaxPool", "AveragePool"):
        for i in range(n_each):
            b = _Builder(rng)
            shape = _act_shape(rng, max_elems)
            if rng.random() < 0.3:
                shape = (1, shape[1], shape[2] * 2 - 1, shape[3] * 2 - 1)  # odd sizes (55, 27...)
            x = b.input(shape)
            k = int(rng.choice([2, 3, 3, 5, 7]))
            k = min(k, shape[2])
            s = int(rng.choice([1, 2, 2]))
            p = int(rng.choice([0, k // 2]))
            y = b.node(op, [x], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)[0]
            yield Case(f"{op} {shape} k{k} s{s} #{i}", op, b.model([y]), b.feeds)
    for op in ("GlobalAveragePool", "GlobalMaxPool"):
        for i in range(n_each // 2 + 1):
            b = _Builder(rng)
            shape = _act_shape(rng, max_elems)
            y = b.node(op, [b.input(shape)])[0]
            yield Case(f"{op} {shape} #{i}", op, b.model([y]), b.feeds)


def _norm_cases(rng, n_each, max_elems) -> Iterator[Case]:
    for i in range(n_each):
        b = _Builder(rng)
        shape = _act_shape(rng, max_elems)
        c = shape[1]
        y = b.node("BatchNormalization", [b.input(shape), b.weight((c,), positive=True), b.weight((c,)),
                                          b.weight((c,)), b.weight((c,), positive=True)])[0]
        yield Case(f"BatchNormalization {shape} #{i}", "BatchNormalization", b.model([y]), b.feeds)
    for i in range(n_each):
        b = _Builder(rng)
        s = int(rng.choice([1, 16, 64, 128, 256]))
        d = int(rng.choice([128, 256, 512, 768, 1024]))
        y = b.node("LayerNormalization", [b.input((1, s, d)), b.weight((d,), positive=True), b.weight((d,))],
                   axis=-1)[0]
        yield Case(f"LayerNormalization 1x{s}x{d} #{i}", "LayerNormalization", b.model([y]), b.feeds)
    for i in range(n_each):  # residual Add + LayerNormalization: one SkipLayerNormalization kernel
        b = _Builder(rng)
        s = int(rng.choice([1, 16, 64, 128, 256]))
        d = int(rng.choice([128, 256, 512, 768, 1024]))
        x = b.node("Add", [b.input((1, s, d)), b.input((1, s, d))])[0]
        y = b.node("LayerNormalization", [x, b.weight((d,), positive=True), b.weight((d,))], axis=-1)[0]
        yield Case(f"SkipLayerNormalization 1x{s}x{d} #{i}", "SkipLayerNormalization", b.model([y]), b.feeds)
    for i in range(n_each):
        b = _Builder(rng)
        if i % 2 == 0:
            shape = (1, int(rng.choice([10, 100, 1000, 4096, 21841])))
        else:
            shape = (1, int(rng.choice([1, 4, 8, 12])), int(rng.choice([16, 64, 128, 256])), 0)
            shape = (shape[0], shape[1], shape[2], shape[2])
        y = b.node("Softmax", [b.input(shape)], axis=-1)[0]
        yield Case(f"Softmax {shape} #{i}", "Softmax", b.model([y]), b.feeds)


def _shape_cases(rng, n_each, max_elems) -> Iterator[Case]:
    for i in range(n_each):
        b = _Builder(rng)
        shape = _act_shape(rng, max_elems)
        k = int(rng.choice([2, 2, 3, 4]))
        ins = [b.input((1, max(shape[1] // k, 1), shape[2], shape[3])) for _ in range(k)]
        y = b.node("Concat", ins, axis=1)[0]
        yield Case(f"Concat {k}x{shape} #{i}", "Concat", b.model([y]), b.feeds)
    # DenseNet-sized concats: a grown feature map (as wide as CNNs make them at its size)
    # and the few new channels of the last layer, 50 k to 1.5 M elements. The draws above
    # rarely reach past 100 k elements, and a copy that leaves the L2 cache costs 2-3x
    # more per element than one that stays in it.
    widths = {56: [64, 128, 256], 28: [128, 256, 512], 14: [256, 512, 1024], 7: [512, 1024]}
    for i in range(n_each):
        b = _Builder(rng)
        h = int(rng.choice(list(widths)))
        c_old = int(rng.choice(widths[h]))
        c_new = int(rng.choice([32, 48, 64, 128]))
        if (c_old + c_new) * h * h > max_elems:
            c_old = max(max_elems // (h * h) - c_new, 16)
        ins = [b.input((1, c_old, h, h)), b.input((1, c_new, h, h))]
        y = b.node("Concat", ins, axis=1)[0]
        yield Case(f"Concat {c_old}+{c_new}x{h}px #{i}", "Concat", b.model([y]), b.feeds)
    for i in range(n_each):
        b = _Builder(rng)
        shape = _act_shape(rng, max_elems)
        x = b.input(shape)
        which = i % 4
        if which == 0:
            y = b.node("Reshape", [x, b.weight((2,), dtype=np.int64, values=[1, -1])])[0]
            op = "Reshape"
        elif which == 1:
            y = b.node("Flatten", [x], axis=1)[0]
            op = "Flatten"
        elif which == 2:
            g = 4 if shape[1] % 4 == 0 else 2
            r = b.node("Reshape", [x, b.weight((5,), dtype=np.int64,
                                                values=[1, g, shape[1] // g, shape[2], shape[3]])])[0]
            # Channel shuffle as in ShuffleNet: the Transpose is what costs.
            b2 = _Builder(rng)
            x2 = b2.input((1, g, shape[1] // g, shape[2], shape[3]))
            y = b2.node("Transpose", [x2], perm=[0, 2, 1, 3, 4])[0]
            yield Case(f"Transpose {shape} #{i}", "Transpose", b2.model([y]), b2.feeds)
            y = r
            op = "Reshape"
        else:
            y = b.node("Transpose", [x], perm=[0, 2, 3, 1])[0]
            op = "Transpose"
        yield Case(f"{op} {shape} #{i}", op, b.model([y]), b.feeds)
    # Flatten and Reshape of tensors from a few hundred elements to full feature maps
    # (both are a copy or an alias; a handful of samples per op fits them badly).
    for op in ("Flatten", "Reshape"):
        for i in range(n_each):
            b = _Builder(rng)
            if i % 3 == 0:
                shape = (1, int(rng.choice([16, 50, 64, 256])), int(rng.choice([1, 4, 5, 7])),
                         int(rng.choice([1, 4, 5, 7])))
            else:
                shape = _act_shape(rng, max_elems)
            x = b.input(shape)
            if op == "Flatten":
                y = b.node("Flatten", [x], axis=1)[0]
            else:
                y = b.node("Reshape", [x, b.weight((2,), dtype=np.int64, values=[shape[0] * shape[1], -1])])[0]
            yield Case(f"{op} {shape} small#{i}", op, b.model([y]), b.feeds)
    # Embedding lookups, from SENNA's (a 130k-word table, 5 rows of 50) to BERT's.
    for i in range(n_each):
        b = _Builder(rng)
        d = int(rng.choice([5, 16, 50, 128, 256, 512, 768]))
        v = int(rng.choice([50, 1000, 8000, 30522, 130000]))
        v = min(v, int(64e6 // (4 * d)))  # tables of at most 64 MB
        s = int(rng.choice([1, 5, 8, 64, 128, 512]))
        idx = b.input((1, s), dtype=np.int64, low=0, high=v)
        y = b.node("Gather", [b.weight((v, d)), idx], axis=0)[0]
        yield Case(f"Gather {v}x{d} s{s} #{i}", "Gather", b.model([y]), b.feeds)
    # Element-wise gathers of an activation by constant indices (im2col of a locally
    # connected layer, written as Reshape + Gather): one scalar copied per index.
    for i in range(max(n_each // 2, 1)):
        b = _Builder(rng)
        size = int(rng.choice([4096, 10000, 48400, 63504]))
        pos = int(rng.choice([64, 441, 625, 3025]))
        kk = int(rng.choice([27, 144, 400, 1296]))
        if pos * kk > 4e6:
            kk = int(4e6 // pos)
        x = b.input((size,))
        idx = b.weight((pos, 1, kk), dtype=np.int64,
                       values=None if b.dry else b.rng.integers(0, size, size=(pos, 1, kk)))
        y = b.node("Gather", [x, idx], axis=0)[0]
        yield Case(f"Gather-elem {size} idx{pos}x{kk} #{i}", "Gather", b.model([y]), b.feeds)


def _rnn_cases(rng, n_each) -> Iterator[Case]:
    # A grid over hidden size (where the recurrent weights sit in the cache hierarchy
    # decides the per-step speed) and sequence length, inputs drawn at random; speech
    # models run 512-1024 units over 100+ frames, keyword spotters 64-128 units.
    hiddens = [64, 128, 256, 512, 768, 1024]
    seqs = [1, 10, 50, 100, 200]
    for op, gates in (("LSTM", 4), ("GRU", 3)):
        for i in range(n_each):
            b = _Builder(rng)
            hid = hiddens[i % len(hiddens)]
            seq = seqs[(i // len(hiddens)) % len(seqs)] if n_each > len(hiddens) else int(rng.choice(seqs))
            inp = int(rng.choice([32, 80, 128, 256, 440, 1024]))
            if seq * gates * hid * (inp + hid) > 2e9:
                seq = max(seq // 4, 1)
            x = b.input((seq, 1, inp))
            w = b.weight((1, gates * hid, inp))
            r = b.weight((1, gates * hid, hid))
            bias = b.weight((1, 2 * gates * hid))
            y = b.node(op, [x, w, r, bias], n_out=1, hidden_size=hid)[0]
            yield Case(f"{op} seq{seq} in{inp} h{hid} #{i}", op, b.model([y]), b.feeds)


def _codec_cases(rng, n_each, max_elems) -> Iterator[Case]:
    """The ops that encode and decode cut tensors (nscompile.encoding), at activation sizes."""
    for i in range(n_each):
        for src, dst in ((np.float32, TensorProto.FLOAT16), (np.float16, TensorProto.FLOAT)):
            b = _Builder(rng)
            shape = _act_shape(rng, max_elems, vectors=True)
            y = b.node("Cast", [b.input(shape, dtype=src)], to=dst)[0]
            yield Case(f"Cast {np.dtype(src).name} {shape} #{i}", "Cast", b.model([y]), b.feeds)
        b = _Builder(rng)
        shape = _act_shape(rng, max_elems, vectors=True)
        outs = b.node("DynamicQuantizeLinear", [b.input(shape)], n_out=3)
        yield Case(f"DynamicQuantizeLinear {shape} #{i}", "DynamicQuantizeLinear", b.model(outs), b.feeds)
        # As a suffix runs it: scale and zero point are inputs (computed per request), not constants.
        b = _Builder(rng)
        shape = _act_shape(rng, max_elems, vectors=True)
        x = b.input(shape, dtype=np.uint8, low=0, high=256)
        scale = b.name("x")
        zero = b.name("x")
        if not b.dry:
            b.inputs += [helper.make_tensor_value_info(scale, TensorProto.FLOAT, []),
                         helper.make_tensor_value_info(zero, TensorProto.UINT8, [])]
            b.feeds[scale], b.feeds[zero] = np.array(0.02, np.float32), np.array(128, np.uint8)
        y = b.node("DequantizeLinear", [x, scale, zero])[0]
        yield Case(f"DequantizeLinear {shape} #{i}", "DequantizeLinear", b.model([y]), b.feeds)


def count_cases(quick: bool, seed: int = 0) -> int:
    """How many cases :func:`generate_cases` yields (a dry pass that builds nothing)."""
    _Builder.dry = True
    try:
        return sum(1 for _ in generate_cases(quick, seed))
    finally:
        _Builder.dry = False


def generate_cases(quick: bool, seed: int = 0) -> Iterator[Case]:
    """All microbenchmarks of one profiling run, built one at a time.

    Lazily, because the largest fully connected cases hold hundreds of MB of weights.

    Args:
        quick: A small sweep (CI, tests) instead of the full one.
        seed: Seed of the configuration and data generators.

    Yields:
        The cases, convolutions first.
    """
    rng = np.random.default_rng(seed)
    _Builder.data_rng = np.random.default_rng(seed + 1)
    if quick:
        n_conv, n_pat, n_gemm, n_each, cap, max_elems = 50, 18, 16, 5, 1.5e8, 400_000
    else:
        n_conv, n_pat, n_gemm, n_each, cap, max_elems = 260, 84, 80, 12, 2.0e9, 3_300_000
    gens: list[Callable[[], Iterator[Case]]] = [
        lambda: _conv_cases(rng, n_conv, cap),
        lambda: _conv_cases(rng, n_pat, cap, pattern_share=1.0),
        lambda: _gemm_cases(rng, n_gemm, cap),
        lambda: _unary_cases(rng, ["Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "LRN", "Gelu", "Erf"], n_each,
                             max_elems),
        lambda: _binary_cases(rng, n_each, max_elems),
        lambda: _pool_cases(rng, n_each, max_elems),
        lambda: _norm_cases(rng, n_each, max_elems),
        lambda: _shape_cases(rng, n_each, max_elems),
        lambda: _rnn_cases(rng, max(n_each // 2, 1) if quick else 30),  # the full grid: 6 sizes x 5 lengths
        # Last, so that adding them drew no configuration of the cases above differently.
        lambda: _codec_cases(rng, n_each, max_elems),
    ]
    for g in gens:
        yield from g()
