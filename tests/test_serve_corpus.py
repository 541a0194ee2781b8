"""The bad-request corpus of issue 18 against a real ``nscompile serve`` process (default options:
64 MiB request cap, 64 requests admitted): every case gets its expected status, never a 500;
after the corpus the server is alive, answers a valid request right, and its memory stayed
bounded.

Cases that HTTP clients cannot send (lying Content-Length, smuggling, malformed request lines,
slow-loris) go over raw sockets.
"""

from __future__ import annotations

import gzip
import json
import select
import socket
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest

from helpers import ServerProcess, make_handmade_build, reference
from nscompile.runtime.protocol import HEADER_LENGTH, decode_response, encode_request

pytestmark = pytest.mark.slow  # real server processes


MODEL = "tiny_suffix_relu1"  # inputs relu1 [1,8,32,32] FP32 and scale [1,10] FP32; output prob [1,10]
INFER = f"/v2/models/{MODEL}/infer"
CAP = 64 << 20  # nscompile serve's default --max-body-mb
#: The server's peak resident memory may grow by at most this over the corpus (it holds a few
#: 64 MiB bodies at the cap at once, and 8,000 idle connections).
MEMORY_BOUND_MB = 600


def good() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"relu1": rng.random((1, 8, 32, 32), dtype=np.float32), "scale": np.ones((1, 10), np.float32)}


def binary(entries: list, blobs: list[bytes], extra: dict | None = None) -> tuple[bytes, dict]:
    """A binary request from header entries and the raw bytes that follow the JSON header."""
    head = json.dumps({"inputs": entries, **(extra or {})}).encode()
    return head + b"".join(blobs), {HEADER_LENGTH: str(len(head))}


def entry(name: str, shape, size, datatype: str = "FP32") -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


RELU1, SCALE = entry("relu1", [1, 8, 32, 32], 32768), entry("scale", [1, 10], 40)
RELU1_BYTES, SCALE_BYTES = good()["relu1"].tobytes(), good()["scale"].tobytes()


def raw_json(head: bytes, blob: bytes) -> tuple[bytes, dict]:
    """A binary request whose JSON header is given as bytes (for what json.dumps cannot write)."""
    return head + blob, {HEADER_LENGTH: str(len(head))}


def json_body(inputs: list, **extra) -> tuple[bytes, dict]:
    return json.dumps({"inputs": inputs, **extra}).encode(), {"Content-Type": "application/json"}


def data(name, shape, values, datatype="FP32") -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": values}


def compressed(raw: bytes, encoding: str) -> tuple[bytes, dict]:
    body = gzip.compress(raw, 9) if encoding == "gzip" else zlib.compress(raw, 9)
    return body, {"Content-Encoding": encoding}


def bomb(encoding: str, total: int = 1 << 30) -> tuple[bytes, dict]:
    """``total`` zero bytes compressed (about 1 MB for 1 GB), without holding them."""
    z = zlib.compressobj(9, wbits=31 if encoding == "gzip" else 15)
    block = bytes(16 << 20)
    parts = [z.compress(block) for _ in range(total // len(block))]
    return b"".join(parts) + z.flush(), {"Content-Encoding": encoding}


def zeros_stream(total: int, chunk: int = 1 << 20):
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        yield bytes(n)
        sent += n


# name -> (path, body builder -> (body or iterator, headers), expected status, words in the error)
CASES = {
    # shapes
    "huge shape, small binary size": (INFER, lambda: binary([entry("relu1", [10**9, 10**9, 10**9], 32768), SCALE],
                                                             [RELU1_BYTES, SCALE_BYTES]), 400, "binary_data_size says"),
    "huge shape, JSON data": (INFER, lambda: json_body([data("scale", [10**6, 10**6, 10**6], [1.0])]), 400, "holds 1"),
    "negative dimension": (INFER, lambda: binary([entry("scale", [1, -10], 40)], [SCALE_BYTES]), 400, "non-negative"),
    "shape not a list": (INFER, lambda: binary([entry("scale", "1x10", 40)], [SCALE_BYTES]), 400, "shape"),
    "float dimension": (INFER, lambda: binary([entry("scale", [1, 10.0], 40)], [SCALE_BYTES]), 400, "shape"),
    "wrong static shape": (INFER, lambda: binary([entry("relu1", [1, 8, 16, 64], 32768), SCALE], [RELU1_BYTES, SCALE_BYTES]),
                           400, "has shape [1, 8, 32, 32]"),
    # header-length lies
    "header length past the body": (INFER, lambda: (b"{}", {HEADER_LENGTH: "1000"}), 400, HEADER_LENGTH),
    "header length zero": (INFER, lambda: (b"{}", {HEADER_LENGTH: "0"}), 400, HEADER_LENGTH),
    "header length negative": (INFER, lambda: (b"{}", {HEADER_LENGTH: "-2"}), 400, HEADER_LENGTH),
    "header length not a number": (INFER, lambda: (b"{}", {HEADER_LENGTH: "2e1"}), 400, "not an integer"),
    "header length cuts the JSON": (INFER, lambda: (binary([RELU1, SCALE], [RELU1_BYTES, SCALE_BYTES])[0], {HEADER_LENGTH: "20"}),
                                    400, "malformed"),
    "header length takes binary bytes": (INFER, lambda: (lambda b, h: (b, {HEADER_LENGTH: str(int(h[HEADER_LENGTH]) + 8)}))(
        *binary([RELU1, SCALE], [RELU1_BYTES, SCALE_BYTES])), 400, "malformed"),
    # size lies
    "binary size larger than the body": (INFER, lambda: binary([entry("relu1", [1, 8, 32, 32], 32768), SCALE], [RELU1_BYTES[:1000]]),
                                         400, "only"),
    "binary size disagrees with shape": (INFER, lambda: binary([entry("relu1", [1, 8, 32, 32], 100), SCALE],
                                                               [RELU1_BYTES[:100], SCALE_BYTES]), 400, "binary_data_size says"),
    "binary size negative": (INFER, lambda: binary([entry("scale", [1, 10], -40)], [SCALE_BYTES]), 400, "non-negative integer"),
    "binary size a boolean": (INFER, lambda: binary([entry("scale", [1, 10], True)], [SCALE_BYTES]), 400, "non-negative integer"),
    "binary size a huge float": (INFER, lambda: raw_json(b'{"inputs":[{"name":"scale","datatype":"FP32","shape":[1,10],'
                                                         b'"parameters":{"binary_data_size":1e999}}]}', SCALE_BYTES),
                                 400, "non-negative integer"),
    "bytes nobody claims": (INFER, lambda: binary([RELU1, SCALE], [RELU1_BYTES, SCALE_BYTES, b"\0" * 64]), 400, "no input claims"),
    "FP16 header over FP32 bytes": (INFER, lambda: binary([entry("relu1", [1, 8, 32, 32], 32768, "FP16"), SCALE],
                                                          [RELU1_BYTES, SCALE_BYTES]), 400, "binary_data_size says"),
    # bodies over the cap, and bombs
    "1 GB body announced": (INFER, lambda: (zeros_stream(1 << 30), {"Content-Length": str(1 << 30), HEADER_LENGTH: "2"}),
                            413, "over the server's cap"),
    "1 GB body chunked": (INFER, lambda: (zeros_stream(1 << 30), {HEADER_LENGTH: "2"}), 413, "cap"),
    "gzip bomb (1 GB of zeros)": (INFER, lambda: bomb("gzip"), 413, "decompressed body"),
    "deflate bomb (1 GB of zeros)": (INFER, lambda: bomb("deflate"), 413, "decompressed body"),
    "gzip that is not gzip": (INFER, lambda: (b"plain", {"Content-Encoding": "gzip"}), 400, "decompress"),
    "unknown Content-Encoding": (INFER, lambda: (b"{}", {"Content-Encoding": "br"}), 415, "Content-Encoding"),
    "gzip of a deep JSON": (INFER, lambda: compressed(b"[" * 200_000 + b"]" * 200_000, "gzip"), 400, "nested too deeply"),
    # JSON structure
    "JSON nested 200,000 deep": (INFER, lambda: (b"[" * 200_000 + b"]" * 200_000, {}), 400, "nested too deeply"),
    "JSON objects nested deep": (INFER, lambda: (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, {}), 400, "nested too deeply"),
    "not JSON": (INFER, lambda: (b"\xff\xfe nope", {}), 400, "malformed"),
    "empty body": (INFER, lambda: (b"", {}), 400, "malformed"),
    "JSON header a list": (INFER, lambda: (b"[1, 2]", {}), 400, "object"),
    "inputs not a list": (INFER, lambda: (b'{"inputs": {"scale": 1}}', {}), 400, "must be a list"),
    "input entry not an object": (INFER, lambda: (b'{"inputs": ["scale"]}', {}), 400, "string 'name'"),
    "input name not a string": (INFER, lambda: binary([entry(7, [1, 10], 40)], [SCALE_BYTES]), 400, "string 'name'"),
    "parameters not an object": (INFER, lambda: binary([RELU1, SCALE], [RELU1_BYTES, SCALE_BYTES], {"parameters": [1]}), 400,
                                 "'parameters' must be an object"),
    "outputs not a list": (INFER, lambda: binary([RELU1, SCALE], [RELU1_BYTES, SCALE_BYTES], {"outputs": "prob"}), 400,
                           "must be a list"),
    "JSON data of strings": (INFER, lambda: json_body([data("relu1", [1, 8, 32, 32], ["a"] * 8192), data("scale", [1, 10], [1] * 10)]),
                             400, "not a list of FP32"),
    "JSON data count wrong": (INFER, lambda: json_body([data("scale", [1, 10], [1.0, 2.0])]), 400, "holds 2"),
    "JSON data, 10 M numbers": (INFER, lambda: json_body([data("scale", [1, 10], [0] * 10_000_000)]), 400, "holds 10000000"),
    # what users send by mistake
    "duplicate inputs": (INFER, lambda: binary([RELU1, SCALE, SCALE], [RELU1_BYTES, SCALE_BYTES, SCALE_BYTES]), 400, "twice"),
    "missing input": (INFER, lambda: binary([RELU1], [RELU1_BYTES]), 400, "needs input 'scale'"),
    "unknown input": (INFER, lambda: binary([RELU1, SCALE, entry("zz", [1], 4)], [RELU1_BYTES, SCALE_BYTES, b"\0" * 4]), 400,
                      "no input 'zz'"),
    "wrong datatype": (INFER, lambda: binary([entry("relu1", [1, 8, 32, 32], 65536, "FP64"), SCALE],
                                             [RELU1_BYTES * 2, SCALE_BYTES]), 400, "is FP32, not FP64"),
    "unknown datatype": (INFER, lambda: binary([entry("scale", [1, 10], 40, "FP33")], [SCALE_BYTES]), 400, "not supported"),
    "BYTES datatype": (INFER, lambda: binary([entry("scale", [3], 3, "BYTES")], [b"abc"]), 400, "not supported"),
    "unknown output": (INFER, lambda: binary([RELU1, SCALE], [RELU1_BYTES, SCALE_BYTES], {"outputs": [{"name": "nope"}]}), 400,
                       "no output 'nope'"),
    "version that does not exist": (f"/v2/models/{MODEL}/versions/7/infer",
                                    lambda: binary([RELU1, SCALE], [RELU1_BYTES, SCALE_BYTES]), 404, "no version '7'"),
    "unknown model": ("/v2/models/nope/infer", lambda: binary([RELU1, SCALE], [RELU1_BYTES, SCALE_BYTES]), 404, "unknown model"),
    # traversal in names
    "model name ../": ("/v2/models/..%2F..%2Fetc%2Fpasswd/infer", lambda: (b"{}", {}), 404, "Not Found"),
    "model name with dots": ("/v2/models/../../../etc/passwd/infer", lambda: (b"{}", {}), 404, "Not Found"),
    "version ../1": (f"/v2/models/{MODEL}/versions/..%2F1/infer", lambda: (b"{}", {}), 404, "Not Found"),
    "input name ../": (INFER, lambda: binary([entry("../../relu1", [1, 8, 32, 32], 32768), SCALE], [RELU1_BYTES, SCALE_BYTES]),
                       400, "no input '../../relu1'"),
    "metadata of ../": ("/v2/models/..%2Fcloud/config", None, 404, "Not Found"),
}


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return make_handmade_build(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def server(build):
    srv = ServerProcess(build / "cloud", None, "--max-queue", "64")
    try:
        with httpx.Client(timeout=30) as c:
            assert_serves(c, srv, build)  # sessions warm: the memory baseline includes them
        srv.baseline_mb = memory_mb(srv.proc.pid)["VmRSS"]
        yield srv
    finally:
        srv.kill()


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def assert_serves(client: httpx.Client, srv, build) -> None:
    x = good()
    body, headers = encode_request(x)
    r = client.post(srv.url + INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    want = reference(build / "cloud" / MODEL / "1" / "model.onnx", x)["prob"]
    np.testing.assert_allclose(decode_response(r.content, r.headers[HEADER_LENGTH])[1]["prob"], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request(server, case):
    path, make, status, words = CASES[case]
    with httpx.Client(timeout=60) as c:
        if make is None:
            r = c.get(server.url + path)
        else:
            body, headers = make()
            r = c.post(server.url + path, content=body, headers=headers)
        assert r.status_code == status, (r.status_code, r.text[:300])
        if words:
            assert words in r.json()["error"], r.json()
        assert c.get(f"{server.url}/v2/health/live").status_code == 200


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_inputs_are_computed(server, build, value):
    """Not an error: IEEE values the model computes with, as onnxruntime does in-process."""
    x = good()
    x["relu1"][0, 0, 0, :4] = value
    body, headers = encode_request(x)
    with httpx.Client(timeout=30) as c:
        r = c.post(server.url + INFER, content=body, headers=headers)
    assert r.status_code == 200
    want = reference(build / "cloud" / MODEL / "1" / "model.onnx", x)["prob"]
    np.testing.assert_array_equal(decode_response(r.content, r.headers[HEADER_LENGTH])[1]["prob"], want)


def raw_exchange(port: int, data: bytes, *, shut_write: bool = False, timeout: float = 10.0) -> tuple[int | None, bytes]:
    """Send raw bytes; return (the first response's status or None if the server closed without one, all bytes read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        got = b""
        try:
            for i in range(0, len(data), 1 << 16):
                s.sendall(data[i:i + (1 << 16)])
                if select.select([s], [], [], 0)[0]:
                    break  # answered before the end (a refusal): read it before the server resets us
            if shut_write:
                s.shutdown(socket.SHUT_WR)
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
                if b"\r\n\r\n" in got and not shut_write:
                    break
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server closed while we were still sending
    status = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else None
    return status, got


def _post(body: bytes, *headers: str) -> bytes:
    return (f"POST {INFER} HTTP/1.1\r\nHost: x\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode() + body


RAW_CASES = {
    # Content-Length says more than is sent, then the client stops sending: nothing to answer.
    "Content-Length larger than the body": (_post(b"{}", "Content-Length: 1000"), True, None),
    # The bytes past Content-Length are read as the next request, which is not HTTP.
    "Content-Length smaller than the body": (_post(b'{"inputs": []}', "Content-Length: 2"), True, 400),
    "Content-Length not a number": (_post(b"{}", "Content-Length: two"), False, 400),
    "Content-Length twice, different": (_post(b"{}", "Content-Length: 2", "Content-Length: 3"), False, 400),
    "Content-Length and chunked (smuggling)": (_post(b"2\r\n{}\r\n0\r\n\r\n", "Content-Length: 4",
                                                     "Transfer-Encoding: chunked"), False, 400),
    "malformed chunk size": (_post(b"zz\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked"), False, 400),
    "malformed request line": (b"GARBAGE\r\n\r\n", False, 400),
    "header line without a colon": (b"GET /v2 HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n", False, 400),
    "100 KB header": (b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", False, 431),
    # The server answers 431 and closes while the client is still sending; the kernel then
    # resets the connection, and a reset can discard the answer before the client reads it
    # (seen once in a CI run on a busy machine). Either way nothing was buffered: closed
    # without an answer (None) is as good a refusal.
    "endless header line (20 MB, never ends)": (b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (20 << 20), False, (431, None)),
    "GET on infer": (f"GET {INFER} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), False, 405),
}


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_bad_raw_http(server, case):
    data, shut_write, status = RAW_CASES[case]
    got_status, got = raw_exchange(server.port, data, shut_write=shut_write)
    assert got_status in (status if isinstance(status, tuple) else (status,)), got[:300]
    with httpx.Client(timeout=30) as c:
        assert c.get(f"{server.url}/v2/health/live").status_code == 200


def test_slow_loris_8000_connections(server, build):
    """8,000 connections that each send half a request line and stall: a valid request on a new
    connection is still answered (right), and closing them leaves the server serving."""
    socks = []
    try:
        for _ in range(8000):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            s.sendall(b"POST /v2/models/tiny_suffix_relu1/inf")
            socks.append(s)
        time.sleep(0.5)
        with httpx.Client(timeout=30) as c:
            t = time.perf_counter()
            assert_serves(c, server, build)
            print(f"\nwith 8,000 stalled connections: a valid request answered in {(time.perf_counter() - t) * 1e3:.0f} ms, "
                  f"server RSS {memory_mb(server.proc.pid)['VmRSS']:.0f} MiB")
    finally:
        for s in socks:
            s.close()
    with httpx.Client(timeout=30) as c:
        assert_serves(c, server, build)


def test_flood_of_256_threads_gets_200_or_503(server, build):
    x = good()
    body, headers = encode_request(x)
    want = reference(build / "cloud" / MODEL / "1" / "model.onnx", x)["prob"]
    gate = threading.Barrier(256)
    statuses, wrong = [], []

    def one():
        with httpx.Client(timeout=60) as c:
            gate.wait()
            r = c.post(server.url + INFER, content=body, headers=headers)
        statuses.append(r.status_code)
        if r.status_code == 200 and not np.allclose(decode_response(r.content, r.headers[HEADER_LENGTH])[1]["prob"], want,
                                                    rtol=1e-5, atol=1e-6):
            wrong.append(r)
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "1"

    threads = [threading.Thread(target=one) for _ in range(256)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    counts = {s: statuses.count(s) for s in set(statuses)}
    print(f"\n256-thread flood: {counts}")
    assert len(statuses) == 256 and set(counts) <= {200, 503} and counts.get(200, 0) >= 1, counts
    assert not wrong


def test_after_the_corpus_alive_right_and_memory_bounded(server, build):
    """Last in this file: after every case above, the server still answers right, and its peak
    resident memory grew by less than MEMORY_BOUND_MB over the warm baseline."""
    with httpx.Client(timeout=30) as c:
        assert c.get(f"{server.url}/v2/health/ready").status_code == 200
        assert_serves(c, server, build)
    mem = memory_mb(server.proc.pid)
    print(f"\nserver memory: baseline {server.baseline_mb:.0f} MiB, now {mem['VmRSS']:.0f} MiB, peak {mem['VmHWM']:.0f} MiB")
    assert mem["VmHWM"] - server.baseline_mb < MEMORY_BOUND_MB, mem
