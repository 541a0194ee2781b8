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
  "policies": [null | POLICY, ...], "sets": {ID: hex mask}, "first": [ID], "managed": [ID], "weights": {ID: bytes}}``:
  the modes measured side by side: each round runs one request per mode (null:
  nscompile chooses, under ``policies[i]`` when given, e.g. "slo(latency_ms=150)"; an id:
  that cut forced), in a fresh seeded random order each round
  so that no mode always goes first or always follows the same mode; stops after ``rounds`` rounds, or earlier once
  ``max_s`` seconds have passed and at least 3 rounds are done, or later while under
  ``min_s`` seconds (up to ``MAX_ROUNDS``: fast models get sharper medians for free). ``warmup`` unmeasured
  requests of nscompile's own mode come first (after ``fresh`` its first request pays
  for probing the new network; the forced cuts are warm from the session's start).
  A forced cut sits the rest of the rounds out once a lower bound on its latency, made of
  this op's measurements, exceeds ``prune`` times the lowest median of the forced cuts
  (``prune`` 0: never): its fastest request, or, before it has any, the bound of
  :class:`Bounds` (``sets`` gives the device sets it needs). ``first`` lists cuts the first
  round measures before the others (all-device and all-cloud: a best median to prune
  against from the start). The server models of the cuts in ``managed`` are loaded
  (``POST /v2/repository/models/M/load``, and the prefix run once here) before their first
  request, and unloaded with their prefix session when the weights loaded (``weights``:
  cut -> bytes) would exceed ``--keep-mb``, those that sat out first: a VGG's hundred
  candidates do not fit in memory at once. Answers ``"records"``: one list per mode, in
  the order of ``cuts``, each record with its ``round`` and its ``slot`` (position in the
  round), and ``"pruned"``: cut -> ``{"round", "rule", "bound_ms", "best_ms"}``;
- ``{"op": "trace", "cut", "t0", "phases": [{"until_s", "rtt_ms", "up_mbps", "down_mbps"}], "device_load"}``:
  requests back to back until the last phase ends, switching the transport's conditions
  at each phase's end (times relative to ``t0`` on the shared monotonic clock); the
  device-load estimate starts afresh, or is pinned at ``device_load`` when given;
- ``{"op": "loop", "cut", "t0", "seconds", "fixed_load"}``: requests back to back from ``t0``
  (the shared monotonic clock) for ``seconds``, estimates forgotten first; ``fixed_load``
  pins the server load estimate (null: read it from the server), as a fleet of devices
  does it (:meth:`nscompile.testbed.testbed.Fleet.loop`);
- ``{"op": "quit"}``.

Imports only the runtime's dependencies (numpy, onnxruntime, httpx).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

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


#: Bound slack: a device set's prefix runs at least this share of the fastest time measured for
#: a set inside it (and its suffix likewise on the server), timer and cache noise allowed for.
COMPUTE_SLACK = 0.8
#: ... and its upload goes at most this many times faster than the fastest goodput measured.
GOODPUT_SLACK = 1.25
#: Uploads smaller than this do not measure goodput (the RTT and slow start dominate them).
GOODPUT_MIN_BYTES = 256 * 1024
#: Managed cuts stay loaded, on the device and the server together, up to this many weight bytes.
KEEP_BYTES = 3 << 30


class Bounds:
    """Lower bounds on forced cuts' latencies, from what the current rounds op has measured.

    No cost model enters: a device set's prefix runs every node of a smaller set, so it
    takes at least the fastest measured prefix time of any lossless set inside it
    (times :data:`COMPUTE_SLACK`); its suffix likewise takes at least the fastest server
    time of any lossless set containing it; and its upload (exact bytes) goes no faster
    than :data:`GOODPUT_SLACK` times the fastest goodput any upload of over
    :data:`GOODPUT_MIN_BYTES` achieved, net of the RTT the runner measured. The phases
    follow each other, so the bound is their sum.

    Args:
        cuts: the forced cut ids.
        sets: cut id -> its device set as a hex bit mask (cuts without one get no
            compute bounds).
        lossless: cut id -> whether its tensors travel as fp32 (an encoded cut runs codec
            nodes too, so it bounds no other).
        upload_bytes: cut id -> bytes it sends.
    """

    def __init__(self, cuts: list[str], sets: dict[str, str], lossless: dict[str, bool], upload_bytes: dict[str, int]):
        self.upload_bytes = upload_bytes
        masks = {c: int(sets[c], 16) for c in cuts if c in sets}
        self.inside = {c: [m for m in masks if lossless[m] and masks[m] & masks[c] == masks[m]] for c in masks}
        self.around = {c: [m for m in masks if lossless[m] and masks[m] & masks[c] == masks[c]] for c in masks}
        self.prefix_ms: dict[str, float] = {}
        self.server_ms: dict[str, float] = {}
        self.goodput_mbps = 0.0

    def add(self, cut: str, rec: dict) -> None:
        """Note one measured request of ``cut``."""
        if rec.get("fell_back"):
            return
        self.prefix_ms[cut] = min(self.prefix_ms.get(cut, math.inf), rec.get("prefix_ms", 0.0))
        if rec.get("upload_bytes"):
            self.server_ms[cut] = min(self.server_ms.get(cut, math.inf), rec.get("server_ms", 0.0))
        if rec.get("upload_bytes", 0) >= GOODPUT_MIN_BYTES:
            wire_ms = max(rec.get("transfer_ms", 0.0) - (rec.get("rtt_ms") or 0.0), 1e-3)
            self.goodput_mbps = max(self.goodput_mbps, rec["upload_bytes"] * 8e-3 / wire_ms)

    def lower_ms(self, cut: str) -> float:
        """A lower bound on any request of ``cut`` (0 when nothing measured bounds it)."""
        prefix = max((self.prefix_ms[m] for m in self.inside.get(cut, ()) if m in self.prefix_ms), default=0.0)
        server = max((self.server_ms[m] for m in self.around.get(cut, ()) if m in self.server_ms), default=0.0)
        upload = 0.0
        if self.goodput_mbps > 0 and self.upload_bytes.get(cut):
            upload = self.upload_bytes[cut] * 8e-3 / (GOODPUT_SLACK * self.goodput_mbps)
        return COMPUTE_SLACK * (prefix + server) + upload


class Device:
    """The worker's state: one runner (sessions stay loaded), its link and its input."""

    def __init__(self, device_dir: str, server: str, threads: int, stale_s: float, quota_group: str | None = None,
                 keep_bytes: int = KEEP_BYTES):
        self.link = LinkState()
        self.stale_s = stale_s
        self.server = server.rstrip("/")
        self.quota_group = Path(quota_group) if quota_group else None
        self.keep_bytes = keep_bytes
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(threads, 1)
        opts.inter_op_num_threads = 1
        self.client = make_client(self.link, 180.0)
        self.runner = SplitRunner(device_dir, server, deadline_ms=180_000, stale_s=stale_s, session_options=opts,
                                  client=self.client)
        self.feeds = _inputs(self.runner)
        # Managed cuts whose server model and prefix session are loaded, least recently used first,
        # with the weight bytes they hold (both sides together).
        self.loaded: OrderedDict[str, int] = OrderedDict()

    def load(self, cut_id: str, weight_bytes: int = 0) -> None:
        """Load a managed cut's server model and prefix session and run the prefix once (all unmeasured).

        Others loaded before go, least recently used first, while the weights held would
        exceed ``keep_bytes``. The device's CPU quota is lifted meanwhile: creating a
        session is set-up, not the emulated device's inference, and under a 12.5% quota
        it would take seconds per candidate.
        """
        if cut_id in self.loaded:
            self.loaded.move_to_end(cut_id)
            return
        while self.loaded and sum(self.loaded.values()) + weight_bytes > self.keep_bytes:
            self.release(next(iter(self.loaded)))
        cut = self.runner.plan.cuts[cut_id]
        answers: list = []
        # The server loads its model on its CPUs while the prefix session is made here.
        server = threading.Thread(target=lambda: answers.append(
            self.client.post(f"{self.server}/v2/repository/models/{cut.cloud_model}/load"))) if cut.cloud_model else None
        with self._quota_lifted():
            if server is not None:
                server.start()
            if cut.prefix is not None:
                self.runner.sessions.run(cut, self.feeds)
            if server is not None:
                server.join()
        if server is not None and (not answers or answers[0].status_code != 200):
            raise RuntimeError(f"the server cannot load {cut.cloud_model}: {answers[0].text[:300] if answers else 'no answer'}")
        self.loaded[cut_id] = weight_bytes

    def release(self, cut_id: str) -> None:
        """Unload a managed cut's server model and drop its prefix session (never the fallback's)."""
        if self.loaded.pop(cut_id, None) is None:
            return
        cut = self.runner.plan.cuts[cut_id]
        if cut.cloud_model:
            self.client.post(f"{self.server}/v2/repository/models/{cut.cloud_model}/unload")
        if cut_id != self.runner.plan.fallback:
            self.runner.sessions.drop(cut_id)

    @contextmanager
    def _quota_lifted(self):
        """No CPU quota on this process while the block runs (the group's own quota restored after)."""
        quota_file = self.quota_group / "cpu.cfs_quota_us" if self.quota_group else None
        saved = None
        if quota_file is not None:
            try:
                saved = quota_file.read_text().strip()
                quota_file.write_text("-1")
            except OSError:
                saved = None
        try:
            yield
        finally:
            if saved is not None:
                quota_file.write_text(saved)

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
               stale_s: float | None = None, prune: float = 0.0, min_s: float = 0.0, sets: dict[str, str] | None = None,
               first: list[str] | None = None, managed: list[str] | None = None,
               weights: dict[str, int] | None = None,
               policies: list[str | None] | None = None) -> tuple[list[list[dict]], dict]:
        """Measure every mode of ``cuts`` side by side (see the ``rounds`` op); records per mode, and the pruned cuts."""
        policies = policies or [None] * len(cuts)
        if len(policies) != len(cuts):
            raise ValueError(f"rounds: {len(policies)} policies for {len(cuts)} modes")
        usual = self.runner.policy
        try:
            return self._rounds(cuts, rounds, warmup, max_s, fresh, stale_s, prune, min_s, sets, first, managed,
                                weights, policies, usual)
        finally:
            self.runner.policy = usual

    def _rounds(self, cuts, rounds, warmup, max_s, fresh, stale_s, prune, min_s, sets, first, managed, weights,
                policies, usual) -> tuple[list[list[dict]], dict]:
        if fresh:
            self.fresh(stale_s)
        if None in cuts:
            self.runner.policy = policies[cuts.index(None)] or usual
            for _ in range(warmup):
                self.one_of_many(None)
        plan = self.runner.plan
        forced = [c for c in cuts if c is not None]
        bounds = Bounds(forced, sets or {}, {c: plan.cuts[c].encoding == "fp32" for c in forced},
                        {c: sum(t.bytes for t in plan.cuts[c].tensors) for c in forced})
        managed_set = set(managed or ())
        records: list[list[dict]] = [[] for _ in cuts]
        pruned: dict[str, dict] = {}
        shuffler = random.Random(ROUNDS_SEED)
        start = time.monotonic()
        out: set[int] = set()
        leading = [cuts.index(c) for c in (first or []) if c in cuts]

        def sit_out(i: int, r: int, rule: str, bound: float, best: float) -> None:
            out.add(i)
            pruned[cuts[i]] = {"round": r, "rule": rule, "bound_ms": round(bound, 3), "best_ms": round(best, 3)}
            if cuts[i] in self.loaded:
                self.loaded.move_to_end(cuts[i], last=False)  # first to go when memory is needed

        for r in range(MAX_ROUNDS):
            if r and (r < 16 or r % 16 == 0):  # medians of thousands of requests: not every round
                for i, fastest, best in _out_of_the_running(cuts, records, prune):
                    if i not in out:
                        sit_out(i, r, "fastest request", fastest, best)
            # A fresh random order each round: whatever the previous request leaves behind
            # (cold caches after a network wait, a busy server queue) falls on a random
            # mode. (Rotating one fixed order would not do: it keeps every mode's
            # predecessor, so nscompile's own requests always followed the same cut.)
            order = shuffler.sample(range(len(cuts)), len(cuts))
            if r == 0 and leading:
                order = leading + [i for i in order if i not in leading]
            slot = 0
            for i in order:
                if i in out:
                    continue
                cut = cuts[i]
                if cut is not None and prune and not records[i]:
                    best = _best_median(cuts, records)
                    bound = bounds.lower_ms(cut)
                    if bound > prune * best:
                        sit_out(i, r, "bound", bound, best)
                        continue
                if cut in managed_set:
                    self.load(cut, (weights or {}).get(cut, 0))
                self.runner.policy = policies[i] or usual  # a policy may change between calls
                rec = self.one_of_many(cut)
                rec["round"], rec["slot"] = r, slot
                slot += 1
                records[i].append(rec)
                if cut is not None:
                    bounds.add(cut, rec)
            elapsed = time.monotonic() - start
            if (r + 1 >= rounds and elapsed >= min_s) or (r + 1 >= MIN_ROUNDS and elapsed > max_s):
                break
        return records, pruned

    def loop(self, cut: str | None, t0: float, seconds: float, fixed_load: float | None = None) -> list[dict]:
        """Requests back to back from ``t0`` for ``seconds`` (see the ``loop`` op), estimates fresh."""
        self.fresh()
        self.runner.fixed_load = fixed_load
        try:
            time.sleep(max(0.0, t0 - time.monotonic()))
            end, records = t0 + seconds, []
            while time.monotonic() < end and len(records) < 100_000:  # bounded; the clock ends it first
                records.append(self.one(cut))
            return records
        finally:
            self.runner.fixed_load = None

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


def _best_median(cuts: list[str | None], records: list[list[dict]]) -> float:
    """The lowest median latency of the forced cuts measured so far (inf before any)."""
    medians = [statistics.median(rec["total_ms"] for rec in records[i]) for i, c in enumerate(cuts) if c is not None and records[i]]
    return min(medians, default=math.inf)


def _out_of_the_running(cuts: list[str | None], records: list[list[dict]], prune: float) -> list[tuple[int, float, float]]:
    """The forced cuts too slow to be the fastest: (index, its fastest request, the best median) each.

    A cut whose fastest request took over ``prune`` times the lowest median of the forced
    cuts has a median at least that far above it (a cut meant for a gigabit link uploads
    megabytes: minutes on 3G, every round). The median, not the best cut's slowest
    request: one preempted request of a 0.1 ms model must not bring a 15 ms cut back.
    """
    if not prune:
        return []
    best = _best_median(cuts, records)
    out = []
    for i, c in enumerate(cuts):
        if c is not None and records[i]:
            fastest = min(rec["total_ms"] for rec in records[i])
            if fastest > prune * best:
                out.append((i, fastest, best))
    return out


def main(argv: list[str] | None = None) -> None:
    """Serve commands from stdin until "quit" or end of input."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("device_dir")
    ap.add_argument("server")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stale-s", type=float, default=2.0)
    ap.add_argument("--quota-group", help="this process's CPU quota cgroup, lifted while sessions load")
    ap.add_argument("--keep-mb", type=float, default=KEEP_BYTES / (1 << 20),
                    help="weights the managed cuts keep loaded, device and server together")
    args = ap.parse_args(argv)
    out = sys.stdout
    try:
        dev = Device(args.device_dir, args.server, args.threads, args.stale_s, args.quota_group, int(args.keep_mb * (1 << 20)))
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
                records, pruned = dev.rounds(list(cmd["cuts"]), int(cmd.get("rounds", 5)), int(cmd.get("warmup", 1)),
                                             float(cmd.get("max_s", 60.0)), bool(cmd.get("fresh", False)),
                                             cmd.get("stale_s"), float(cmd.get("prune") or 0.0), float(cmd.get("min_s") or 0.0),
                                             cmd.get("sets"), cmd.get("first"), cmd.get("managed"), cmd.get("weights"),
                                             cmd.get("policies"))
                answer = {"ok": True, "records": records, "pruned": pruned}
            elif op == "loop":
                answer = {"ok": True, "records": dev.loop(cmd.get("cut"), float(cmd["t0"]), float(cmd["seconds"]),
                                                          cmd.get("fixed_load"))}
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
