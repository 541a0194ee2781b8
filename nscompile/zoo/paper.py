"""The eight networks of Neurosurgeon's evaluation (Kang et al., ASPLOS 2017, Table 3).

Neurosurgeon ran the Caffe networks of the Tonic suite (Hauswald et al., "DjiNN and
Tonic", ISCA 2015). Each builder follows that suite's deploy prototxt layer by layer,
with the layer names the paper's figures use (``conv1``, ``relu1``, ``pool1``, ...,
``fc8``, ``prob``, ``argmax``), and the layer sizes of the original architecture papers.
Layers ONNX needs more than one node for are named ``<layer>/<helper>`` (see
:mod:`nscompile.zoo._builder`), so :func:`nscompile.zoo.stats.count_layers` reproduces
the table's layer counts: IMC 24, VGG 46, FACE 10, DIG 9, ASR 13, POS/NER/CHK 3.

Every builder takes ``small``: the same layers with narrower widths (and, where noted,
a smaller input), so that tests run in seconds.
"""

from __future__ import annotations

import math

import numpy as np

from nscompile.zoo._builder import INT64, Net


def _w(c: int, small: bool, div: int = 8, floor: int = 4) -> int:
    """Channel width: the real one, or divided by ``div`` for the small variant."""
    return max(floor, c // div) if small else c


def _classifier_head(net: Net, x: str) -> list[str]:
    """Softmax ``prob`` then ``argmax``: Tonic's nets end with both; both are outputs."""
    prob = net.softmax("prob", x)
    return [prob, net.argmax("argmax", prob)]


def alexnet(net: Net, small: bool) -> list[str]:
    """AlexNet as Tonic's IMC (Caffe's bvlc_reference_caffenet order: pool before norm).

    227x227 input, grouped conv2/4/5 as in Krizhevsky et al. 2012; 24 layers counting
    the two Dropouts (identities at inference) and the final ArgMax.
    """
    w = lambda c: _w(c, small)  # noqa: E731
    x = net.input("data", (1, 3, 227, 227))
    x = net.relu("relu1", net.conv("conv1", x, w(96), 11, stride=4))
    x = net.lrn("norm1", net.maxpool("pool1", x, 3, 2))
    x = net.relu("relu2", net.conv("conv2", x, w(256), 5, pad=2, group=2))
    x = net.lrn("norm2", net.maxpool("pool2", x, 3, 2))
    x = net.relu("relu3", net.conv("conv3", x, w(384), 3, pad=1))
    x = net.relu("relu4", net.conv("conv4", x, w(384), 3, pad=1, group=2))
    x = net.relu("relu5", net.conv("conv5", x, w(256), 3, pad=1, group=2))
    x = net.maxpool("pool5", x, 3, 2)
    x = net.dropout("drop6", net.relu("relu6", net.fc("fc6", x, _w(4096, small, 16))))
    x = net.dropout("drop7", net.relu("relu7", net.fc("fc7", x, _w(4096, small, 16))))
    return _classifier_head(net, net.fc("fc8", x, _w(1000, small, 10), gain=1.0))


def _vgg(net: Net, small: bool, convs_per_stage: tuple[int, ...]) -> list[str]:
    side = 64 if small else 224  # small: 5 pools still leave a 2x2 map
    x = net.input("data", (1, 3, side, side))
    for stage, (n, c) in enumerate(zip(convs_per_stage, (64, 128, 256, 512, 512)), start=1):
        for i in range(1, n + 1):
            x = net.relu(f"relu{stage}_{i}", net.conv(f"conv{stage}_{i}", x, _w(c, small), 3, pad=1))
        x = net.maxpool(f"pool{stage}", x, 2, 2)
    x = net.dropout("drop6", net.relu("relu6", net.fc("fc6", x, _w(4096, small, 16))))
    x = net.dropout("drop7", net.relu("relu7", net.fc("fc7", x, _w(4096, small, 16))))
    return _classifier_head(net, net.fc("fc8", x, _w(1000, small, 10), gain=1.0))


def vgg19(net: Net, small: bool) -> list[str]:
    """VGG-19 (Simonyan & Zisserman 2015, configuration E): the paper's VGG.

    Neurosurgeon's "VGG" is Tonic's vgg.prototxt, which has 16 conv layers (VGG-19);
    with ReLUs, pools, fc6-8, two Dropouts, prob and argmax that is the table's 46
    layers. Small: 64x64 input, widths / 8.
    """
    return _vgg(net, small, (2, 2, 4, 4, 4))


def vgg16(net: Net, small: bool) -> list[str]:
    """VGG-16 (configuration D), the variant deployed today; 40 layers by the same rule."""
    return _vgg(net, small, (2, 2, 3, 3, 3))


def _local(net: Net, name: str, x: str, cout: int, k: int, stride: int = 1) -> str:
    """Locally connected layer (DeepFace L4-L6): a convolution with unshared weights.

    ONNX has no such operator, so it is spelled exactly: ``<name>/flatten`` turns the
    input into a vector, ``<name>/unfold`` gathers every output location's receptive
    field with a constant index table (one Gather, no arithmetic), ``<name>`` is a batched
    MatMul of each location's patch with that location's own ``(C*k*k, cout)`` weights
    (P*C*k*k*cout MACs, the true cost), then a per-location bias and a transpose back to
    NCHW.
    """
    _, cin, h, w = net.shape(x)
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    p, ckk = oh * ow, cin * k * k
    # idx[loc, 0, c*k*k + dy*k + dx] = c*H*W + (oy*s + dy)*W + (ox*s + dx)
    oy, ox = np.divmod(np.arange(p), ow)
    c, dy, dx = np.meshgrid(np.arange(cin), np.arange(k), np.arange(k), indexing="ij")
    idx = (c.ravel() * h * w)[None, :] + ((oy * stride)[:, None] + dy.ravel()[None, :]) * w
    idx = idx + (ox * stride)[:, None] + dx.ravel()[None, :]
    # int32 halves the table of L4 (3025 x 1296 entries at full size).
    index = net.const(idx.reshape(p, 1, ckk).astype(np.int32), name=f"{name}.unfold_index")
    flat = net.reshape(f"{name}/flatten", x, (cin * h * w,))
    patches = net.node("Gather", f"{name}/unfold", [flat, index], (p, 1, ckk), axis=0)
    weight = net.param(f"{name}.weight", (p, ckk, cout), 1.0 / math.sqrt(ckk))
    y = net.node("MatMul", name, [patches, weight], (p, 1, cout))
    y = net.add(f"{name}/bias", y, net.param(f"{name}.bias", (p, 1, cout), 0.01))
    y = net.transpose(f"{name}/transpose", y, (1, 2, 0))
    return net.reshape(f"{name}/reshape", y, (1, cout, oh, ow))


def deepface(net: Net, small: bool) -> list[str]:
    """DeepFace (Taigman et al., CVPR 2014) as Tonic's FACE: C1, M2, C3, L4, L5, L6, F7, F8.

    Locally connected layers are exact (see :func:`_local`), with 4030 identities as in
    the DeepFace paper (Tonic trained 1710). Like Tonic's face.prototxt, which the
    paper's 10 layers count, there are no ReLUs between layers. Small: 76x76 input,
    widths / 8.
    """
    side = 76 if small else 152
    x = net.input("data", (1, 3, side, side))
    x = net.conv("conv1", x, _w(32, small), 11, gain=1.0)
    x = net.maxpool("pool2", x, 3, 2, ceil=True)  # 142 -> 71, as in the paper
    x = net.conv("conv3", x, _w(16, small), 9, gain=1.0)
    x = _local(net, "local4", x, _w(16, small), 9)
    x = _local(net, "local5", x, _w(16, small), 7, stride=2)
    x = _local(net, "local6", x, _w(16, small), 5)
    x = net.fc("fc7", x, _w(4096, small, 16), gain=1.0)
    return _classifier_head(net, net.fc("fc8", x, _w(4030, small, 16), gain=1.0))


def lenet(net: Net, small: bool) -> list[str]:
    """LeNet-5 as in Caffe's MNIST example (Tonic's DIG): 28x28 digits, 9 layers.

    Already tiny (2.3 M MACs), so the small variant is the full one.
    """
    x = net.input("data", (1, 1, 28, 28))
    x = net.maxpool("pool1", net.conv("conv1", x, 20, 5, gain=1.0), 2, 2)
    x = net.maxpool("pool2", net.conv("conv2", x, 50, 5, gain=1.0), 2, 2)
    x = net.relu("relu1", net.fc("ip1", x, 500))
    return _classifier_head(net, net.fc("ip2", x, 10, gain=1.0))


def kaldi_asr(net: Net, small: bool) -> list[str]:
    """Kaldi-style DNN acoustic model (Tonic's ASR): 11 spliced frames of 40 filterbanks.

    Input ``feats`` is (1, 11, 40): the frame and +-5 context frames; ``fc1/splice``
    flattens them to 440 features. Six 2048-wide sigmoid layers, then 1706 senone
    scores (``fc7``), 13 layers as in the table. Small: 64-wide hidden layers.
    """
    x = net.input("feats", (1, 11, 40))
    x = net.reshape("fc1/splice", x, (1, 440))
    for i in range(1, 7):
        x = net.unary("Sigmoid", f"sig{i}", net.fc(f"fc{i}", x, _w(2048, small, 32), gain=1.0))
    return [net.fc("fc7", x, _w(1706, small, 32), gain=1.0)]


# SENNA (Collobert et al., JMLR 2011) feature tables per task: (input, vocabulary, dims).
# The word table is SENNA's 130,000 x 50; the others are its discrete-feature tables.
_SENNA_FEATURES = {
    "pos": [("words", 130_000, 50), ("caps", 5, 5), ("suffix", 455, 5)],
    "chk": [("words", 130_000, 50), ("caps", 5, 5), ("pos_tags", 45, 5)],
    "ner": [("words", 130_000, 50), ("caps", 5, 5)]
    + [(f"gazetteer_{g}", 2, 5) for g in ("loc", "misc", "org", "pers")],
}
_SENNA_TAGS = {"pos": 45, "chk": 42, "ner": 17}
_SENNA_WINDOW = 5


def _senna(net: Net, small: bool, task: str) -> list[str]:
    embedded = []
    for feat, vocab, dim in _SENNA_FEATURES[task]:
        vocab = min(vocab, 1000) if small else vocab
        idx = net.input(feat, (1, _SENNA_WINDOW), INT64)
        table = net.param(f"lookup.{feat}", (vocab, dim), 1.0)
        embedded.append(net.node("Gather", f"lookup/{feat}", [table, idx], (1, _SENNA_WINDOW, dim), axis=0))
    x = net.concat("lookup", embedded, axis=2)
    x = net.clip("htanh", net.fc("fc1", x, _w(300, small, 4), gain=1.0), -1.0, 1.0)
    return [net.fc("fc3", x, _SENNA_TAGS[task], gain=1.0)]


def senna_pos(net: Net, small: bool) -> list[str]:
    """SENNA part-of-speech tagger (Tonic's POS): window of 5 words -> 45 tag scores.

    ``lookup`` gathers the word, capitalisation and suffix embeddings (60 per word, 300
    per window); then ``fc1`` (300), ``htanh``, ``fc3``. Tonic did the lookup in the
    application, so the table's 3 layers exclude it. Small: 1000-word vocabulary, 75
    hidden units. Inputs are int64 indices; keep them below each table's size.
    """
    return _senna(net, small, "pos")


def senna_chk(net: Net, small: bool) -> list[str]:
    """SENNA chunker (Tonic's CHK): words, caps and POS-tag features -> 42 chunk tags."""
    return _senna(net, small, "chk")


def senna_ner(net: Net, small: bool) -> list[str]:
    """SENNA named-entity recogniser (Tonic's NER): words, caps, 4 gazetteers -> 17 tags.

    75 features per word (375 per window), as in Tonic's ner.prototxt.
    """
    return _senna(net, small, "ner")

