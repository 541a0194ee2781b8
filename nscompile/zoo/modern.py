"""Networks deployed today: DAGs (residual, inverted-residual, multi-branch, attention)
and a recurrent speech model, the shapes Neurosurgeon's chain-only partitioner could
not split.

Batch normalisation is folded into the preceding convolution's weights and bias, as
an inference export does, so the graphs hold what a device actually runs. Every
builder takes ``small``: the same topology with narrower widths and a smaller input.
"""

from __future__ import annotations

import math

import numpy as np

from nscompile.zoo._builder import INT64, Net


def _w(c: int, small: bool, div: int = 8, floor: int = 4) -> int:
    return max(floor, c // div) if small else c


# ---------------------------------------------------------------------------- ResNet
def _resnet(net: Net, small: bool, bottleneck: bool, blocks: tuple[int, ...]) -> list[str]:
    """ResNet v1.5 (stride on the 3x3 conv, as torchvision), Caffe ResNet layer names."""
    side = 64 if small else 224
    x = net.input("data", (1, 3, side, side))
    x = net.relu("conv1_relu", net.conv("conv1", x, _w(64, small), 7, stride=2, pad=3))
    x = net.maxpool("pool1", x, 3, 2, pad=1)
    expansion = 4 if bottleneck else 1
    for stage, (n, c) in enumerate(zip(blocks, (64, 128, 256, 512)), start=2):
        c = _w(c, small)
        for i in range(n):
            p = f"res{stage}{'abcdefghijklmnopqrstuvwxyz'[i]}"
            stride = 2 if i == 0 and stage > 2 else 1
            shortcut = x
            if i == 0 and (stride != 1 or net.shape(x)[1] != c * expansion):
                shortcut = net.conv(f"{p}_branch1", x, c * expansion, 1, stride=stride, gain=1.0)
            if bottleneck:
                y = net.relu(f"{p}_branch2a_relu", net.conv(f"{p}_branch2a", x, c, 1))
                y = net.relu(f"{p}_branch2b_relu", net.conv(f"{p}_branch2b", y, c, 3, stride=stride, pad=1))
                y = net.conv(f"{p}_branch2c", y, c * expansion, 1, gain=0.5)
            else:
                y = net.relu(f"{p}_branch2a_relu", net.conv(f"{p}_branch2a", x, c, 3, stride=stride, pad=1))
                y = net.conv(f"{p}_branch2b", y, c, 3, pad=1, gain=0.5)
            x = net.relu(f"{p}_relu", net.add(p, shortcut, y))
    x = net.global_avgpool("pool5", x)
    return [net.softmax("prob", net.fc("fc1000", x, _w(1000, small, 10), gain=1.0))]


def resnet18(net: Net, small: bool) -> list[str]:
    """ResNet-18 (He et al., CVPR 2016): basic blocks [2, 2, 2, 2]. Small: 64x64, widths / 8."""
    return _resnet(net, small, bottleneck=False, blocks=(2, 2, 2, 2))


def resnet50(net: Net, small: bool) -> list[str]:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3]. Small: 64x64, widths / 8."""
    return _resnet(net, small, bottleneck=True, blocks=(3, 4, 6, 3))


# ---------------------------------------------------------------------------- MobileNetV2
def _divisible(v: float, d: int = 8) -> int:
    """Round channels to a multiple of 8 the way the MobileNetV2 reference code does."""
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


def mobilenetv2(net: Net, small: bool) -> list[str]:
    """MobileNetV2 (Sandler et al., CVPR 2018), width 1.0, 224x224, ReLU6 as Clip(0, 6).

    Inverted residual blocks ``block{i}_expand`` (1x1), ``_dw`` (3x3 depthwise),
    ``_project`` (1x1 linear), with ``block{i}_add`` where the shapes allow a residual.
    Small: width multiplier 0.25, 64x64 input.
    """
    alpha = 0.25 if small else 1.0
    side = 64 if small else 224
    x = net.input("data", (1, 3, side, side))
    x = net.clip("conv1_relu6", net.conv("conv1", x, _divisible(32 * alpha), 3, stride=2, pad=1), 0.0, 6.0)
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    block = 0
    for t, c, n, s in settings:
        cout = _divisible(c * alpha)
        for i in range(n):
            p = f"block{block}"
            stride = s if i == 0 else 1
            y = x
            if t != 1:
                y = net.clip(f"{p}_expand_relu6", net.conv(f"{p}_expand", y, net.shape(x)[1] * t, 1), 0.0, 6.0)
            ch = net.shape(y)[1]
            y = net.clip(f"{p}_dw_relu6", net.conv(f"{p}_dw", y, ch, 3, stride=stride, pad=1, group=ch), 0.0, 6.0)
            y = net.conv(f"{p}_project", y, cout, 1, gain=1.0)
            # The reference adds a residual iff stride 1 and cin == cout, which in these
            # settings is every block but a group's first; deciding by position keeps the
            # small variant's topology identical even where its narrow widths coincide.
            x = net.add(f"{p}_add", x, y) if i > 0 else y
            block += 1
    last = 320 if small else 1280  # the reference keeps 1280 for alpha <= 1; small shrinks it too
    x = net.clip("conv_last_relu6", net.conv("conv_last", x, last, 1), 0.0, 6.0)
    x = net.global_avgpool("pool", x)
    x = net.dropout("dropout", x)
    return [net.softmax("prob", net.fc("fc", x, _w(1000, small, 10), gain=1.0))]


# ---------------------------------------------------------------------------- Inception
_INCEPTION = {  # name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj), from Szegedy et al.
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def _inception_module(net: Net, x: str, name: str, small: bool) -> str:
    c1, c3r, c3, c5r, c5, cp = (_w(c, small) for c in _INCEPTION[name])
    p = f"inception_{name}"
    b1 = net.relu(f"{p}_relu_1x1", net.conv(f"{p}_1x1", x, c1, 1))
    b3 = net.relu(f"{p}_relu_3x3_reduce", net.conv(f"{p}_3x3_reduce", x, c3r, 1))
    b3 = net.relu(f"{p}_relu_3x3", net.conv(f"{p}_3x3", b3, c3, 3, pad=1))
    b5 = net.relu(f"{p}_relu_5x5_reduce", net.conv(f"{p}_5x5_reduce", x, c5r, 1))
    b5 = net.relu(f"{p}_relu_5x5", net.conv(f"{p}_5x5", b5, c5, 5, pad=2))
    bp = net.maxpool(f"{p}_pool", x, 3, 1, pad=1)
    bp = net.relu(f"{p}_relu_pool_proj", net.conv(f"{p}_pool_proj", bp, cp, 1))
    return net.concat(f"{p}_output", [b1, b3, b5, bp], axis=1)


def inception(net: Net, small: bool) -> list[str]:
    """GoogLeNet / Inception v1 (Szegedy et al., CVPR 2015), bvlc_googlenet layer names.

    Nine four-branch inception modules joined by Concat; Caffe's ceil-mode pooling and
    LRN; the two auxiliary training classifiers are left out, as at inference. Small:
    64x64 input, widths / 8.
    """
    side = 64 if small else 224
    x = net.input("data", (1, 3, side, side))
    x = net.relu("conv1_relu_7x7", net.conv("conv1_7x7_s2", x, _w(64, small), 7, stride=2, pad=3))
    x = net.lrn("pool1_norm1", net.maxpool("pool1_3x3_s2", x, 3, 2, ceil=True))
    x = net.relu("conv2_relu_3x3_reduce", net.conv("conv2_3x3_reduce", x, _w(64, small), 1))
    x = net.relu("conv2_relu_3x3", net.conv("conv2_3x3", x, _w(192, small), 3, pad=1))
    x = net.maxpool("pool2_3x3_s2", net.lrn("conv2_norm2", x), 3, 2, ceil=True)
    for name in ("3a", "3b"):
        x = _inception_module(net, x, name, small)
    x = net.maxpool("pool3_3x3_s2", x, 3, 2, ceil=True)
    for name in ("4a", "4b", "4c", "4d", "4e"):
        x = _inception_module(net, x, name, small)
    x = net.maxpool("pool4_3x3_s2", x, 3, 2, ceil=True)
    for name in ("5a", "5b"):
        x = _inception_module(net, x, name, small)
    x = net.dropout("pool5_drop_7x7_s1", net.global_avgpool("pool5_7x7_s1", x))
    return [net.softmax("prob", net.fc("loss3_classifier", x, _w(1000, small, 10), gain=1.0))]


# ---------------------------------------------------------------------------- BERT
def bert_mini(net: Net, small: bool) -> list[str]:
    """BERT-mini sentence classifier (Turc et al. 2019: L=4, H=256, A=4; Devlin et al.).

    Word + position + token-type embeddings and LayerNorm; four post-norm encoder layers
    of 4-head self-attention (MatMul, scale, Softmax, MatMul) and a GELU feed-forward of
    1024; the [CLS] pooler (Gemm, Tanh) and a 2-way classifier. Sequence length 128, no
    padding mask (static shapes). Small: H=32, feed-forward 128, 16 tokens, a 1000-word
    vocabulary. Input ``input_ids`` is int64; keep ids below the vocabulary size.
    """
    layers, heads = 4, 4
    hidden, ffn = (32, 128) if small else (256, 1024)
    seq, vocab = (16, 1000) if small else (128, 30522)
    d = hidden // heads
    ids = net.input("input_ids", (1, seq), INT64)
    x = net.node("Gather", "embeddings/word", [net.param("embeddings.word", (vocab, hidden), 0.02), ids],
                 (1, seq, hidden), axis=0)
    x = net.add("embeddings/position", x, net.param("embeddings.position", (seq, hidden), 0.02))
    x = net.add("embeddings/token_type", x, net.param("embeddings.token_type", (hidden,), 0.02))
    x = net.layernorm("embeddings", x)
    scale = net.const(np.array(1.0 / math.sqrt(d), np.float32))
    for l in range(layers):
        p = f"encoder{l}"

        def heads_of(name: str, t: str, perm: tuple[int, ...]) -> str:
            t = net.reshape(f"{name}/split_heads", t, (1, seq, heads, d))
            return net.transpose(f"{name}/transpose", t, perm)

        q = heads_of(f"{p}_query", net.linear(f"{p}_query", x, hidden), (0, 2, 1, 3))
        k = heads_of(f"{p}_key", net.linear(f"{p}_key", x, hidden), (0, 2, 3, 1))
        v = heads_of(f"{p}_value", net.linear(f"{p}_value", x, hidden), (0, 2, 1, 3))
        s = net.node("MatMul", f"{p}_scores", [q, k], (1, heads, seq, seq))
        s = net.node("Mul", f"{p}_scores/scale", [s, scale], (1, heads, seq, seq))
        a = net.softmax(f"{p}_softmax", s)
        c = net.node("MatMul", f"{p}_context", [a, v], (1, heads, seq, d))
        c = net.transpose(f"{p}_context/transpose", c, (0, 2, 1, 3))
        c = net.reshape(f"{p}_context/merge_heads", c, (1, seq, hidden))
        y = net.linear(f"{p}_attention_output", c, hidden)
        x = net.layernorm(f"{p}_attention_norm", net.add(f"{p}_attention_residual", x, y))
        y = net.unary("Gelu", f"{p}_gelu", net.linear(f"{p}_intermediate", x, ffn))
        y = net.linear(f"{p}_output", y, hidden)
        x = net.layernorm(f"{p}_output_norm", net.add(f"{p}_output_residual", x, y))
    cls = net.node("Gather", "pooler/cls", [x, net.const(np.array(0, np.int64))], (1, hidden), axis=1)
    x = net.unary("Tanh", "pooler_tanh", net.fc("pooler", cls, hidden, gain=1.0))
    return [net.fc("classifier", x, 2, gain=1.0)]


# ---------------------------------------------------------------------------- speech LSTM
def speech_lstm(net: Net, small: bool) -> list[str]:
    """LSTM acoustic model: 1 s of 80-dim filterbanks (100 frames) -> per-frame CTC scores.

    Three unidirectional LSTM layers of 1024 (Graves et al. 2013 style; an LSTM
    acoustic model is what on-device recognisers shipped before transformers), then a
    linear layer to 29 characters (a-z, space, apostrophe, blank) and LogSoftmax.
    Input ``feats`` is batch-first (1, 100, 80); ``lstm1/time_major`` transposes it
    because onnxruntime's LSTM runs time-major. Small: 20 frames, hidden 32.
    """
    frames, hidden = (20, 32) if small else (100, 1024)
    x = net.input("feats", (1, frames, 80))
    x = net.transpose("lstm1/time_major", x, (1, 0, 2))
    axes = net.const(np.array([1], np.int64))
    for i in range(1, 4):
        nin = net.shape(x)[-1]
        std = 1.0 / math.sqrt(hidden)
        w = net.param(f"lstm{i}.W", (1, 4 * hidden, nin), std)
        r = net.param(f"lstm{i}.R", (1, 4 * hidden, hidden), std)
        b = net.param(f"lstm{i}.B", (1, 8 * hidden), std)
        y = net.node("LSTM", f"lstm{i}", [x, w, r, b], (frames, 1, 1, hidden), hidden_size=hidden)
        x = net.node("Squeeze", f"lstm{i}/squeeze", [y, axes], (frames, 1, hidden))
    x = net.transpose("fc/batch_major", x, (1, 0, 2))
    x = net.linear("fc", x, 29)
    return [net.unary("LogSoftmax", "log_softmax", x, axis=-1)]
