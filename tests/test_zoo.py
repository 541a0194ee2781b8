"""The benchmark zoo: valid ONNX, runnable, deterministic, and sized like the papers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from nscompile import zoo
from nscompile.errors import NscompileError
from nscompile.zoo import _builder, paper

ALL = [m.name for m in zoo.list_models()]
PAPER = [m for m in zoo.list_models() if m.tag]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _feeds(sess: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        if i.type == "tensor(int64)":
            # Token ids: the small vocabularies hold at least 2 rows.
            feeds[i.name] = rng.integers(0, 2, size=i.shape, dtype=np.int64)
        else:
            feeds[i.name] = rng.standard_normal(i.shape).astype(np.float32)
    return feeds


def test_list_models_has_the_paper_eight_then_todays_networks():
    tags = [m.tag for m in zoo.list_models()]
    assert tags[:8] == ["IMC", "VGG", "FACE", "DIG", "ASR", "POS", "NER", "CHK"]
    assert set(ALL) >= {"resnet18", "resnet50", "mobilenetv2", "inception", "bert_mini", "speech_lstm"}
    assert all(m.name == m.name.lower() and " " not in m.name for m in zoo.list_models())


@pytest.mark.parametrize("size", zoo.SIZES)
def test_layer_counts_match_neurosurgeon_table(size):
    """Neurosurgeon's Table 3: IMC 24, VGG 46, FACE 10, DIG 9, ASR 13, POS/NER/CHK 3.

    The rule (nscompile.zoo.stats.count_layers): every layer of the Tonic suite's Caffe
    prototxt counts, in-place ReLUs, Dropouts, Softmax and ArgMax included, the input
    blob not; ONNX helper nodes named ``<layer>/<what>`` fold into their layer. SENNA's
    word lookup ran in Tonic's application, outside the network, so it is excluded.
    """
    expected = {"IMC": 24, "VGG": 46, "FACE": 10, "DIG": 9, "ASR": 13, "POS": 3, "NER": 3, "CHK": 3}
    got = {m.tag: zoo.model_stats(m.name, size).layers for m in PAPER}
    assert got == expected
    assert {m.tag: m.paper_layers for m in PAPER} == expected


def test_alexnet_layer_sequence_is_the_papers():
    model = zoo.build_model("alexnet", "small")
    layers = list(dict.fromkeys(zoo.stats.layer_of(n.name) for n in model.graph.node))
    assert layers == ["conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2", "conv3", "relu3",
                      "conv4", "relu4", "conv5", "relu5", "pool5", "fc6", "relu6", "drop6", "fc7", "relu7",
                      "drop7", "fc8", "prob", "argmax"]


def test_full_sizes_match_published_figures():
    """Parameter and MAC counts of the full networks against the literature."""
    alexnet = zoo.model_stats("alexnet", "full")
    assert (alexnet.params, alexnet.macs) == (60_965_224, 724_406_816)  # Caffe bvlc_alexnet
    vgg16 = zoo.model_stats("vgg16", "full")
    assert (vgg16.params, vgg16.macs) == (138_357_544, 15_470_264_320)
    assert zoo.model_stats("vgg19", "full").params == 143_667_240
    assert zoo.model_stats("lenet", "full").params == 431_080  # Caffe MNIST LeNet
    resnet50 = zoo.model_stats("resnet50", "full")
    assert resnet50.macs == pytest.approx(4.09e9, rel=0.02)
    # torchvision's 25,557,032 counts BN scale and shift; folded, each BN leaves a bias.
    assert resnet50.params == 25_557_032 - 26_560
    assert zoo.model_stats("resnet18", "full").macs == pytest.approx(1.81e9, rel=0.02)
    assert zoo.model_stats("mobilenetv2", "full").macs == pytest.approx(300e6, rel=0.02)
    assert zoo.model_stats("inception", "full").macs == pytest.approx(1.58e9, rel=0.02)
    # DeepFace: "more than 120 million parameters", almost all in L4-L6 and F7-F8.
    assert 115e6 < zoo.model_stats("deepface", "full").params < 125e6


@pytest.mark.parametrize("name", ALL)
def test_small_topology_equals_full(name):
    """Small keeps every node, op and connection; only widths and input size change."""

    def topology(size):
        m = zoo._build(name, size, 0, materialize=False)
        inits = {t.name for t in m.graph.initializer}
        return [(n.name, n.op_type, [i for i in n.input if i not in inits]) for n in m.graph.node]

    assert topology("small") == topology("full")


@pytest.mark.parametrize("name", ALL)
def test_small_model_is_valid_onnx_and_runs(name):
    model = zoo.build_model(name, "small", seed=0)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") and d.dim_value > 0 for d in dims), vi.name
        assert dims[0].dim_value == 1 or name == "speech_lstm"  # batch 1
    sess = _session(model)
    outs = sess.run(None, _feeds(sess))
    for out, vi in zip(outs, model.graph.output):
        assert list(out.shape) == [d.dim_value for d in vi.type.tensor_type.shape.dim]
        assert np.all(np.isfinite(out))
    if "prob" in [o.name for o in model.graph.output]:
        assert float(outs[0].sum()) == pytest.approx(1.0, abs=1e-4)


def test_same_seed_same_bytes_other_seed_other_weights():
    a = zoo.build_model("resnet18", "small", seed=0).SerializeToString()
    b = zoo.build_model("resnet18", "small", seed=0).SerializeToString()
    c = zoo.build_model("resnet18", "small", seed=1).SerializeToString()
    assert a == b
    assert a != c and len(a) == len(c)


def test_write_models_names_files_and_is_deterministic(tmp_path):
    paths = zoo.write_models(["lenet", "senna_pos"], tmp_path / "a", size="small", seed=3)
    assert [p.name for p in paths] == ["lenet_small.onnx", "senna_pos_small.onnx"]
    again = zoo.write_models(["lenet", "senna_pos"], tmp_path / "b", size="small", seed=3)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    assert zoo.model_path(tmp_path, "lenet", "full").name == "lenet.onnx"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["lenet_small.onnx", "senna_pos_small.onnx"]


def test_large_models_go_to_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "_EXTERNAL_DATA_BYTES", 0)
    (path,) = zoo.write_models(["lenet"], tmp_path, size="small")
    data_size = (tmp_path / "lenet_small.onnx.data").stat().st_size
    assert data_size > 1_000_000
    zoo.write_models(["lenet"], tmp_path, size="small")  # onnx appends to a data file: must not grow
    assert (tmp_path / "lenet_small.onnx.data").stat().st_size == data_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet_small.onnx", "lenet_small.onnx.data"]
    assert path.stat().st_size < 100_000
    onnx.checker.check_model(str(path), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = _feeds(sess)
    expected = _session(zoo.build_model("lenet", "small")).run(None, feeds)
    np.testing.assert_array_equal(sess.run(None, feeds)[0], expected[0])


def test_unknown_name_or_size_is_a_user_error(tmp_path):
    with pytest.raises(NscompileError, match="unknown zoo model 'resnet9'.*--list"):
        zoo.write_models(["lenet", "resnet9"], tmp_path)
    assert not list(tmp_path.iterdir())  # validated before writing anything
    with pytest.raises(NscompileError, match="--size small or --size full"):
        zoo.build_model("lenet", size="tiny")


def test_locally_connected_layer_matches_numpy():
    """DeepFace's unshared-weight layer against a direct loop over output locations."""
    net = _builder.Net("local", seed=5)
    x = net.input("x", (1, 3, 9, 8))
    y = paper._local(net, "local", x, cout=4, k=3, stride=2)
    model = net.model([y])
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    w, b = inits["local.weight"], inits["local.bias"]  # (P, C*k*k, cout), (P, 1, cout)
    xv = np.random.default_rng(0).standard_normal((1, 3, 9, 8)).astype(np.float32)
    got = _session(model).run(None, {"x": xv})[0]
    oh, ow = 4, 3
    want = np.zeros((1, 4, oh, ow), np.float32)
    for oy in range(oh):
        for ox in range(ow):
            patch = xv[0, :, 2 * oy:2 * oy + 3, 2 * ox:2 * ox + 3].reshape(-1)
            want[0, :, oy, ox] = patch @ w[oy * ow + ox] + b[oy * ow + ox, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert zoo.count_macs(model) == oh * ow * 27 * 4


def test_count_macs_by_hand():
    model = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 20]>
        g (float[1,3,8,8] x, float[5,1,4] seq) => (float[1,10] y, float[5,1,1,6] h) {
            c = Conv <kernel_shape = [3, 3], group = 1> (x, w)
            f = Flatten (c)
            y = Gemm <transB = 1> (f, fw)
            h = LSTM <hidden_size = 6> (seq, lw, lr)
        }
    """)
    model.graph.initializer.extend([
        helper.make_tensor("w", onnx.TensorProto.FLOAT, [2, 3, 3, 3], [0.0] * 54),
        helper.make_tensor("fw", onnx.TensorProto.FLOAT, [10, 72], [0.0] * 720),
        helper.make_tensor("lw", onnx.TensorProto.FLOAT, [1, 24, 4], [0.0] * 96),
        helper.make_tensor("lr", onnx.TensorProto.FLOAT, [1, 24, 6], [0.0] * 144),
    ])
    conv = 2 * 6 * 6 * 27
    gemm = 10 * 72
    lstm = 5 * 4 * 6 * (4 + 6)
    assert zoo.count_macs(model) == conv + gemm + lstm
    assert zoo.count_params(model) == 54 + 720 + 96 + 144


def test_cli_lists_and_writes(tmp_path):
    import nscompile.cli as cli
    from typer.testing import CliRunner

    runner = CliRunner()
    res = runner.invoke(cli.app, ["zoo", "--list", "--size", "small", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)["models"]}
    assert rows["vgg19"]["layers"] == 46 and rows["vgg19"]["tag"] == "VGG"
    res = runner.invoke(cli.app, ["zoo", "lenet", "--size", "small", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "lenet_small.onnx").exists()


@pytest.mark.parametrize("name", ALL)
def test_build_small_zoo(name, tmp_path):
    """`nscompile build` compiles every small zoo model (shipped profiles) and verifies every emitted pair."""
    from nscompile.compiler import build

    (path,) = zoo.write_models([name], tmp_path, size="small")
    result = build(path, tmp_path / "build", verify=True, report=False)
    cuts = result.plan["cuts"]
    assert cuts and (tmp_path / "build" / "plan.json").is_file()
    # Every pair checked: lossless ones by the verification, lossy ones (fp16 by default) by the accuracy gate.
    assert set(result.verification) == {c["id"] for c in cuts if c["encoding"] == "fp32"}
    assert all(c["accuracy"]["passed"] for c in cuts if c["encoding"] != "fp32")
    assert any(c["suffix"] is None for c in cuts)  # the all-device fallback is always emitted
