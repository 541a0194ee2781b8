"""The emulated device: a worker process that runs requests with SplitRunner when told to.

Started by the testbed (inside the device namespace and CPU cgroup in kernel mode) as
``python -m nscompile.testbed.device DEVICE_DIR SERVER_URL --threads N``. It reads one
JSON command per line on stdin and answers one JSON line (prefixed with ``@@``, so
library chatter on stdout is ignored) per command:

- ``{"op": "link", "rtt_ms", "up_mbps", "down_mbps"}``: the conditions its transport adds;
- ``{"op": "run", "cut": null | ID, "n", "warmup", "max_s", "fresh": bool}``: ``n``
  measured requests (``cut`` null: nscompile chooses; else that cut is forced), after
  ``warmup`` unmeasured ones, stopping early after ``max_s`` seconds (at least 3 kept);
  ``fresh`` forgets the bandwidth/RTT/load estimates first (a new network);
- ``{"op": "rounds", "cuts": [null | ID, ...], "rounds", "warmup", "max_s", "min_s", "fresh": bool, "prune",
  "policies": [null | POLICY, ...]}``:
  the modes measured side by side: each round runs one request per mode (null:
  nscompile chooses, under ``policies[i]`` when given, e.g. "slo(latency_ms=150)"; an id:
  that cut forced), in a fresh seeded random order each round
  so that no mode always goes first or always follows the same mode; stops after ``rounds`` rounds, or earlier once
  ``max_s`` seconds have passed and at least 3 rounds are done, or later while under
  ``min_s`` seconds (up to ``MAX_ROUNDS``: fast models get sharper medians for free). ``warmup`` unmeasured
  requests of nscompile's own mode come first (after ``fresh`` its first request pays
  for probing the new network; the forced cuts are warm from the session's start).
  After the first round, a forced cut whose fastest request took over ``prune`` times
  the lowest median of the forced cuts sits the rounds out (its own median cannot come
  near; ``prune`` 0: never). Answers ``"records"``: one list per
  mode, in the order of ``cuts``, each record with its ``round`` and its ``slot``
  (position in the round);
- ``{"op": "trace", "cut", "t0", "phases": [{"until_s", "rtt_ms", "up_mbps", "down_mbps"}], "device_load"}``:
  requests back to back until the last phase ends, switching the transport's conditions
  at each phase's end (times relative to ``t0`` on the shared monotonic clock); the
  device-load estimate starts afresh, or is pinned at ``device_load`` when given;
- ``{"op": "quit"}``.

Imports only the runtime's dependencies (numpy, onnxruntime, httpx).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

from nscompile.runtime import SplitRunner
from nscompile.testbed.shaping import LinkState, make_client

MARK = "@@"
#: The rounds op stops early on its time limit only after this many rounds.
MIN_ROUNDS = 3
#: The rounds op runs no more rounds than this, however fast they are.
MAX_ROUNDS = 2000
#: Seed of the rounds' request orders (reproducible runs).
ROUNDS_SEED = 20170408


def _inputs(runner: SplitRunner, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in runner.plan.inputs:
        shape = [d if d > 0 else 1 for d in spec.shape]
        if spec.dtype.startswith(("int", "uint", "bool")):
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)  # index 0 is valid for every lookup table
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


class Device:
    """The worker's state: one runner (sessions stay loaded), its link and its input."""

    def __init__(self, device_dir: str, server: str, threads: int, stale_s: float):
        self.link = LinkState()
        self.stale_s = stale_s
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(threads, 1)
        opts.inter_op_num_threads = 1
        self.runner = SplitRunner(device_dir, server, deadline_ms=180_000, stale_s=stale_s, session_options=opts,
                                  client=make_client(self.link, 180.0))
        self.feeds = _inputs(self.runner)

    def one(self, cut: str | None) -> dict:
        """One request (``cut`` None: nscompile chooses); its RunRecord as a dict, with ``t``."""
        self.runner.force_cut = cut
        _, rec = self.runner.run(self.feeds, with_record=True)
        d = rec.as_dict()
        d["t"] = time.monotonic()
        return d

    def one_of_many(self, cut: str | None) -> dict:
        """:meth:`one` when the modes take turns on one runner (the ``rounds`` op).

        Forced requests measure the same link and server as nscompile's own, so the
        runner may learn bandwidth, RTT and load from them; but a real device never
        makes them, so their success or failure must not start or end a back-off.
        """
        net = self.runner.net
        backoff = None if cut is None else net.backoff_state()
        d = self.one(cut)
        if backoff is not None:
            net.restore_backoff(backoff)
        # A background probe this request started must not overlap the next mode's
        # request: on the shared link and CPU it would slow a forced request down
        # (flattering nscompile), and the forced traffic would spoil the probe's sample.
        self.runner.wait_for_probe()
        return d

    def fresh(self, stale_s: float | None = None) -> None:
        """Forget the estimates: on a new network what the runner learnt about the old one must not carry over."""
        self.runner.reset_estimates(stale_s or self.stale_s, (0.5, 5.0))

    def run(self, cut: str | None, n: int, warmup: int, max_s: float, fresh: bool, stale_s: float | None = None) -> list[dict]:
        """Requests of one mode back to back (see the ``run`` op)."""
        if fresh:
            self.fresh(stale_s)
        for _ in range(warmup):
            self.one(cut)
        records, start = [], time.monotonic()
        for _ in range(max(n, 1)):
            records.append(self.one(cut))
            if len(records) >= 3 and time.monotonic() - start > max_s:
                break
        return records

    def rounds(self, cuts: list[str | None], rounds: int, warmup: int, max_s: float, fresh: bool,
               stale_s: float | None = None, prune: float = 0.0, min_s: float = 0.0,
               policies: list[str | None] | None = None) -> list[list[dict]]:
        """Measure every mode of ``cuts`` side by side (see the ``rounds`` op); records per mode."""
        policies = policies or [None] * len(cuts)
        if len(policies) != len(cuts):
            raise ValueError(f"rounds: {len(policies)} policies for {len(cuts)} modes")
        usual = self.runner.policy
        try:
            return self._rounds(cuts, rounds, warmup, max_s, fresh, stale_s, prune, min_s, policies, usual)
        finally:
            self.runner.policy = usual

    def _rounds(self, cuts, rounds, warmup, max_s, fresh, stale_s, prune, min_s, policies, usual) -> list[list[dict]]:
        if fresh:
            self.fresh(stale_s)
        if None in cuts:
            self.runner.policy = policies[cuts.index(None)] or usual
            for _ in range(warmup):
                self.one_of_many(None)
        records: list[list[dict]] = [[] for _ in cuts]
        shuffler = random.Random(ROUNDS_SEED)
        start = time.monotonic()
        out: set[int] = set()
        for r in range(MAX_ROUNDS):
            if r and (r < 16 or r % 16 == 0):  # medians of thousands of requests: not every round
                out = _out_of_the_running(cuts, records, prune)
            # A fresh random order each round: whatever the previous request leaves behind
            # (cold caches after a network wait, a busy server queue) falls on a random
            # mode. (Rotating one fixed order would not do: it keeps every mode's
            # predecessor, so nscompile's own requests always followed the same cut.)
            order = [i for i in shuffler.sample(range(len(cuts)), len(cuts)) if i not in out]
            for slot, i in enumerate(order):
                self.runner.policy = policies[i] or usual  # a policy may change between calls
                rec = self.one_of_many(cuts[i])
                rec["round"], rec["slot"] = r, slot
                records[i].append(rec)
            elapsed = time.monotonic() - start
            if (r + 1 >= rounds and elapsed >= min_s) or (r + 1 >= MIN_ROUNDS and elapsed > max_s):
                break
        return records

    def trace(self, cut: str | None, t0: float, phases: list[dict], stale_s: float | None = None,
              device_load: float | None = None) -> list[dict]:
        """Requests back to back while the link follows ``phases`` (see the ``trace`` op)."""
        self.fresh(stale_s)
        self.runner.cut_policy.device.reset()  # learn the device's speed afresh (or not at all: pinned)
        self.runner.fixed_device_load = device_load
        time.sleep(max(0.0, t0 - time.monotonic()))  # start with the testbed's switch of the link
        records, end = [], t0 + phases[-1]["until_s"]
        i = -1
        for _ in range(100_000):  # bounded; the clock ends it long before
            now = time.monotonic()
            if now >= end:
                break
            k = next(j for j, p in enumerate(phases) if now < t0 + p["until_s"])
            if k != i:
                i, p = k, phases[k]
                self.link.set(p["rtt_ms"], p.get("up_mbps"), p.get("down_mbps"))
            rec = self.one(cut)
            rec["phase"] = i
            records.append(rec)
        return records


def _out_of_the_running(cuts: list[str | None], records: list[list[dict]], prune: float) -> set[int]:
    """Indices of the forced cuts too slow to be the fastest: skip them for the rest of the rounds.

    A cut whose fastest request took over ``prune`` times the lowest median of the forced
    cuts has a median at least that far above it (a cut meant for a gigabit link uploads
    megabytes: minutes on 3G, every round). The median, not the best cut's slowest
    request: one preempted request of a 0.1 ms model must not bring a 15 ms cut back.
    """
    forced = [i for i, c in enumerate(cuts) if c is not None and records[i]]
    if not prune or not forced:
        return set()
    ms = [[rec["total_ms"] for rec in recs] for recs in records]
    best = min(statistics.median(ms[i]) for i in forced)
    return {i for i in forced if min(ms[i]) > prune * best}


def main(argv: list[str] | None = None) -> None:
    """Serve commands from stdin until "quit" or end of input."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("device_dir")
    ap.add_argument("server")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stale-s", type=float, default=2.0)
    args = ap.parse_args(argv)
    out = sys.stdout
    try:
        dev = Device(args.device_dir, args.server, args.threads, args.stale_s)
        out.write(MARK + json.dumps({"ok": True, "cuts": list(dev.runner.plan.cuts)}) + "\n")
    except Exception as exc:  # report, then exit: the testbed shows the message
        out.write(MARK + json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd.get("op")
        try:
            if op == "quit":
                break
            if op == "link":
                dev.link.set(cmd["rtt_ms"], cmd.get("up_mbps"), cmd.get("down_mbps"))
                answer = {"ok": True}
            elif op == "run":
                answer = {"ok": True, "records": dev.run(cmd.get("cut"), int(cmd.get("n", 5)), int(cmd.get("warmup", 1)),
                                                         float(cmd.get("max_s", 60.0)), bool(cmd.get("fresh", False)),
                                                         cmd.get("stale_s"))}
            elif op == "rounds":
                answer = {"ok": True, "records": dev.rounds(list(cmd["cuts"]), int(cmd.get("rounds", 5)), int(cmd.get("warmup", 1)),
                                                            float(cmd.get("max_s", 60.0)), bool(cmd.get("fresh", False)),
                                                            cmd.get("stale_s"), float(cmd.get("prune") or 0.0),
                                                            float(cmd.get("min_s") or 0.0), cmd.get("policies"))}
            elif op == "trace":
                answer = {"ok": True, "records": dev.trace(cmd.get("cut"), float(cmd["t0"]), cmd["phases"], cmd.get("stale_s"),
                                                           cmd.get("device_load"))}
            else:
                answer = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as exc:  # one failed command must not kill the worker
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(MARK + json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
