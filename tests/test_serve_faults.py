"""Faults on the cloud side, with real server processes: kill -9 with 16 SplitRunner threads in
flight (one shared runner) and the restart, SIGTERM while 48 requests are in flight (the drain),
and a model whose session cannot load."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import (ServerProcess, check_kill_and_restart, make_handmade_build, reference, sample_inputs,
                     through_kill_and_restart)
from nscompile.runtime.protocol import HEADER_LENGTH, decode_response, encode_request

pytestmark = pytest.mark.slow  # real server processes



@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return make_handmade_build(tmp_path_factory.mktemp("faults"))


# ---------------------------------------------------------------------------------------
# kill -9 with 16 threads sharing one SplitRunner, then a restart
# ---------------------------------------------------------------------------------------


def test_kill9_with_16_threads_on_one_runner_and_restart(build):
    """Every call of every thread returns the whole model's outputs while nscompile serve is
    killed and restarted; the shared runner uses the restarted server again within its back-off."""
    from nscompile.runtime import SplitRunner

    servers = [ServerProcess(build / "cloud")]
    port = servers[0].port
    # Default back-off (0.5 s doubling to 30 s): what a device sees.
    runner = SplitRunner(build / "device", servers[0].url, bandwidth_mbps=500.0, load=1.0, deadline_ms=2000)
    try:
        out = through_kill_and_restart(runner, build, servers[0].kill,
                                       lambda: servers.append(ServerProcess(build / "cloud", port)))
    finally:
        runner.close()
        for srv in servers:
            srv.kill()
    check_kill_and_restart(out, "nscompile serve")


# ---------------------------------------------------------------------------------------
# SIGTERM: drain
# ---------------------------------------------------------------------------------------

SLOW_DIM = 1024


def slow_repository(root: Path, depth: int = 120) -> Path:
    """cloud/slow: a chain of 1024x1024 MatMul+Tanh (one shared weight), ~50 ms a request on one thread."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.normal(0, 1, (SLOW_DIM, SLOW_DIM)) / np.sqrt(SLOW_DIM)).astype(np.float32), "w")
    nodes, prev = [], "x"
    for i in range(depth):
        nodes += [helper.make_node("MatMul", [prev, "w"], [f"m{i}"]), helper.make_node("Tanh", [f"m{i}"], [f"t{i}"])]
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SLOW_DIM])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, SLOW_DIM])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    cloud = root / "cloud"
    (cloud / "slow" / "1").mkdir(parents=True)
    onnx.save(model, cloud / "slow" / "1" / "model.onnx")
    (cloud / "slow" / "config.pbtxt").write_text(
        'name: "slow"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1, {SLOW_DIM} ] }} ]\n'
        f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1, {SLOW_DIM} ] }} ]\n')
    return cloud


def _raw_request(port: int, body: bytes, headers: dict) -> tuple[socket.socket, bytes]:
    """An infer request as raw bytes on a fresh connection: (socket, everything to send)."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Content-Length": str(len(body)), "Host": "x"}.items())
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    return sock, f"POST /v2/models/slow/infer HTTP/1.1\r\n{head}\r\n".encode() + body


def _read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the headers: {data[:200]!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_sigterm_drains_in_flight_and_exits_0(tmp_path):
    """SIGTERM with 48 requests in flight, an idle keep-alive connection and an upload half sent:
    every request sent before the signal is answered right, ready turns 503 at once, new
    connections are still answered during the drain, and the server exits 0 after it."""
    cloud = slow_repository(tmp_path)
    drain_s = 3.0
    srv = ServerProcess(cloud, None, "--threads", "1", "--drain-seconds", str(drain_s))
    x = np.random.default_rng(1).normal(size=(1, SLOW_DIM)).astype(np.float32)
    want = reference(cloud / "slow" / "1" / "model.onnx", {"x": x})["y"]
    body, headers = encode_request({"x": x})
    results: dict[str, object] = {}

    def answer_ok(r: httpx.Response) -> bool:
        return r.status_code == 200 and np.allclose(decode_response(r.content, r.headers[HEADER_LENGTH])[1]["y"], want,
                                                    rtol=1e-4, atol=1e-5)

    def one(k: int, gate: threading.Barrier) -> None:
        with httpx.Client(timeout=60) as c:
            gate.wait()
            try:
                results[f"flight{k}"] = answer_ok(c.post(f"{srv.url}/v2/models/slow/infer", content=body, headers=headers))
            except httpx.HTTPError as exc:
                results[f"flight{k}"] = repr(exc)

    try:
        keep_alive = httpx.Client(timeout=60)
        assert answer_ok(keep_alive.post(f"{srv.url}/v2/models/slow/infer", content=body, headers=headers))
        half_sock, half_bytes = _raw_request(srv.port, body, headers)
        half_sock.sendall(half_bytes[: len(half_bytes) // 2])
        gate = threading.Barrier(49)
        flights = [threading.Thread(target=one, args=(k, gate)) for k in range(48)]
        for t in flights:
            t.start()
        gate.wait()
        with httpx.Client(timeout=10) as c:
            for _ in range(500):  # bounded: until the server holds most of them (48 take ~2.5 s to answer)
                if c.get(f"{srv.url}/v2/nscompile/load").json()["in_flight"] >= 44:
                    break
                time.sleep(0.01)
            in_flight = c.get(f"{srv.url}/v2/nscompile/load").json()["in_flight"]
        signalled = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGTERM)
        time.sleep(0.3)
        with httpx.Client(timeout=10) as c:  # a new connection, after the signal
            assert c.get(f"{srv.url}/v2/health/ready").status_code == 503
            assert c.get(f"{srv.url}/v2/models/slow/ready").status_code == 503
            assert c.get(f"{srv.url}/v2/health/live").status_code == 200
            late = c.post(f"{srv.url}/v2/models/slow/infer", content=body, headers=headers)
            assert answer_ok(late) and late.headers.get("connection") == "close"
        half_sock.sendall(half_bytes[len(half_bytes) // 2:])
        status, half_headers, half_body = _read_response(half_sock)
        results["half upload"] = status == 200 and np.allclose(
            decode_response(half_body, half_headers[HEADER_LENGTH.lower()])[1]["y"], want, rtol=1e-4, atol=1e-5)
        idle = keep_alive.post(f"{srv.url}/v2/models/slow/infer", content=body, headers=headers)
        results["idle keep-alive"] = answer_ok(idle)
        for t in flights:
            t.join(timeout=60)
        code = srv.proc.wait(timeout=drain_s + 40)
        stopped_s = time.monotonic() - signalled
    finally:
        keep_alive.close()
        half_sock.close()
        srv.kill()
    print(f"\nSIGTERM with {in_flight} in flight: {sum(v is True for v in results.values())}/{len(results)} answered right; "
          f"exit {code} after {stopped_s:.2f} s")
    assert in_flight >= 32  # most of the 48: the rest were answered before the signal
    assert {k: v for k, v in results.items() if v is not True} == {}
    assert code == 0
    assert drain_s <= stopped_s < drain_s + 10


def test_sigterm_with_no_drain_stops_at_once(tmp_path):
    srv = ServerProcess(slow_repository(tmp_path, depth=1), None, "--drain-seconds", "0")
    try:
        t = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGTERM)
        srv.proc.wait(timeout=20)
        assert time.monotonic() - t < 3.0
    finally:
        srv.kill()


# ---------------------------------------------------------------------------------------
# A model that cannot load
# ---------------------------------------------------------------------------------------


def test_model_failing_at_load_is_not_ready_and_others_serve(build, tmp_path):
    repo = tmp_path / "cloud"
    shutil.copytree(build / "cloud", repo)
    (repo / "tiny_suffix_relu1" / "1" / "model.onnx").write_bytes(b"not onnx")
    srv = ServerProcess(repo)  # starts (and reports ready) although one model is broken
    try:
        with httpx.Client(timeout=10) as c:
            assert c.get(f"{srv.url}/v2/models/tiny_suffix_relu1/ready").status_code == 503
            assert c.get(f"{srv.url}/v2/models/tiny_suffix_input/ready").status_code == 200
            index = {m["name"]: m["state"] for m in c.post(f"{srv.url}/v2/repository/index").json()}
            assert index == {"tiny_suffix_input": "READY", "tiny_suffix_relu1": "UNAVAILABLE", "tiny_suffix_relu2": "READY"}
            x = sample_inputs(3)
            body, headers = encode_request(x)
            r = c.post(f"{srv.url}/v2/models/tiny_suffix_input/infer", content=body, headers=headers)
            assert r.status_code == 200
            got = decode_response(r.content, r.headers[HEADER_LENGTH])[1]
            np.testing.assert_allclose(got["prob"], reference(build.parent / "tiny.onnx", x)["prob"], rtol=1e-5, atol=1e-6)
            body, headers = encode_request({"relu1": np.zeros((1, 8, 32, 32), np.float32), "scale": x["scale"]})
            r = c.post(f"{srv.url}/v2/models/tiny_suffix_relu1/infer", content=body, headers=headers)
            assert r.status_code == 503 and "cannot load" in json.loads(r.content)["error"]
    finally:
        srv.kill()
