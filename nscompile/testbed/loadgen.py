"""The load generator: N concurrent clients that keep one server model busy.

Started by the testbed next to the server (in its namespace, so its traffic is not
shaped) as ``python -m nscompile.testbed.loadgen SERVER_URL MODEL``. Each client sends
the model a request, waits for the answer, and sends the next one: a closed loop, so
N clients mean N requests in flight, and the server's own load report says what that
does to its latency. Commands, one JSON line each on stdin, answered with one
``@@``-prefixed JSON line:

- ``{"op": "set", "clients": N}``: run N clients from now on;
- ``{"op": "stats"}``: ``{"completed", "errors", "t", "clients"}`` (counters since start,
  ``t`` on the shared monotonic clock), from which the testbed computes queries/s;
- ``{"op": "quit"}``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time

import httpx
import numpy as np

from nscompile.runtime.contract import LOAD_PATH
from nscompile.runtime.protocol import encode_request, numpy_dtype

MARK = "@@"


class LoadGen:
    """Closed-loop clients against one model; thread-safe counters."""

    def __init__(self, server: str, model: str):
        self.url = f"{server.rstrip('/')}/v2/models/{model}/infer"
        self.load_url = server.rstrip("/") + LOAD_PATH
        meta = None
        for _ in range(600):  # bounded wait (~5 min) for the server to load its models and listen
            try:
                r = httpx.get(f"{server.rstrip('/')}/v2/models/{model}", timeout=30)
                if r.status_code == 200:
                    meta = r.json()
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        if meta is None:
            raise RuntimeError(f"server {server} did not become ready with model {model}")
        feeds = {}
        for t in meta["inputs"]:
            shape = [d if d > 0 else 1 for d in t["shape"]]
            dt = numpy_dtype(t["datatype"])
            feeds[t["name"]] = np.zeros(shape, dt) if dt.kind in "iub" else np.random.default_rng(1).standard_normal(shape).astype(dt)
        # One encoded body for all: the clients should spend their CPU on waiting, not on encoding.
        self.body, self.headers = encode_request(feeds)
        self.completed = self.errors = 0
        self._lock = threading.Lock()
        self._stops: list[threading.Event] = []
        self._threads: list[threading.Thread] = []

    def _client(self, stop: threading.Event) -> None:
        transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        with httpx.Client(transport=transport, timeout=60) as client:
            while not stop.is_set():
                try:
                    ok = client.post(self.url, content=self.body, headers=self.headers).status_code == 200
                except httpx.HTTPError:
                    ok = False
                    stop.wait(0.1)  # do not spin on a server that is going away
                with self._lock:
                    if ok:
                        self.completed += 1
                    else:
                        self.errors += 1

    def set(self, n: int) -> None:
        """Run exactly ``n`` clients."""
        while len(self._stops) > n:
            self._stops.pop().set()
            self._threads.pop().join(timeout=5)  # a client stuck on a slow answer is a daemon thread: leave it
        while len(self._stops) < n:
            stop = threading.Event()
            th = threading.Thread(target=self._client, args=(stop,), daemon=True)
            th.start()
            self._stops.append(stop)
            self._threads.append(th)

    def stats(self) -> dict:
        try:
            server = httpx.get(self.load_url, timeout=10).json()
        except (httpx.HTTPError, ValueError):
            server = {}
        with self._lock:
            return {"completed": self.completed, "errors": self.errors, "t": time.monotonic(),
                    "clients": len(self._stops), "server": server}


def main(argv: list[str] | None = None) -> None:
    """Serve commands from stdin until "quit" or end of input."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("server")
    ap.add_argument("model")
    args = ap.parse_args(argv)
    try:
        gen = LoadGen(args.server, args.model)
        sys.stdout.write(MARK + json.dumps({"ok": True}) + "\n")
    except Exception as exc:
        sys.stdout.write(MARK + json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        sys.stdout.flush()
        return
    sys.stdout.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            break
        if cmd.get("op") == "set":
            gen.set(int(cmd["clients"]))
            answer = {"ok": True, **gen.stats()}
        else:
            answer = {"ok": True, **gen.stats()}
        sys.stdout.write(MARK + json.dumps(answer) + "\n")
        sys.stdout.flush()
    gen.set(0)


if __name__ == "__main__":
    main()
