"""Helpers shared by the test modules: tiny models, a hand-made build, servers, random DAGs, Triton's rules.

Fixtures live in conftest.py; the plain functions and classes that more than one test module
(or a benchmark) uses live here, so that no test module imports another. pytest puts tests/
on ``sys.path`` (``pythonpath`` in pyproject.toml): ``from helpers import ...``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from nscompile.partition import CutGraph, Weights

#: A phone-class device profile kept fixed for the tests: the 25%-quota profile measured on the
#: 2026-11-29 EPYC host. The shipped profiles are re-made as the hosts change (and with them
#: where a split pays); the tests of encoded and DAG splits need a device on which they do:
#: on this one LeNet's pool2@int8 and ResNet-18's encoded cuts win somewhere on the grid.
FIXED_PHONE_PROFILE = Path(__file__).resolve().parent / "data" / "phone-quota25.json"

# ---------------------------------------------------------------------------------------
# nscompile as a user runs it
# ---------------------------------------------------------------------------------------


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m nscompile ARGS`` in a fresh process, as a user's shell would."""
    return subprocess.run([sys.executable, "-m", "nscompile", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def nscompile_cmd() -> list[str]:
    """The installed ``nscompile`` console script, or the same entry point through this Python."""
    script = Path(sys.executable).with_name("nscompile")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from nscompile.cli import main; main()"]


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


def transformer_block(seq: int = 16, dim: int = 32, heads: int = 4, seed: int = 0) -> onnx.ModelProto:
    """One pre-norm encoder block: LayerNorm, multi-head attention, residual, LayerNorm, GELU MLP."""
    rng = np.random.default_rng(seed)
    head = dim // heads

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)

    inits = [w("wq", dim, dim), w("wk", dim, dim), w("wv", dim, dim), w("wo", dim, dim), w("w1", dim, 4 * dim), w("w2", 4 * dim, dim),
             numpy_helper.from_array(np.ones(dim, np.float32), "g1"), numpy_helper.from_array(np.zeros(dim, np.float32), "b1"),
             numpy_helper.from_array(np.ones(dim, np.float32), "g2"), numpy_helper.from_array(np.zeros(dim, np.float32), "b2"),
             numpy_helper.from_array(np.array([1, seq, heads, head], np.int64), "split_shape"),
             numpy_helper.from_array(np.array([1, seq, dim], np.int64), "merge_shape"),
             numpy_helper.from_array(np.array(1 / np.sqrt(head), np.float32), "scale"),
             numpy_helper.from_array(np.array(1 / np.sqrt(2), np.float32), "inv_sqrt2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"), numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    n = helper.make_node
    nodes = [n("LayerNormalization", ["x", "g1", "b1"], ["ln1"], name="ln1", axis=-1)]
    for p in "qkv":
        nodes += [n("MatMul", ["ln1", f"w{p}"], [f"{p}_flat"], name=f"proj_{p}"),
                  n("Reshape", [f"{p}_flat", "split_shape"], [f"{p}_split"], name=f"split_{p}"),
                  n("Transpose", [f"{p}_split"], [f"{p}_heads"], name=f"heads_{p}", perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3])]
    nodes += [n("MatMul", ["q_heads", "k_heads"], ["scores_raw"], name="scores"),
              n("Mul", ["scores_raw", "scale"], ["scores_scaled"], name="scale_scores"),
              n("Softmax", ["scores_scaled"], ["attn"], name="softmax", axis=-1),
              n("MatMul", ["attn", "v_heads"], ["ctx_heads"], name="context"),
              n("Transpose", ["ctx_heads"], ["ctx_t"], name="merge_heads", perm=[0, 2, 1, 3]),
              n("Reshape", ["ctx_t", "merge_shape"], ["ctx"], name="merge"),
              n("MatMul", ["ctx", "wo"], ["attn_out"], name="out_proj"),
              n("Add", ["x", "attn_out"], ["res1"], name="residual1"),
              n("LayerNormalization", ["res1", "g2", "b2"], ["ln2"], name="ln2", axis=-1),
              n("MatMul", ["ln2", "w1"], ["ff1"], name="fc1"),
              # GELU(x) = 0.5 x (1 + erf(x / sqrt 2))
              n("Mul", ["ff1", "inv_sqrt2"], ["g_a"], name="gelu_scale"), n("Erf", ["g_a"], ["g_b"], name="gelu_erf"),
              n("Add", ["g_b", "one"], ["g_c"], name="gelu_add"), n("Mul", ["ff1", "g_c"], ["g_d"], name="gelu_mul"),
              n("Mul", ["g_d", "half"], ["gelu"], name="gelu_half"),
              n("MatMul", ["gelu", "w2"], ["ff2"], name="fc2"),
              n("Add", ["res1", "ff2"], ["y"], name="residual2")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", 1, [1, seq, dim])],
                              [helper.make_tensor_value_info("y", 1, [1, seq, dim])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


X_SHAPE = [1, 8, 32, 32]  # 32 KiB of float32: big enough to measure bandwidth with


def make_model() -> onnx.ModelProto:
    """A small DAG: conv-relu, an early side output, a residual block, a second input."""
    rng = np.random.default_rng(0)
    w = lambda name, *shape: numpy_helper.from_array(rng.normal(0, 0.2, shape).astype(np.float32), name)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["relu1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["relu1"], ["gap_aux"], name="gap_aux"),
        helper.make_node("Flatten", ["gap_aux"], ["aux"], name="aux"),
        helper.make_node("Conv", ["relu1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["relu2"], name="relu2"),
        helper.make_node("Add", ["relu2", "relu1"], ["res"], name="res"),
        helper.make_node("GlobalAveragePool", ["res"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "w3"], ["logits"], name="fc"),
        helper.make_node("Mul", ["logits", "scale"], ["scaled"], name="mul"),
        helper.make_node("Softmax", ["scaled"], ["prob"], name="prob"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, X_SHAPE),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("aux", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10])],
        [w("w1", 8, 8, 3, 3), w("w2", 8, 8, 3, 3), w("w3", 8, 10)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------------------
# A hand-made build of make_model(): its plan's breakpoints are under the tests' control
# ---------------------------------------------------------------------------------------

LOADS = [1, 2, 4, 8]
BREAKPOINTS = {  # load row -> [(from_mbps, cut)]
    1: [(0.0, "prob"), (2.0, "relu2"), (16.0, "input")],
    2: [(0.0, "prob"), (2.0, "relu2"), (16.0, "relu1")],
    4: [(0.0, "prob"), (2.0, "relu1")],
    8: [(0.0, "prob")],
}


# cut id -> (device-side tensors, graph inputs uploaded as is, graph outputs computed on the device)
CUTS = {
    "input": ([], ["x", "scale"], []),
    "relu1": (["relu1"], ["scale"], ["aux"]),
    "relu2": (["relu1", "relu2"], ["scale"], ["aux"]),  # a DAG cut: two tensors cross it
    "prob": ([], [], ["aux", "prob"]),
}


def _save(model: onnx.ModelProto, path: Path, sha: str, cut: str) -> None:
    onnx.helper.set_model_props(model, {"nscompile.model_sha256": sha, "nscompile.cut": cut})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _config(name: str, model: onnx.ModelProto, sha: str) -> str:
    def tensors(kind, values):
        out = []
        for v in values:
            dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
            out.append(f'  {{\n    name: "{v.name}"\n    data_type: TYPE_FP32\n    dims: {dims}\n  }}')
        return f"{kind} [\n" + ",\n".join(out) + "\n]\n"

    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        + tensors("input", model.graph.input)
        + tensors("output", model.graph.output)
        + f'parameters {{\n  key: "nscompile_model_sha256"\n  value {{ string_value: "{sha}" }}\n}}\n'
    )


def make_handmade_build(root: Path, name: str = "tiny") -> Path:
    """Write build/NAME/{plan.json, device/, cloud/} for :func:`make_model` and return it."""
    model = make_model()
    raw = model.SerializeToString()
    sha = hashlib.sha256(raw).hexdigest()
    src = root / f"{name}.onnx"
    src.write_bytes(raw)
    build = root / name
    extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model))
    cuts = []
    for cid, (dev_tensors, uploads, dev_outputs) in CUTS.items():
        tensors = [
            {"name": t, "shape": X_SHAPE if t != "scale" else [1, 10], "dtype": "float32",
             "bytes": 4 * int(np.prod(X_SHAPE if t != "scale" else [1, 10]))}
            for t in dev_tensors + uploads
        ]
        prefix = suffix = cloud = None
        if cid == "prob":
            prefix = f"device/prefix_{cid}.onnx"
            _save(onnx.ModelProto.FromString(raw), build / prefix, sha, cid)
        elif dev_tensors:
            prefix = f"device/prefix_{cid}.onnx"
            _save(extractor.extract_model(["x"], dev_tensors + dev_outputs), build / prefix, sha, cid)
        if cid != "prob":
            cloud = f"{name}_suffix_{cid}"
            suffix = f"cloud/{cloud}/1/model.onnx"
            wanted = [o for o in ("aux", "prob") if o not in dev_outputs]
            sm = onnx.ModelProto.FromString(raw) if cid == "input" else extractor.extract_model(dev_tensors + uploads, wanted)
            _save(sm, build / suffix, sha, cid)
            (build / "cloud" / cloud / "config.pbtxt").write_text(_config(cloud, sm, sha))
        up = sum(t["bytes"] for t in tensors)
        cuts.append({
            "id": cid, "device_nodes": {"input": 0, "relu1": 4, "relu2": 6, "prob": 12}[cid],
            "tensors": tensors, "device_outputs": dev_outputs, "prefix": prefix, "suffix": suffix,
            "cloud_model": cloud,
            "predicted": {"device_ms": {"input": 0.0, "relu1": 1.0, "relu2": 2.0, "prob": 500.0}[cid],
                          "cloud_ms": 0.0 if cid == "prob" else 0.3, "upload_bytes": up,
                          "download_bytes": 0 if cid == "prob" else 72, "device_mj": 1.0},
        })
    bandwidths = [0.1 * 10 ** (i / 4) for i in range(21)]  # 0.1 .. 1000 Mbps

    def row(points):
        return [next(c for f, c in reversed(points) if f <= max(b, 0.0)) for b in bandwidths]

    bp = {"latency": [[{"from_mbps": f, "cut": c} for f, c in BREAKPOINTS[l]] for l in LOADS],
          "energy": [[{"from_mbps": 0.0, "cut": "prob"}, {"from_mbps": 50.0, "cut": "relu1"}] for _ in LOADS]}
    tables = {"latency": [row(BREAKPOINTS[l]) for l in LOADS],
              "energy": [row([(0.0, "prob"), (50.0, "relu1")]) for _ in LOADS]}
    plan = {
        "schema": "nscompile.plan/1",
        "model": {"name": name, "sha256": sha,
                  "inputs": [{"name": "x", "shape": X_SHAPE, "dtype": "float32"},
                             {"name": "scale", "shape": [1, 10], "dtype": "float32"}],
                  "outputs": [{"name": "aux", "shape": [1, 8], "dtype": "float32"},
                              {"name": "prob", "shape": [1, 10], "dtype": "float32"}]},
        "profiles": {"device": {"name": "test", "sha256": "0"}, "cloud": {"name": "test", "sha256": "0"}},
        "cuts": cuts,
        "fallback": "prob",
        "grid": {"objective": "latency", "bandwidth_mbps": bandwidths, "load": LOADS, "rtt_ms": 0.0, "downlink_mbps": None},
        "table": tables["latency"],
        "tables": tables,
        "breakpoints": bp,
    }
    text = json.dumps(plan, indent=1)
    (build / "plan.json").write_text(text)
    (build / "device").mkdir(parents=True, exist_ok=True)
    (build / "device" / "plan.json").write_text(text)
    return build


def reference(model_path: Path, inputs: dict) -> dict:
    """Every output of the whole model at MODEL_PATH on INPUTS, by onnxruntime: what a split must reproduce."""
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


def sample_inputs(seed: int = 1) -> dict:
    """Seeded random inputs for make_model()."""
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=X_SHAPE).astype(np.float32),
            "scale": rng.uniform(0.5, 2.0, size=(1, 10)).astype(np.float32)}


def compiled_tiny_build(root: Path) -> Path:
    """Build make_model() with the compiler and the shipped profiles: ROOT/tiny.onnx, ROOT/b.

    The all-cloud cut is emitted too, so there are at least two cuts and a suffix whatever the
    profiles make of this tiny model.
    """
    from nscompile.compiler import build

    onnx.save(make_model(), root / "tiny.onnx")
    build(root / "tiny.onnx", root / "b", report=False, include_all_cloud=True)
    return root / "b"


# ---------------------------------------------------------------------------------------
# Servers: in a thread (in-process, so tests can reach into its state) or a process
# ---------------------------------------------------------------------------------------


class ServerThread:
    """uvicorn in a background thread on a free loopback port; stop() always joins."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        from nscompile.serve import tcp_socket

        self.sock = tcp_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        for _ in range(500):  # bounded wait: 5 s
            if self.server.started:
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError("test server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``nscompile serve`` as a child process; kill() is abrupt (SIGKILL)."""

    def __init__(self, repository: Path, port: int | None = None, *extra: str):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*nscompile_cmd(), "serve", str(repository), "--port", str(self.port), "--concurrency", "1", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nscompile serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("nscompile serve did not become ready in 60 s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc.stderr.close()


class SlowSession:
    """Wraps an onnxruntime session so every run takes ``delay`` seconds longer (a slow server)."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay = inner, delay

    def run(self, *a, **kw):
        time.sleep(self.delay)
        return self.inner.run(*a, **kw)


# ---------------------------------------------------------------------------------------
# Random DAGs for the partition solver (tests/test_partition.py, bench/bench_partition.py)
# ---------------------------------------------------------------------------------------


def random_dag(rng: np.random.Generator, n: int) -> CutGraph:
    """A random DAG with several graph inputs, multi-consumer tensors and outputs."""
    n_inputs = int(rng.integers(1, 4))
    producers = [-1] * n_inputs
    consumers: list[set] = [set() for _ in range(n_inputs)]
    for node in range(n):
        k = int(rng.integers(0, 4))  # a node may consume nothing (e.g. a constant generator)
        for t in rng.choice(len(producers), size=min(k, len(producers)), replace=False):
            consumers[int(t)].add(node)
        for _ in range(int(rng.integers(1, 3))):
            producers.append(node)
            consumers.append(set())
    is_output = rng.random(len(producers)) < 0.2
    # Unconsumed node outputs are mostly graph outputs, as in a real model.
    for t, cs in enumerate(consumers):
        if not cs and producers[t] >= 0 and rng.random() < 0.7:
            is_output[t] = True
    return CutGraph(n, np.array(producers), tuple(tuple(sorted(c)) for c in consumers), is_output)


def layered_dag(rng: np.random.Generator, n: int, width: int) -> CutGraph:
    """A CNN-like DAG: layers of ``width`` nodes reading 1-3 tensors of the two previous layers
    (so tensors often have several consumers, like ResNet skips)."""
    producers, consumers, prev = [-1], [set()], [[0]]
    node = 0
    while node < n:
        layer, pool = [], [t for ts in prev[-2:] for t in ts]
        for _ in range(min(width, n - node)):
            for t in rng.choice(pool, size=min(len(pool), int(rng.integers(1, 4))), replace=False):
                consumers[int(t)].add(node)
            producers.append(node)
            consumers.append(set())
            layer.append(len(producers) - 1)
            node += 1
        prev.append(layer)
    is_output = np.array([not c and p >= 0 for p, c in zip(producers, consumers)])
    return CutGraph(n, np.array(producers), tuple(tuple(sorted(c)) for c in consumers), is_output)


# ---------------------------------------------------------------------------------------
# A server killed and restarted under 16 threads sharing one SplitRunner
# ---------------------------------------------------------------------------------------


def through_kill_and_restart(runner, build: Path, kill, restart, *, threads: int = 16, split_cut: str = "input") -> dict:
    """``threads`` threads call one shared runner in a loop, checking every answer against the
    whole model, while ``kill()`` kills the server and ``restart()`` brings it back.

    Returns:
        ``wrong`` (messages), ``records`` [(time, cut, fell back)], and the times
        ``killed_at``, ``restart_at``, ``ready_at``.
    """
    inputs = [sample_inputs(seed) for seed in range(8)]
    wants = [reference(build.parent / "tiny.onnx", x) for x in inputs]
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


def all_closed_sets(g: CutGraph) -> np.ndarray:
    """Every closed device set, as rows of a bool matrix (written independently of the solver)."""
    n = g.n_nodes
    masks = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)
    ok = np.ones(len(masks), dtype=bool)
    for t, cs in enumerate(g.consumers):
        p = g.producers[t]
        if p >= 0:
            for c in cs:
                ok &= ~masks[:, c] | masks[:, p]
    return masks[ok]


def brute_costs(g: CutGraph, w: Weights, masks: np.ndarray) -> np.ndarray:
    """The objective of every row of masks, straight from the definition, vectorized."""
    cost = masks @ w.device + (~masks) @ w.cloud
    for t, cs in enumerate(g.consumers):
        p = g.producers[t]
        made_on_device = np.ones(len(masks), bool) if p < 0 else masks[:, p]
        if cs:
            cost += w.upload[t] * (made_on_device & ~masks[:, list(cs)].all(axis=1))
        if g.is_output[t] and p >= 0:
            cost += w.download[t] * ~masks[:, p]
    cost += w.remote * ~masks.all(axis=1)
    return cost


# ---------------------------------------------------------------------------------------
# Triton's model repository rules (tests/test_triton_interop.py, tests/test_encodings.py)
# ---------------------------------------------------------------------------------------


def _model_config_class():
    """Triton's ModelConfig message, from the generated module tritonclient ships."""
    pytest.importorskip("google.protobuf")
    import tritonclient

    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        pytest.skip("tritonclient without model_config_pb2")
    spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ModelConfig


ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64", "tensor(float16)": "TYPE_FP16",
                 "tensor(int32)": "TYPE_INT32", "tensor(double)": "TYPE_FP64", "tensor(bool)": "TYPE_BOOL",
                 "tensor(uint8)": "TYPE_UINT8", "tensor(int8)": "TYPE_INT8"}


PYTHON_MODEL = Path(__file__).parents[1] / "nscompile" / "serve" / "triton_python_model.py"


def check_triton_repository(cloud: Path) -> list[str]:
    """The rules Triton applies when it loads a repository; returns the model names."""
    from google.protobuf import text_format

    ModelConfig = _model_config_class()
    names = []
    for model_dir in sorted(p for p in cloud.iterdir() if p.is_dir()):
        cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), ModelConfig())  # strict: unknown fields fail
        assert cfg.name == model_dir.name
        assert cfg.max_batch_size == 0
        versions = [p for p in model_dir.iterdir() if p.is_dir()]
        assert versions and all(p.name.isdigit() for p in versions)
        newest = max(versions, key=lambda p: int(p.name))
        if cfg.backend == "python":  # Triton runs 1/model.py, which runs model.onnx beside it
            assert not cfg.platform and (newest / "model.py").read_text() == PYTHON_MODEL.read_text()
            model_file = newest / "model.onnx"
        else:
            assert cfg.platform == "onnxruntime_onnx" or cfg.backend == "onnxruntime"
            model_file = newest / (cfg.default_model_filename or "model.onnx")
        sess = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        for declared, actual in ((cfg.input, sess.get_inputs()), (cfg.output, sess.get_outputs())):
            assert [t.name for t in declared] == [t.name for t in actual]
            for t, a in zip(declared, actual):
                assert ModelConfig.DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name[
                    "data_type"].enum_type.values_by_number[t.data_type].name == ORT_TO_TRITON[a.type]
                assert list(t.dims) == list(a.shape)
        params = dict(cfg.parameters)
        meta = sess.get_modelmeta().custom_metadata_map
        assert params["nscompile_model_sha256"].string_value == meta["nscompile.model_sha256"]
        names.append(cfg.name)
    return names
