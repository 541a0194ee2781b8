"""Faults on the cloud side, with real server processes: kill -9 with 16 SplitRunner threads in
flight (one shared runner) and the restart, SIGTERM while 48 requests are in flight (the drain),
and a model whose session cannot load."""

from __future__ import annotations

import importlib.util
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

from nscompile.runtime.protocol import HEADER_LENGTH, decode_response, encode_request

_spec = importlib.util.spec_from_file_location("_nscompile_rt_helpers", Path(__file__).with_name("test_runtime.py"))
rt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rt)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return rt.make_handmade_build(tmp_path_factory.mktemp("faults"))


# ---------------------------------------------------------------------------------------
# kill -9 with 16 threads sharing one SplitRunner, then a restart
# ---------------------------------------------------------------------------------------


def through_kill_and_restart(runner, build: Path, kill, restart, *, threads: int = 16, split_cut: str = "input") -> dict:
    """``threads`` threads call one shared runner in a loop, checking every answer against the
    whole model, while ``kill()`` kills the server and ``restart()`` brings it back.

    Returns:
        ``wrong`` (messages), ``records`` [(time, cut, fell back)], and the times
        ``killed_at``, ``restart_at``, ``ready_at``.
    """
    inputs = [rt.sample_inputs(seed) for seed in range(8)]
    wants = [rt.reference(build.parent / "tiny.onnx", x) for x in inputs]
    out: dict = {"records": [], "wrong": []}
    stop = threading.Event()

    def work(k: int) -> None:
        i = k
        while not stop.is_set():
            x, want = inputs[i % len(inputs)], wants[i % len(inputs)]
            got, rec = runner.run(x, with_record=True)
            for name in want:
                if not np.allclose(got[name], want[name], rtol=1e-5, atol=1e-6):
                    out["wrong"].append(f"thread {k} call {i} ({rec.cut}, {rec.reason}): {name} differs")
            out["records"].append((time.monotonic(), rec.cut, rec.fell_back))
            i += threads

    workers = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
    try:
        for t in workers:
            t.start()
        time.sleep(1.5)
        out["killed_at"] = time.monotonic()
        kill()
        time.sleep(1.0)
        out["restart_at"] = time.monotonic()
        restart()
        out["ready_at"] = ready_at = time.monotonic()
        deadline = ready_at + 45
        while time.monotonic() < deadline:
            if any(t > ready_at and cut == split_cut and not fell for t, cut, fell in out["records"][-64:]):
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for t in workers:
            t.join(timeout=30)
    return out


def check_kill_and_restart(out: dict, what: str, split_cut: str = "input") -> float:
    """The assertions both servers must pass; returns seconds from restart until the server is used again."""
    records = out["records"]
    assert not out["wrong"], out["wrong"][:5]
    before = [r for r in records if r[0] < out["killed_at"]]
    during = [r for r in records if out["killed_at"] <= r[0] < out["ready_at"]]
    used_again = [r for r in records if r[0] > out["ready_at"] and r[1] == split_cut and not r[2]]
    assert before and all(cut == split_cut and not fell for _, cut, fell in before[-16:])
    assert any(fell for _, _, fell in during), "no call was in flight when the server died"
    assert used_again, "the runner never used the restarted server"
    back_s = used_again[0][0] - out["restart_at"]
    print(f"\n{what} kill -9: {len(records)} calls by 16 threads on one runner, all right; "
          f"{sum(f for *_, f in records)} fell back; server start {out['ready_at'] - out['restart_at']:.2f} s, "
          f"restart -> used again {back_s:.2f} s")
    # One outage is one back-off step per failed retry, not one per thread that saw it fail
    # (16 steps would be the 30 s cap). Retries double from 0.5 s, so the first one after the
    # server is back comes before twice its downtime (+ the first step and some slack).
    down_s = out["ready_at"] - out["killed_at"]
    assert used_again[0][0] - out["killed_at"] < 2 * down_s + 2.0, (back_s, down_s)
    return back_s


def test_kill9_with_16_threads_on_one_runner_and_restart(build):
    """Every call of every thread returns the whole model's outputs while nscompile serve is
    killed and restarted; the shared runner uses the restarted server again within its back-off."""
    from nscompile.runtime import SplitRunner

    servers = [rt.ServerProcess(build / "cloud")]
    port = servers[0].port
    # Default back-off (0.5 s doubling to 30 s): what a device sees.
    runner = SplitRunner(build / "device", servers[0].url, bandwidth_mbps=500.0, load=1.0, deadline_ms=2000)
    try:
        out = through_kill_and_restart(runner, build, servers[0].kill,
                                       lambda: servers.append(rt.ServerProcess(build / "cloud", port)))
    finally:
        runner.close()
        for srv in servers:
            srv.kill()
    check_kill_and_restart(out, "nscompile serve")


# ---------------------------------------------------------------------------------------
# SIGTERM: drain
# ---------------------------------------------------------------------------------------

SLOW_DIM = 1024


def slow_repository(root: Path, depth: int = 48) -> Path:
    """cloud/slow: a chain of 1024x1024 MatMul+Tanh (one shared weight), ~20 ms a request on one thread."""
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
    srv = rt.ServerProcess(cloud, None, "--threads", "1", "--drain-seconds", str(drain_s))
    x = np.random.default_rng(1).normal(size=(1, SLOW_DIM)).astype(np.float32)
    want = rt.reference(cloud / "slow" / "1" / "model.onnx", {"x": x})["y"]
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
            for _ in range(200):  # bounded: until the server holds most of them
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
    srv = rt.ServerProcess(slow_repository(tmp_path, depth=1), None, "--drain-seconds", "0")
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
    srv = rt.ServerProcess(repo)  # starts (and reports ready) although one model is broken
    try:
        with httpx.Client(timeout=10) as c:
            assert c.get(f"{srv.url}/v2/models/tiny_suffix_relu1/ready").status_code == 503
            assert c.get(f"{srv.url}/v2/models/tiny_suffix_input/ready").status_code == 200
            index = {m["name"]: m["state"] for m in c.post(f"{srv.url}/v2/repository/index").json()}
            assert index == {"tiny_suffix_input": "READY", "tiny_suffix_relu1": "UNAVAILABLE", "tiny_suffix_relu2": "READY"}
            x = rt.sample_inputs(3)
            body, headers = encode_request(x)
            r = c.post(f"{srv.url}/v2/models/tiny_suffix_input/infer", content=body, headers=headers)
            assert r.status_code == 200
            got = decode_response(r.content, r.headers[HEADER_LENGTH])[1]
            np.testing.assert_allclose(got["prob"], rt.reference(build.parent / "tiny.onnx", x)["prob"], rtol=1e-5, atol=1e-6)
            body, headers = encode_request({"relu1": np.zeros((1, 8, 32, 32), np.float32), "scale": x["scale"]})
            r = c.post(f"{srv.url}/v2/models/tiny_suffix_relu1/infer", content=body, headers=headers)
            assert r.status_code == 503 and "cannot load" in json.loads(r.content)["error"]
    finally:
        srv.kill()
