"""Many clients against the cloud side: ``nscompile serve`` and the real Triton, same suffix.

For each server and each client count (default 64 and 128, 30 s each), closed-loop clients
(one keep-alive connection each, asyncio, raw HTTP/1.1 so the load generator stays cheap)
send binary infer requests for one suffix of a build made with ``--triton-backend python``;
both servers serve that same ``cloud/`` directory. Every answer is decoded and checked against
onnxruntime run here on the same input (16 inputs in rotation, so a mixed-up answer shows).

Reported per run: answers, errors (non-200 or a dropped connection), wrong answers, p50 and
p99 latency, throughput, and the server's peak resident memory (sampled every 0.1 s; for
Triton the sum over tritonserver and its Python-backend stub processes).

The servers are set up alike: nscompile serve with ``--concurrency N`` and a queue of 256 (so
128 clients are admitted, not refused); Triton with ``instance_group { count: N }`` (default
N = 2, this machine's cores). Triton comes from ``.venv-triton`` (see
nscompile/serve/triton_env.py); without it only nscompile serve runs.

Run: ``python bench/bench_load.py [--model lenet] [--seconds 30] [--clients 64,128]``.
Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort

from nscompile.runtime.protocol import HEADER_LENGTH, decode_response, encode_request
from nscompile.serve.triton_env import TritonInstall, TritonServer, TritonUnavailable, free_port


def prepare(model: str, size: str, instances: int, root: Path) -> tuple[Path, str, Path]:
    """Build ``model`` (all-cloud cut included) for the Python backend; returns (cloud/, suffix model, ONNX file)."""
    from nscompile import compiler, zoo

    path = root / f"{model}.onnx"
    onnx.save(zoo.build_model(model, size=size, seed=0), path)
    out = root / "build"
    compiler.build(path, out, report=False, include_all_cloud=True, triton_backend="python")
    plan = json.loads((out / "plan.json").read_text())
    cut = next(c for c in plan["cuts"] if c["prefix"] is None)  # all-cloud: the suffix is the whole model
    cloud = out / "cloud"
    for config in cloud.glob("*/config.pbtxt"):  # Triton's instances = nscompile serve's --concurrency
        config.write_text(config.read_text() + f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]\n")
    return cloud, cut["cloud_model"], cloud / cut["cloud_model"] / "1" / "model.onnx"


def requests_and_answers(model_file: Path, n: int = 16) -> list[tuple[bytes, dict[str, np.ndarray]]]:
    """n (raw HTTP request, expected outputs) pairs."""
    sess = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        feeds = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in i.shape]
            feeds[i.name] = (rng.normal(size=shape).astype(np.float32) if i.type == "tensor(float)"
                             else rng.integers(0, 8, size=shape).astype(np.int64))
        want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        body, headers = encode_request(feeds)
        out.append((body, headers, want))
    return out


def http_bytes(model: str, body: bytes, headers: dict) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def one_client(port: int, requests: list, until: float, k: int, tally: dict) -> None:
    """A closed loop on one keep-alive connection; reconnects after an error."""
    i = k
    reader = writer = None
    while time.monotonic() < until:
        raw, want = requests[i % len(requests)]
        i += 1
        t = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            fields = {a.lower(): b.strip() for a, _, b in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(fields.get("content-length", 0)))
            status = int(lines[0].split()[1])
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            tally["errors"] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        tally["latency_s"].append(time.perf_counter() - t)
        if status != 200:
            tally["errors"] += 1
            continue
        tally["answers"] += 1
        _, got = decode_response(body, fields.get(HEADER_LENGTH.lower()))
        if sorted(got) != sorted(want) or not all(np.allclose(got[n], want[n], rtol=1e-4, atol=1e-5) for n in want):
            tally["wrong"] += 1
        if fields.get("connection") == "close":
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def run_load(port: int, pid: int, requests: list, clients: int, seconds: float) -> dict:
    """``clients`` closed-loop clients for ``seconds``, with the server's memory sampled."""
    tally = {"answers": 0, "errors": 0, "wrong": 0, "latency_s": []}
    peak = [process_tree_rss_mb(pid)]
    done = threading.Event()

    def sample():
        while not done.wait(0.1):
            peak.append(process_tree_rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    async def main():
        until = time.monotonic() + seconds
        await asyncio.gather(*(one_client(port, requests, until, k, tally) for k in range(clients)))

    t = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - t
    done.set()
    sampler.join()
    lat = np.array(tally["latency_s"]) * 1e3
    return {"clients": clients, "seconds": round(elapsed, 1), "answers": tally["answers"], "errors": tally["errors"],
            "wrong": tally["wrong"], "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
            "throughput_rps": round(tally["answers"] / elapsed, 1), "peak_rss_mb": round(max(peak), 1)}


class NscompileServe:
    """``nscompile serve`` as a child process."""

    def __init__(self, cloud: Path, concurrency: int, workers: int = 1):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "nscompile", "serve", str(cloud), "--port", str(self.port),
                                      "--concurrency", str(concurrency), "--max-queue", "256", "--workers", str(workers)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"nscompile serve did not start: {self.proc.stderr.read().decode()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def warm_up(port: int, requests: list) -> None:
    async def go():
        await asyncio.gather(*(one_client(port, requests, time.monotonic() + 1.0, k, {"answers": 0, "errors": 0, "wrong": 0,
                                                                                         "latency_s": []}) for k in range(4)))
    asyncio.run(go())


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"Model {meta['model']} ({meta['size']}), suffix `{meta['suffix']}`, {meta['seconds']:.0f} s per run, "
             f"{meta['instances']} inference slots per server, {os.cpu_count()} cores shared by clients and server.", "",
             "| server | clients | answers | errors | wrong | p50 ms | p99 ms | answers/s | peak server RSS MiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['server']} | {r['clients']} | {r['answers']} | {r['errors']} | {r['wrong']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['throughput_rps']} | {r['peak_rss_mb']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--size", default="full", choices=["small", "full"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", default="64,128")
    parser.add_argument("--instances", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--servers", default="nscompile,triton")
    parser.add_argument("--serve-workers", type=int, default=1, help="nscompile serve --workers (each has --instances slots)")
    parser.add_argument("--triton-venv", default=None, help="default: $NSCOMPILE_TRITON_VENV or .venv-triton")
    parser.add_argument("-o", "--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_load_"))
    try:
        cloud, suffix, model_file = prepare(args.model, args.size, args.instances, root)
        pairs = [(http_bytes(suffix, body, headers), want) for body, headers, want in requests_and_answers(model_file)]
        results = []
        for server_name in args.servers.split(","):
            if server_name == "triton":
                try:
                    server = TritonServer(cloud, TritonInstall.locate(args.triton_venv))
                except TritonUnavailable as exc:
                    print(f"Triton skipped: {exc}", file=sys.stderr)
                    continue
                port = server.http_port
            else:
                server = NscompileServe(cloud, args.instances, args.serve_workers)
                port = server.port
            try:
                warm_up(port, pairs)
                for clients in map(int, args.clients.split(",")):
                    name = ("Triton 2.51 (Python backend)" if server_name == "triton" else
                            f"nscompile serve{f' --workers {args.serve_workers}' if args.serve_workers > 1 else ''}")
                    r = {"server": name,
                         **run_load(port, server.pid, pairs, clients, args.seconds)}
                    print(json.dumps(r), flush=True)
                    results.append(r)
            finally:
                server.stop()
        meta = {"model": args.model, "size": args.size, "suffix": suffix, "seconds": args.seconds,
                "instances": args.instances}
        print(markdown(results, meta))
        if args.output:
            args.output.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
