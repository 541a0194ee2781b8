"""Runtime overheads, side by side in one run.

1. plain onnxruntime on the whole model vs SplitRunner forced to the all-device cut
   (target: under 3% overhead), interleaved blocks, medians;
2. the plan look-up (target: under 20 microseconds), and the whole per-call decision;
3. transport on loopback: ms per MB for a raw POST to ``nscompile serve`` (probe endpoint)
   and for a full binary infer of the all-cloud cut, with the encode cost on its own.

The model is a zoo network (default: the paper's AlexNet, small). It is compiled with
``nscompile.compiler.build`` when the shipped cost profiles exist; otherwise (or with
``--minimal``) a two-cut plan (all-cloud, all-device) is written directly, which is all
these measurements need. The server runs as a separate process (``python -m nscompile
serve``) so client and server do not share a GIL.

Run: ``python bench/bench_runtime.py [--model alexnet] [--size small] [--repeats 300]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort

from nscompile.runtime import SplitRunner, load_plan, make_client
from nscompile.runtime.contract import MODEL_SHA_METADATA, MODEL_SHA_PARAMETER, PLAN_SCHEMA, PROBE_PATH
from nscompile.runtime.protocol import encode_request


def minimal_build(model_path: Path, out: Path) -> None:
    """A build with two cuts, all-cloud and all-device, laid out like the compiler's."""
    raw = model_path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    model = onnx.load_from_string(raw)
    name = model_path.stem
    dtype = {1: "float32", 7: "int64", 6: "int32", 10: "float16", 11: "float64"}

    def spec(v):
        t = v.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        return {"name": v.name, "shape": shape, "dtype": dtype[t.elem_type],
                "bytes": int(np.prod(shape)) * np.dtype(dtype[t.elem_type]).itemsize}

    init = {i.name for i in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in init]
    outputs = [spec(v) for v in model.graph.output]
    onnx.helper.set_model_props(model, {MODEL_SHA_METADATA: sha, "nscompile.cut": "x"})
    (out / "device").mkdir(parents=True)
    onnx.save(model, out / "device" / "prefix_all.onnx")
    cloud = f"{name}_suffix_input"
    (out / "cloud" / cloud / "1").mkdir(parents=True)
    onnx.save(model, out / "cloud" / cloud / "1" / "model.onnx")
    v2 = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "float16": "FP16", "float64": "FP64"}
    tens = lambda kind, ts: "".join(
        f'{kind} {{ name: "{t["name"]}" data_type: TYPE_{v2[t["dtype"]]} dims: {t["shape"]} }}\n' for t in ts)
    (out / "cloud" / cloud / "config.pbtxt").write_text(
        f'name: "{cloud}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n' + tens("input", inputs) + tens("output", outputs)
        + f'parameters {{ key: "{MODEL_SHA_PARAMETER}" value {{ string_value: "{sha}" }} }}\n')
    bws = [0.1 * 10 ** (i / 4) for i in range(21)]
    plan = {
        "schema": PLAN_SCHEMA,
        "model": {"name": name, "sha256": sha, "inputs": inputs, "outputs": outputs},
        "profiles": {},
        "cuts": [
            {"id": "input", "device_nodes": 0, "tensors": inputs, "device_outputs": [], "prefix": None,
             "suffix": f"cloud/{cloud}/1/model.onnx", "cloud_model": cloud, "predicted": {}},
            {"id": "all", "device_nodes": len(model.graph.node), "tensors": [], "device_outputs": [o["name"] for o in outputs],
             "prefix": "device/prefix_all.onnx", "suffix": None, "cloud_model": None, "predicted": {}},
        ],
        "fallback": "all",
        "grid": {"objective": "latency", "bandwidth_mbps": bws, "load": [1, 2, 4, 8], "rtt_ms": 0.0},
        "table": [["all"] * 12 + ["input"] * 9 for _ in range(4)],
        "breakpoints": {"latency": [[{"from_mbps": 0.0, "cut": "all"}, {"from_mbps": 30.0, "cut": "input"}] for _ in range(4)]},
    }
    (out / "plan.json").write_text(json.dumps(plan))
    (out / "device" / "plan.json").write_text(json.dumps(plan))


def compiled_build(model_path: Path, out: Path) -> bool:
    """Build with the compiler; False when it cannot run here (no shipped profiles)."""
    try:
        from nscompile.compiler import build
        from nscompile.errors import NscompileError

        build(model_path, out, report=False)
        return True
    except (ImportError, NscompileError) as exc:
        print(f"(compiler unavailable: {exc}; using a two-cut plan)")
        shutil.rmtree(out, ignore_errors=True)
        return False


class Server:
    """`python -m nscompile serve` in its own process, on a free port."""

    def __init__(self, repository: Path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nscompile", "serve", str(repository), "--port", str(self.port), "--max-body-mb", "128"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError("server did not start")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def interleaved(fns: dict, repeats: int, seed: int = 0) -> dict[str, float]:
    """Median ms per call of each function; calls alternate in a random order per round so
    that drift and neighbours' load hit all of them alike."""
    import random

    order = list(fns)
    rnd = random.Random(seed)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        rnd.shuffle(order)
        for k in order:
            t = time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept)."""
    a, b = np.polyfit(np.array(xs), np.array(ys), 1)
    return float(a), float(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="alexnet", help="zoo model name")
    parser.add_argument("--size", default="small", choices=["small", "full"])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--minimal", action="store_true", help="skip the compiler, write a two-cut plan")
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads for both sides of the comparison (1: stable on a busy machine)")
    args = parser.parse_args()

    from nscompile.zoo import build_model

    work = Path(tempfile.mkdtemp(prefix="nscompile-bench-rt-"))
    server = None
    try:
        src = work / f"{args.model}.onnx"
        onnx.save(build_model(args.model, args.size), src)
        out = work / "build"
        kind = "compiled" if (not args.minimal and compiled_build(src, out)) else "two-cut"
        if kind == "two-cut":
            minimal_build(src, out)
        plan = load_plan(out / "device")
        rng = np.random.default_rng(0)
        inputs = {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in plan.inputs}
        in_mb = sum(a.nbytes for a in inputs.values()) / 1e6

        # 1. overhead of the runner on the all-device path
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        plain = ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in plain.get_outputs()]
        runner = SplitRunner(out / "device", "http://127.0.0.1:9", force_cut=plan.fallback, session_options=opts)
        for _ in range(10):  # warm both
            plain.run(names, inputs)
            runner.run(inputs)
        med = interleaved({"ort": lambda: plain.run(names, inputs), "runner": lambda: runner.run(inputs)}, args.repeats)
        overhead = (med["runner"] / med["ort"] - 1) * 100
        # The same overhead measured inside one call, free of run-to-run noise: the
        # runner's total minus the onnxruntime run it wraps.
        books = []
        for _ in range(args.repeats):
            rec = runner.run(inputs, with_record=True)[1]
            books.append((rec.total_ms - rec.prefix_ms) * 1e3)
        book_us = statistics.median(books)

        # 2. look-up
        n = 100_000
        bws = [0.05 * 1.0001 ** i for i in range(1000)]
        t = time.perf_counter()
        for i in range(n):
            plan.lookup(bws[i % 1000], 1 + (i % 8))
        lookup_us = (time.perf_counter() - t) / n * 1e6
        chooser = SplitRunner(out / "device", "http://127.0.0.1:9", bandwidth_mbps=50.0, load=1.0)
        chooser.net.load_at = time.monotonic() + 1e9  # estimates fresh: no probe
        t = time.perf_counter()
        for _ in range(n // 10):
            chooser.cut_policy.choose(time.monotonic(), chooser.transport)
        decide_us = (time.perf_counter() - t) / (n // 10) * 1e6

        # 3. transport on loopback
        server = Server(out / "cloud")
        client = make_client(30.0)
        sizes_mb = [0.0, 1.0, 4.0, 16.0]
        post_ms = []
        for mb in sizes_mb:
            payload = bytes(int(mb * 1e6))
            ts = []
            for _ in range(7):
                t = time.perf_counter()
                client.post(server.url + PROBE_PATH, content=payload).raise_for_status()
                ts.append((time.perf_counter() - t) * 1e3)
            post_ms.append(min(ts))
        raw_per_mb, _ = slope(sizes_mb, post_ms)
        raw_fixed = post_ms[0]
        enc_ms = []
        for mb in sizes_mb[1:]:
            a = np.zeros(int(mb * 1e6 / 4), np.float32)
            ts = []
            for _ in range(7):
                t = time.perf_counter()
                encode_request({"x": a})
                ts.append((time.perf_counter() - t) * 1e3)
            enc_ms.append(min(ts))
        enc_per_mb, _ = slope(sizes_mb[1:], enc_ms)
        cloud_cut = next((c for c in plan.cuts.values() if c.id == "input" or (c.cloud_model and not c.prefix)), None)
        infer_line = "n/a (no all-cloud cut in this plan)"
        if cloud_cut is not None:
            with SplitRunner(out / "device", server.url, force_cut=cloud_cut.id, client=client) as r2:
                recs = []
                for _ in range(30):
                    recs.append(r2.run(inputs, with_record=True)[1])
            recs = recs[5:]
            assert not any(r.fell_back for r in recs), recs[-1].error
            wire = statistics.median(r.encode_ms + r.transfer_ms + r.decode_ms for r in recs)
            srv = statistics.median(r.server_ms for r in recs)
            infer_line = (f"{wire:.2f} ms wire+codec for {in_mb:.2f} MB up (server {srv:.2f} ms) "
                          f"= {(wire - raw_fixed) / max(in_mb, 1e-9):.2f} ms/MB beyond a bare round trip")

        print(f"\nmodel {args.model} ({args.size}), {kind} plan, {len(plan.cuts)} cuts, input {in_mb:.2f} MB, "
              f"{args.threads} onnxruntime thread(s), {args.repeats} interleaved calls each")
        print(f"{'measure':44} {'value':>14}  target")
        print(f"{'plain onnxruntime, whole model (median)':44} {med['ort']:11.3f} ms")
        print(f"{'SplitRunner forced all-device (median)':44} {med['runner']:11.3f} ms")
        print(f"{'  overhead, end to end':44} {overhead:+11.2f} %   < 3%  {'OK' if overhead < 3 else 'MISSED'}")
        book_pct = book_us / 1e3 / med["ort"] * 100
        print(f"{'  overhead, runner bookkeeping per call':44} {book_us:11.1f} us = {book_pct:.2f} %  {'OK' if book_pct < 3 else 'MISSED'}")
        print(f"{'plan look-up (bisect)':44} {lookup_us:11.3f} us   < 20 us  {'OK' if lookup_us < 20 else 'MISSED'}")
        print(f"{'whole per-call decision (estimates+look-up)':44} {decide_us:11.3f} us")
        print(f"{'bare POST round trip (0 B)':44} {raw_fixed:11.3f} ms")
        print(f"{'raw HTTP upload, loopback':44} {raw_per_mb:11.3f} ms/MB  ({8 / max(raw_per_mb, 1e-9):.1f} Gbit/s)")
        print(f"{'binary encode (client side)':44} {enc_per_mb:11.3f} ms/MB")
        print(f"{'full infer, all-cloud cut':44} {infer_line}")
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
