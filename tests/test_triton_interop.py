"""Interop with Triton: the official tritonclient drives `nscompile serve` (a real process,
binary data), and cloud/ is checked as a Triton model repository against Triton's own
ModelConfig schema (the model_config.proto shipped inside tritonclient)."""

from __future__ import annotations

import subprocess

import httpx
import numpy as np
import pytest

from helpers import (ServerProcess, ServerThread, check_triton_repository, compiled_tiny_build, make_handmade_build,
                     make_model, nscompile_cmd, reference, sample_inputs)

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return make_handmade_build(tmp_path_factory.mktemp("triton"))


@pytest.fixture(scope="module")
def served(build):
    srv = ServerProcess(build / "cloud")
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def client(served):
    c = httpclient.InferenceServerClient(url=f"127.0.0.1:{served.port}", network_timeout=30)
    yield c
    c.close()


def test_tritonclient_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny_suffix_relu2")
    assert client.is_model_ready("tiny_suffix_relu2", "1")
    meta = client.get_model_metadata("tiny_suffix_relu2")
    assert [i["name"] for i in meta["inputs"]] == ["relu1", "relu2", "scale"]
    config = client.get_model_config("tiny_suffix_relu2")
    assert config["parameters"]["nscompile_model_sha256"]["string_value"]
    assert {m["name"] for m in client.get_model_repository_index()} == {
        "tiny_suffix_input", "tiny_suffix_relu1", "tiny_suffix_relu2"}
    stats = client.get_inference_statistics("tiny_suffix_relu2")
    assert stats["model_stats"][0]["name"] == "tiny_suffix_relu2"


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_matches_whole_model(client, build, binary):
    x = sample_inputs(7)
    want = reference(build.parent / "tiny.onnx", x)
    inputs = []
    for name, a in x.items():
        i = httpclient.InferInput(name, list(a.shape), "FP32")
        i.set_data_from_numpy(a, binary_data=binary)
        inputs.append(i)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("aux", "prob")]
    result = client.infer("tiny_suffix_input", inputs, outputs=outputs, request_id="r1")
    assert result.get_response()["id"] == "r1"
    for name in ("aux", "prob"):
        np.testing.assert_allclose(result.as_numpy(name), want[name], rtol=1e-5, atol=1e-6)
    # No outputs named: tritonclient asks for all of them in binary.
    result = client.infer("tiny_suffix_input", inputs)
    np.testing.assert_allclose(result.as_numpy("prob"), want["prob"], rtol=1e-5, atol=1e-6)


def test_tritonclient_compressed_request(client, build):
    x = sample_inputs(8)
    inputs = []
    for name, a in x.items():
        i = httpclient.InferInput(name, list(a.shape), "FP32")
        i.set_data_from_numpy(a)
        inputs.append(i)
    result = client.infer("tiny_suffix_input", inputs, request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("prob"), reference(build.parent / "tiny.onnx", x)["prob"], rtol=1e-5, atol=1e-6)


def test_tritonclient_sees_errors_as_errors(client):
    i = httpclient.InferInput("scale", [1, 11], "FP32")
    i.set_data_from_numpy(np.ones((1, 11), np.float32))
    with pytest.raises(InferenceServerException, match="needs input|shape"):
        client.infer("tiny_suffix_input", [i])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [i])
    assert client.is_server_live()


def test_cloud_is_a_valid_triton_repository(build):
    assert check_triton_repository(build / "cloud") == ["tiny_suffix_input", "tiny_suffix_relu1", "tiny_suffix_relu2"]


def test_real_build_is_a_valid_triton_repository(tmp_path):
    """The compiler's own output, built with the shipped profiles."""
    assert check_triton_repository(compiled_tiny_build(tmp_path) / "cloud")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "python"])
def test_every_zoo_build_is_a_valid_triton_repository(tmp_path, backend):
    """config.pbtxt of every zoo network's build (small size, all-cloud cut included so that
    every input signature is emitted), for both backends, parsed by Triton's own ModelConfig."""
    import onnx

    from nscompile import compiler, zoo

    for info in zoo.list_models():
        onnx.save(zoo.build_model(info.name, size="small", seed=0), tmp_path / f"{info.name}.onnx")
        out = tmp_path / f"{info.name}_{backend}"
        compiler.build(tmp_path / f"{info.name}.onnx", out, report=False, verify=False, include_all_cloud=True,
                       triton_backend=backend)
        names = check_triton_repository(out / "cloud")
        assert names and all(n.startswith(f"{info.name}_suffix_") for n in names), (info.name, names)


def test_unknown_triton_backend_is_one_line_and_writes_nothing(tmp_path):
    import onnx

    onnx.save(make_model(), tmp_path / "tiny.onnx")
    out = subprocess.run([*nscompile_cmd(), "build", str(tmp_path / "tiny.onnx"), "-o", str(tmp_path / "b"),
                          "--triton-backend", "tensorrt"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "--triton-backend 'tensorrt'" in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


def test_python_backend_build_is_served_by_nscompile_serve(tmp_path):
    """nscompile serve runs a --triton-backend python repository from its model.onnx, and
    refuses a model.py that is not nscompile's (serving the ONNX file could answer differently)."""
    import onnx

    from nscompile import compiler
    from nscompile.errors import NscompileError
    from nscompile.serve import create_app
    from nscompile.serve.repository import read_repository

    onnx.save(make_model(), tmp_path / "tiny.onnx")
    compiler.build(tmp_path / "tiny.onnx", tmp_path / "b", report=False, include_all_cloud=True, triton_backend="python")
    srv = ServerThread(create_app(tmp_path / "b" / "cloud"))
    try:
        x = sample_inputs(4)
        with httpx.Client(timeout=30) as c:
            meta = c.get(f"{srv.url}/v2/models/tiny_suffix_input").json()
            assert meta["platform"] == "python"
            assert c.get(f"{srv.url}/v2/models/tiny_suffix_input/config").json()["backend"] == "python"
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{srv.port}", network_timeout=30)
        inputs = []
        for name, a in x.items():
            i = httpclient.InferInput(name, list(a.shape), "FP32")
            i.set_data_from_numpy(a)
            inputs.append(i)
        result = client.infer("tiny_suffix_input", inputs)
        client.close()
        np.testing.assert_allclose(result.as_numpy("prob"), reference(tmp_path / "tiny.onnx", x)["prob"], rtol=1e-5, atol=1e-6)
    finally:
        srv.stop()
    (tmp_path / "b" / "cloud" / "tiny_suffix_input" / "1" / "model.py").write_text("print('mine')\n")
    with pytest.raises(NscompileError, match="not the model.py nscompile writes"):
        read_repository(tmp_path / "b" / "cloud")


def triton_like(app):
    """Our server minus its extensions: no /v2/nscompile/* endpoints, no nscompile-* headers,
    which is what a device sees when Triton serves the repository."""

    async def wrapped(scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v2/nscompile/"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return

        async def strip(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [(k, v) for k, v in message["headers"] if not k.startswith(b"nscompile-")]}
            await send(message)

        await app(scope, receive, strip)

    return wrapped


def test_split_runner_against_a_server_without_extensions(build):
    from nscompile.runtime import SplitRunner
    from nscompile.serve import create_app

    srv = ServerThread(triton_like(create_app(build / "cloud")))
    try:
        x = sample_inputs(9)
        want = reference(build.parent / "tiny.onnx", x)
        with SplitRunner(build / "device", srv.url, initial_bandwidth_mbps=500.0) as runner:
            for _ in range(3):
                got, rec = runner.run(x, with_record=True)
                assert not rec.fell_back, rec.error
                np.testing.assert_allclose(got["prob"], want["prob"], rtol=1e-5, atol=1e-6)
            assert rec.cut == "input" and rec.load == 1.0 and rec.server_ms == 0.0
            assert runner.transport.probe_supported is False
    finally:
        srv.stop()


@pytest.mark.slow
def test_serve_with_several_workers(build, served):
    """Two worker processes share one listening socket; answers are correct, and no response
    stalls on Nagle/delayed-ACK (a fixed 40 ms on Linux): measured side by side with the
    one-worker server, alternating requests, so the machine's speed cancels out."""
    import time

    import httpx

    from nscompile.runtime.protocol import HEADER_LENGTH, decode_response, encode_request

    srv = ServerProcess(build / "cloud", None, "--workers", "2", "--drain-seconds", "0")
    try:
        x = sample_inputs(10)
        want = reference(build.parent / "tiny.onnx", x)
        times: dict[str, list[float]] = {"one": [], "two": []}
        with httpx.Client(timeout=10) as c:
            for i in range(24):
                kind, url = ("one", served.url) if i % 2 else ("two", srv.url)
                body, headers = encode_request(x)
                t = time.perf_counter()
                r = c.post(f"{url}/v2/models/tiny_suffix_input/infer", content=body, headers=headers)
                times[kind].append(time.perf_counter() - t)
                assert r.status_code == 200
                np.testing.assert_allclose(decode_response(r.content, r.headers[HEADER_LENGTH])[1]["prob"],
                                           want["prob"], rtol=1e-5, atol=1e-6)
        # The fastest of a dozen answers: a stall on every response shows in the minimum, noise does not.
        assert min(times["two"][2:]) < min(times["one"][2:]) + 0.030, times
    finally:
        # SIGTERM: the supervisor stops its workers (SIGKILL would leave them running, orphaned).
        srv.proc.terminate()
        srv.proc.wait(timeout=30)
        srv.kill()
