"""nscompile serve: the v2 endpoints, request validation (4xx, never 500, never a crash),
the load report under real concurrency, and the config.pbtxt reader."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest

from helpers import ServerThread, make_handmade_build, nscompile_cmd, reference
from nscompile.errors import NscompileError
from nscompile.runtime.protocol import HEADER_LENGTH, decode_response, encode_request

MODEL = "tiny_suffix_relu1"  # inputs relu1 [1,8,32,32] and scale [1,10]; output prob


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return make_handmade_build(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(build):
    from nscompile.serve import create_app

    s = ServerThread(create_app(build / "cloud", concurrency=1, max_body_bytes=1 << 20, max_queue=6))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=10) as c:
        yield c


def good_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return {"relu1": rng.random((1, 8, 32, 32), dtype=np.float32), "scale": np.ones((1, 10), np.float32)}


def infer(client, url, model=MODEL, inputs=None, **kw):
    body, headers = encode_request(inputs or good_inputs(), **kw)
    return client.post(f"{url}/v2/models/{model}/infer", content=body, headers=headers)


def expected_prob(build, inputs):
    return reference(build / "cloud" / MODEL / "1" / "model.onnx", inputs)["prob"]


def assert_still_serving(client, server, build):
    r = infer(client, server.url)
    assert r.status_code == 200, r.text
    _, out = decode_response(r.content, r.headers[HEADER_LENGTH])
    np.testing.assert_allclose(out["prob"], expected_prob(build, good_inputs()), rtol=1e-5, atol=1e-6)


def test_health_metadata_config(server, client, build):
    u = server.url
    assert client.get(f"{u}/v2/health/live").status_code == 200
    assert client.get(f"{u}/v2/health/ready").status_code == 200
    meta = client.get(f"{u}/v2").json()
    assert "binary_tensor_data" in meta["extensions"]
    m = client.get(f"{u}/v2/models/{MODEL}").json()
    assert m["name"] == MODEL and m["versions"] == ["1"] and m["platform"] == "onnxruntime_onnx"
    assert m["inputs"] == [{"name": "relu1", "datatype": "FP32", "shape": [1, 8, 32, 32]},
                           {"name": "scale", "datatype": "FP32", "shape": [1, 10]}]
    assert m["outputs"] == [{"name": "prob", "datatype": "FP32", "shape": [1, 10]}]
    assert client.get(f"{u}/v2/models/{MODEL}/versions/1").json() == m
    assert client.get(f"{u}/v2/models/{MODEL}/ready").status_code == 200
    cfg = client.get(f"{u}/v2/models/{MODEL}/config").json()
    sha = json.loads((build / "plan.json").read_text())["model"]["sha256"]
    assert cfg["parameters"]["nscompile_model_sha256"]["string_value"] == sha
    assert cfg["input"][0] == {"name": "relu1", "data_type": "TYPE_FP32", "dims": [1, 8, 32, 32]}
    index = client.post(f"{u}/v2/repository/index").json()
    assert sorted(i["name"] for i in index) == ["tiny_suffix_input", "tiny_suffix_relu1", "tiny_suffix_relu2"]
    load = client.get(f"{u}/v2/nscompile/load").json()
    assert load["in_flight"] == 0 and load["load"] >= 1.0 and load["concurrency"] == 1


def test_binary_infer_matches_onnxruntime_and_reports_load(server, client, build):
    x = good_inputs(3)
    r = infer(client, server.url, inputs=x, request_id="abc")
    assert r.status_code == 200
    header, out = decode_response(r.content, r.headers[HEADER_LENGTH])
    assert header["id"] == "abc" and header["model_name"] == MODEL
    assert len(r.content) == int(r.headers[HEADER_LENGTH]) + 40  # 10 float32, raw
    np.testing.assert_allclose(out["prob"], expected_prob(build, x), rtol=1e-5, atol=1e-6)
    assert float(r.headers["nscompile-load"]) >= 1.0
    assert float(r.headers["nscompile-server-ms"]) > 0
    assert r.headers["nscompile-inflight"] == "0"
    stats = client.get(f"{server.url}/v2/models/{MODEL}/stats").json()["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] >= 1 and stats["nscompile_idle_ms"] > 0


def test_json_and_gzip_requests(server, client, build):
    x = good_inputs(4)
    req = {"inputs": [{"name": n, "datatype": "FP32", "shape": list(a.shape), "data": a.reshape(-1).tolist()}
                      for n, a in x.items()]}
    r = client.post(f"{server.url}/v2/models/{MODEL}/infer", json=req)
    assert r.status_code == 200 and HEADER_LENGTH not in r.headers
    out = r.json()["outputs"][0]
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]), expected_prob(build, x), rtol=1e-5, atol=1e-6)
    body, headers = encode_request(x)
    r = client.post(f"{server.url}/v2/models/{MODEL}/infer", content=gzip.compress(body),
                    headers={**headers, "Content-Encoding": "gzip"})
    assert r.status_code == 200
    np.testing.assert_allclose(decode_response(r.content, r.headers[HEADER_LENGTH])[1]["prob"],
                               expected_prob(build, x), rtol=1e-5, atol=1e-6)


def _binary(header: dict, *arrays) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + b"".join(a.tobytes() for a in arrays), {HEADER_LENGTH: str(len(head))}


def _entry(name, shape, size, datatype="FP32"):
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


BAD_REQUESTS = {
    "not json": (b"{nope", {HEADER_LENGTH: "5"}, 400, "malformed"),
    "not an object": (b"[1, 2]", {}, 400, "object"),
    "header length past body": (b"{}", {HEADER_LENGTH: "99"}, 400, "Inference-Header-Content-Length"),
    "header length not a number": (b"{}", {HEADER_LENGTH: "x"}, 400, "not an integer"),
    "wrong shape": (*_binary({"inputs": [_entry("relu1", [1, 8, 16, 16], 8192), _entry("scale", [1, 10], 40)]},
                             np.zeros((1, 8, 16, 16), np.float32), np.ones((1, 10), np.float32)), 400, "shape"),
    "wrong datatype": (*_binary({"inputs": [_entry("relu1", [1, 8, 32, 32], 65536, "FP64"), _entry("scale", [1, 10], 40)]},
                                np.zeros((1, 8, 32, 32), np.float64), np.ones((1, 10), np.float32)), 400, "FP64"),
    "byte count lies": (*_binary({"inputs": [_entry("relu1", [1, 8, 32, 32], 100), _entry("scale", [1, 10], 40)]},
                                 np.zeros(25, np.float32), np.ones((1, 10), np.float32)), 400, "binary_data_size"),
    "body too short": (*_binary({"inputs": [_entry("relu1", [1, 8, 32, 32], 32768), _entry("scale", [1, 10], 40)]},
                                np.zeros(100, np.float32)), 400, "only"),
    "bytes left over": (*_binary({"inputs": [_entry("relu1", [1, 8, 32, 32], 32768), _entry("scale", [1, 10], 40)]},
                                 np.zeros((1, 8, 32, 32), np.float32), np.ones((1, 11), np.float32)), 400, "no input claims"),
    "missing input": (*_binary({"inputs": [_entry("relu1", [1, 8, 32, 32], 32768)]},
                               np.zeros((1, 8, 32, 32), np.float32)), 400, "needs input 'scale'"),
    "unknown input": (*_binary({"inputs": [_entry("relu1", [1, 8, 32, 32], 32768), _entry("scale", [1, 10], 40),
                                           _entry("zz", [1], 4)]},
                               np.zeros((1, 8, 32, 32), np.float32), np.ones((1, 10), np.float32), np.ones(1, np.float32)),
                      400, "no input 'zz'"),
    "duplicate input": (*_binary({"inputs": [_entry("scale", [1, 10], 40), _entry("scale", [1, 10], 40)]},
                                 np.ones((1, 10), np.float32), np.ones((1, 10), np.float32)), 400, "twice"),
    "negative dim": (*_binary({"inputs": [_entry("scale", [1, -10], 40)]}, np.ones((1, 10), np.float32)), 400, "non-negative"),
    "BYTES datatype": (*_binary({"inputs": [_entry("scale", [1], 3, "BYTES")]}, np.zeros(3, np.uint8)), 400, "not supported"),
    "unknown output": (*_binary({"inputs": [_entry("relu1", [1, 8, 32, 32], 32768), _entry("scale", [1, 10], 40)],
                                 "outputs": [{"name": "nope"}]},
                                np.zeros((1, 8, 32, 32), np.float32), np.ones((1, 10), np.float32)), 400, "no output 'nope'"),
    "JSON data count wrong": (json.dumps({"inputs": [{"name": "scale", "datatype": "FP32", "shape": [1, 10], "data": [1, 2]}]}).encode(),
                              {}, 400, "holds 2"),
    "bad encoding": (b"{}", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    "bad gzip": (b"not gzip", {"Content-Encoding": "gzip"}, 400, "decompress"),
    "gzip bomb": (gzip.compress(bytes(4 << 20)), {"Content-Encoding": "gzip"}, 413, "cap"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_4xx_and_server_keeps_serving(server, client, build, case):
    body, headers, status, words = BAD_REQUESTS[case]
    r = client.post(f"{server.url}/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert r.status_code == status, (r.status_code, r.text)
    assert words in r.json()["error"], r.json()
    assert_still_serving(client, server, build)


def test_unknown_model_and_version(server, client, build):
    r = infer(client, server.url, model="nope")
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    assert client.get(f"{server.url}/v2/models/nope").status_code == 404
    assert client.get(f"{server.url}/v2/models/{MODEL}/versions/7").status_code == 404
    body, headers = encode_request(good_inputs())
    r = client.post(f"{server.url}/v2/models/{MODEL}/versions/7/infer", content=body, headers=headers)
    assert r.status_code == 404
    assert_still_serving(client, server, build)


def test_oversized_requests_are_refused_before_reading(server, client, build):
    big = bytes((1 << 20) + 1)
    r = client.post(f"{server.url}/v2/models/{MODEL}/infer", content=big, headers={HEADER_LENGTH: "2"})
    assert r.status_code == 413 and "cap" in r.json()["error"]

    def chunks():  # no Content-Length: the cap is enforced while streaming
        for _ in range(40):
            yield bytes(64 << 10)

    r = client.post(f"{server.url}/v2/models/{MODEL}/infer", content=chunks(), headers={HEADER_LENGTH: "2"})
    assert r.status_code == 413
    assert_still_serving(client, server, build)


def test_load_report_and_isolation_under_concurrency(server, client, build):
    """Three slow requests on one slot: the load report shows the queue, health stays fast,
    and past max_queue new requests get 503 instead of piling up."""
    entry = server.app.state.models[MODEL]
    assert_still_serving(client, server, build)  # session loaded
    real = entry.session
    release = threading.Event()

    class HeldSession:
        """Every run waits until the test releases it: the slot stays busy for as long as the test needs."""

        def run(self, *a, **kw):
            release.wait(timeout=30)  # bounded, should the test fail before releasing
            return real.run(*a, **kw)

    entry.session = HeldSession()
    results = []
    threads = [threading.Thread(target=lambda: results.append(infer(httpx.Client(timeout=10), server.url).status_code))
               for _ in range(3)]
    held_since = time.monotonic()
    try:
        for t in threads:
            t.start()
        for _ in range(100):  # bounded: until all three are admitted
            if server.app.state.load.in_flight >= 3:
                break
            time.sleep(0.01)
        assert server.app.state.load.in_flight == 3
        # Not stuck behind the busy inference slot: health answers while all three are still held.
        assert client.get(f"{server.url}/v2/health/ready").status_code == 200
        assert server.app.state.load.in_flight == 3
        report = client.get(f"{server.url}/v2/nscompile/load").json()
        assert report["in_flight"] == 3 and report["queue_depth"] >= 1, report
        assert report["load"] >= 3.0, report  # a new request would wait for three
        for _ in range(3):
            server.app.state.load.enter()  # fill the admission queue (max_queue=6)
        try:
            r = infer(client, server.url)
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        finally:
            for _ in range(3):
                server.app.state.load.exit()
    finally:
        time.sleep(max(0.0, held_since + 0.4 - time.monotonic()))  # each slow request takes at least 0.4 s
        release.set()
        for t in threads:
            t.join(timeout=10)
        entry.session = real
    assert results == [200, 200, 200]
    # Each slow request reads as a large slowdown against the profiled idle time.
    ratios = [r for _, r in server.app.state.load._samples][-3:]
    assert len(ratios) == 3 and min(ratios) > 50, ratios
    assert_still_serving(client, server, build)


def test_broken_model_is_unavailable_not_a_crash(build, tmp_path, client):
    from nscompile.serve import create_app

    repo = tmp_path / "cloud"
    shutil.copytree(build / "cloud", repo)
    (repo / MODEL / "1" / "model.onnx").write_bytes(b"not onnx")
    srv = ServerThread(create_app(repo))
    try:
        r = infer(client, srv.url)
        assert r.status_code == 503 and "cannot load" in r.json()["error"]
        assert client.get(f"{srv.url}/v2/models/{MODEL}/ready").status_code == 503
        x = {"relu1": good_inputs()["relu1"], "relu2": good_inputs()["relu1"], "scale": good_inputs()["scale"]}
        assert infer(client, srv.url, model="tiny_suffix_relu2", inputs=x).status_code == 200
    finally:
        srv.stop()


def test_models_load_and_unload_on_demand(build, client):
    """Triton's repository extension: a model left out of ``preload`` loads when asked (or on first
    use) and unloads to free its memory; one loaded on a busy server does not feed the load report."""
    from nscompile.serve import create_app

    app = create_app(build / "cloud", preload=[])
    srv = ServerThread(app)
    entry = app.state.models[MODEL]
    try:
        assert entry.session is None
        assert client.post(f"{srv.url}/v2/repository/models/{MODEL}/load").status_code == 200
        assert entry.session is not None and entry.idle_ms is not None and entry.counts_for_load
        assert client.post(f"{srv.url}/v2/repository/models/{MODEL}/unload").status_code == 200
        assert entry.session is None and entry.idle_ms is None
        r = infer(client, srv.url)  # loads again on first use
        assert r.status_code == 200 and entry.session is not None
        np.testing.assert_allclose(decode_response(r.content, r.headers[HEADER_LENGTH])[1]["prob"], expected_prob(build, good_inputs()), rtol=1e-5)
        entry.unload()
        app.state.load.in_flight += 1  # another client's request is running while the model loads
        try:
            assert client.post(f"{srv.url}/v2/repository/models/{MODEL}/load").status_code == 200
        finally:
            app.state.load.in_flight -= 1
        assert not entry.counts_for_load
        before = len(app.state.load._samples)
        assert infer(client, srv.url).status_code == 200
        assert len(app.state.load._samples) == before
        assert client.post(f"{srv.url}/v2/repository/models/nosuch/load").status_code == 404
    finally:
        srv.stop()
    with pytest.raises(NscompileError, match="--preload names 'nosuch'"):
        create_app(build / "cloud", preload=["nosuch"])


def test_repository_errors(tmp_path, build):
    from nscompile.serve.repository import read_repository

    with pytest.raises(NscompileError, match="not a directory"):
        read_repository(tmp_path / "nope")
    with pytest.raises(NscompileError, match="holds no model"):
        read_repository(tmp_path)
    repo = tmp_path / "cloud"
    shutil.copytree(build / "cloud", repo)
    shutil.move(repo / MODEL, repo / "renamed")
    with pytest.raises(NscompileError, match="names the model 'tiny_suffix_relu1' but its directory is 'renamed'"):
        read_repository(repo)
    out = subprocess.run([*nscompile_cmd(), "serve", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "not a directory" in out.stderr and "Traceback" not in out.stderr


def test_pbtxt_reader():
    from nscompile.serve.pbtxt import parse_pbtxt

    text = '''
    name: "m"  # a comment
    platform: "onnxruntime_onnx"
    max_batch_size: 0
    input [ { name: "x" data_type: TYPE_FP32 dims: [ 1, 3, -1 ] }, { name: "y", data_type: TYPE_INT64, dims: 4 } ]
    output { name: "z" data_type: TYPE_FP16 dims: [2] dims: 3 }
    parameters { key: "k" value: { string_value: "a\\"b" } }
    instance_group [ { kind: KIND_CPU count: 2 } ]
    optimization < graph { level: -1 } >
    dynamic_batching { }
    '''
    cfg = parse_pbtxt(text)
    assert cfg["name"] == ["m"] and cfg["max_batch_size"] == [0]
    assert cfg["input"][0] == {"name": ["x"], "data_type": ["TYPE_FP32"], "dims": [1, 3, -1]}
    assert cfg["input"][1]["dims"] == [4]
    assert cfg["output"][0]["dims"] == [2, 3]
    assert cfg["parameters"][0]["value"][0]["string_value"] == ['a"b']
    assert cfg["optimization"][0]["graph"][0]["level"] == [-1]
    assert cfg["dynamic_batching"] == [{}]
    with pytest.raises(NscompileError, match=r"config.pbtxt:2: cannot parse"):
        parse_pbtxt('name: "m"\n  @@@')
    with pytest.raises(NscompileError, match="missing"):
        parse_pbtxt("input { name: 'x'")
