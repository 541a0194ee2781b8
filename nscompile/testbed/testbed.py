"""Orchestration: start the server, the load generator and the device, and talk to them.

One :class:`Testbed` owns the link (namespaces or loopback) and, in kernel mode, the
cpusets that pin the device to one CPU and the server side to the others, for a whole
benchmark run; :meth:`Testbed.session` starts, for one build and one device profile,
the server (``nscompile serve`` on the build's ``cloud/``), the load generator next to
it and the device worker (under the profile's CPU quota), and stops all three on exit.
Children run in their own sessions and are stopped by pid.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from nscompile.errors import NscompileError
from nscompile.testbed import cleanup
from nscompile.testbed.link import (
    CpuQuota,
    CpuSet,
    Rates,
    cpu_split,
    format_cpus,
    make_link,
)

MARK = "@@"


class Worker:
    """A child process that answers JSON commands with ``@@``-prefixed JSON lines.

    Args:
        cmd: the command line.
        name: for messages and the log file.
        log_dir: where its stderr goes (``NAME.log``).
        quits: whether it reads commands; False (the server): stop it with signals only.
        groups: cgroups (:class:`CpuSet`, :class:`CpuQuota`) to put it in as soon as it starts.

    Raises:
        NscompileError: it cannot be put in one of ``groups`` (it is stopped then).
    """

    def __init__(self, cmd: list[str], name: str, log_dir: Path, quits: bool = True, groups: tuple = ()):
        self.name = name
        self.quits = quits
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, start_new_session=True, env=env)
        self._handle = cleanup.register(f"process {name} ({self.proc.pid})", self.stop)
        try:
            # Right after the fork: the interpreter has not started any thread or child yet,
            # and cgroup.procs moves every thread of the process anyway.
            for group in groups:
                group.add(self.proc.pid)
        except OSError as exc:
            self.close()
            raise NscompileError(f"cannot put {name} into {group.path} ({exc.strerror})") from None
        self._answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self._answers.put(json.loads(line[len(MARK):]))
        self._answers.put(None)  # end of output: the process exited

    def answer(self, timeout_s: float) -> dict:
        """The next answer; raises NscompileError if the worker died, failed or timed out."""
        try:
            a = self._answers.get(timeout=timeout_s)
        except queue.Empty:
            raise NscompileError(f"{self.name} did not answer within {timeout_s:.0f} s; see {self.log_path}") from None
        if a is None:
            raise NscompileError(f"{self.name} exited (code {self.proc.poll()}); see {self.log_path}")
        if not a.get("ok"):
            raise NscompileError(f"{self.name}: {a.get('error')}; see {self.log_path}")
        return a

    def ask(self, timeout_s: float = 600.0, **cmd) -> dict:
        """Send one command and wait for its answer."""
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise NscompileError(f"{self.name} is gone (code {self.proc.poll()}); see {self.log_path}") from None
        return self.answer(timeout_s)

    def stop(self) -> None:
        """Ask it to quit, then terminate, then kill (its own process group only)."""
        if self.quits and self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=3)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        for f in (self.proc.stdin, self._log):
            try:
                f.close()
            except OSError:
                pass

    def close(self) -> None:
        """Stop it and forget its cleanup action."""
        cleanup.run_one(self._handle)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    """Server + load generator + device for one build; see :meth:`Testbed.session`."""

    def __init__(self, testbed: Testbed, server: Worker | subprocess.Popen, loadgen: Worker, device: Worker,
                 cuts: list[str], quota: CpuQuota | None):
        self.testbed, self.server, self.loadgen, self.device = testbed, server, loadgen, device
        self.cuts, self.quota = cuts, quota
        self.rates = Rates(None, None, 0.0)
        self.last_pruned: dict[str, dict] = {}  # what the last rounds call left out, cut -> why

    def set_network(self, rates: Rates) -> None:
        """Shape the link (tc in kernel mode) and tell the device what to add in user space."""
        self.testbed.link.set(rates)
        self.device.ask(**{"op": "link", **self.testbed.link.transport_rates(rates)})
        self.rates = rates

    def set_clients(self, n: int) -> dict:
        """Run ``n`` load-generator clients from now on; returns its counters."""
        return self.loadgen.ask(op="set", clients=int(n))

    def load_stats(self) -> dict:
        """Load-generator counters and the server's load report."""
        return self.loadgen.ask(op="stats")

    def run(self, cut: str | None, n: int, warmup: int = 0, max_s: float = 60.0, fresh: bool = False,
            stale_s: float = 10.0, timeout_s: float = 900.0) -> list[dict]:
        """Run requests on the device (``cut`` None: nscompile chooses); their RunRecords as dicts."""
        return self.device.ask(timeout_s=timeout_s, op="run", cut=cut, n=n, warmup=warmup, max_s=max_s,
                               fresh=fresh, stale_s=stale_s)["records"]

    def rounds(self, cuts: list[str | None], rounds: int, warmup: int = 1, max_s: float = 60.0, fresh: bool = False,
               stale_s: float = 10.0, prune: float = 0.0, min_s: float = 0.0, sets: dict[str, str] | None = None,
               first: list[str] | None = None, managed: list[str] | None = None, weights: dict[str, int] | None = None,
               timeout_s: float = 3600.0) -> dict[str | None, list[dict]]:
        """Measure several modes side by side, one request of each per round in random order.

        Args:
            cuts: the modes: None (nscompile chooses) and/or cut ids (forced).
            rounds: at most this many rounds.
            warmup: unmeasured requests of nscompile's own mode first.
            max_s: no new round after this many seconds, once 3 rounds are done.
            min_s: more rounds than ``rounds`` while under this many seconds (at most
                the device's ``MAX_ROUNDS``).
            fresh: forget the estimates first (a new network).
            stale_s: the runner's staleness limit from now on.
            prune: skip a forced cut for the rest of the rounds once a lower bound on its
                latency made of this call's measurements (its fastest request, or the
                device's :class:`~nscompile.testbed.device.Bounds`) is over this many times
                the lowest median of the forced cuts (0: never).
            sets: cut id -> device set as a hex bit mask, for those bounds.
            first: cuts the first round measures before the others.
            managed: cuts whose server models and prefix sessions load before their first
                request and unload, those that sat out first, when the weights loaded
                would exceed the device's ``--keep-mb``.
            weights: cut id -> weight bytes its two sessions hold.
            timeout_s: how long to wait for the answer.

        Returns:
            mode -> its RunRecords as dicts (each with ``round`` and ``slot``); the cuts that
            sat out, and why, are in :attr:`last_pruned`.
        """
        answer = self.device.ask(timeout_s=timeout_s, op="rounds", cuts=list(cuts), rounds=rounds, warmup=warmup,
                                 max_s=max_s, min_s=min_s, fresh=fresh, stale_s=stale_s, prune=prune, sets=sets,
                                 first=first, managed=managed, weights=weights)
        self.last_pruned = answer.get("pruned", {})
        return dict(zip(cuts, answer["records"]))

    def policy_rounds(self, policies: list[str], rounds: int, warmup: int = 1, max_s: float = 60.0, fresh: bool = False,
                      stale_s: float = 10.0, min_s: float = 0.0, timeout_s: float = 1800.0) -> dict[str, list[dict]]:
        """nscompile's own requests under several policies, side by side (see :meth:`rounds`).

        Args:
            policies: policy text forms ("latency", "slo(latency_ms=150)", ...), one mode each.
            rounds, warmup, max_s, fresh, stale_s, min_s, timeout_s: as for :meth:`rounds`.

        Returns:
            policy -> its RunRecords as dicts.
        """
        answer = self.device.ask(timeout_s=timeout_s, op="rounds", cuts=[None] * len(policies), rounds=rounds,
                                 warmup=warmup, max_s=max_s, min_s=min_s, fresh=fresh, stale_s=stale_s, prune=0.0,
                                 policies=list(policies))
        return dict(zip(policies, answer["records"]))

    def trace(self, cut: str | None, phases: list[tuple[float, Rates]], stale_s: float = 3.0) -> list[dict]:
        """Requests back to back while the link follows ``phases`` ((seconds, rates) each).

        The device switches its user-space part (RTT) itself; this process switches tc at
        the same instants of the shared monotonic clock.
        """
        kernel = self.testbed.link.kernel
        records = self._timed(cut, [(seconds, rates) for seconds, rates in phases], stale_s, None,
                              lambda i: self.testbed.link.set(phases[i][1]) if kernel else None)
        self.set_network(phases[-1][1])
        return records

    def device_load_trace(self, cut: str | None, phases: list[tuple[float, bool]], stale_s: float = 3.0,
                          device_load: float | None = None) -> list[dict]:
        """Requests back to back on the current link while the device is loaded in some phases.

        Args:
            cut: None (nscompile chooses) or a forced cut.
            phases: (seconds, loaded) each; a loaded phase gives the device 40% of its CPU
                time (see :class:`_Slowdown`).
            stale_s: the runner's staleness limit.
            device_load: pin the runner's device slowdown (None: it learns it).

        Returns:
            RunRecords as dicts, each with ``t`` (seconds from the start) and ``phase``.
        """
        slow = _Slowdown(self)
        try:
            return self._timed(cut, [(seconds, self.rates) for seconds, _ in phases], stale_s, device_load,
                               lambda i: slow.start() if phases[i][1] else slow.stop())
        finally:
            slow.close()

    def _timed(self, cut: str | None, phases: list[tuple[float, Rates]], stale_s: float, device_load: float | None,
               switch) -> list[dict]:
        """The device's trace op over ``phases``; ``switch(i)`` runs here as phase ``i`` starts."""
        t0 = time.monotonic() + 0.5
        spec, until = [], 0.0
        for seconds, rates in phases:
            until += seconds
            spec.append({"until_s": until, **self.testbed.link.transport_rates(rates)})
        self.device.proc.stdin.write(json.dumps({"op": "trace", "cut": cut, "t0": t0, "phases": spec, "stale_s": stale_s,
                                                 "device_load": device_load}) + "\n")
        self.device.proc.stdin.flush()
        start = 0.0
        for i, (seconds, _) in enumerate(phases):
            time.sleep(max(0.0, t0 + start - time.monotonic()))
            switch(i)
            start += seconds
        records = self.device.answer(timeout_s=until + 600)["records"]
        for r in records:
            r["t"] -= t0
        return records


class Fleet:
    """One server and several devices; see :meth:`Testbed.fleet`."""

    def __init__(self, testbed: Testbed, server: Worker, loadgen: Worker, devices: list[Worker]):
        self.testbed, self.server, self.loadgen, self.devices = testbed, server, loadgen, devices

    def set_network(self, rates: Rates) -> None:
        """Give every device its own emulated link of ``rates``.

        The veth link is left unshaped: one tc queue would make the devices share one
        uplink, where each phone of a fleet has its own radio; so every device's
        transport adds its own transfer times and RTT in user space.
        """
        self.testbed.link.set(Rates(None, None, 0.0))
        for device in self.devices:
            device.ask(op="link", rtt_ms=rates.rtt_ms, up_mbps=rates.up_mbps, down_mbps=rates.down_mbps)

    def loop(self, cut: str | None, seconds: float, fixed_load: float | None = None,
             poll_s: float = 0.25) -> tuple[list[list[dict]], list[dict]]:
        """Every device runs requests back to back for ``seconds``, all starting at once.

        Args:
            cut: None (nscompile chooses) or a cut forced on every device.
            seconds: how long.
            fixed_load: pin the devices' server load estimate (1: as if the server were idle).
            poll_s: how often the server's load report is read meanwhile.

        Returns:
            (records per device, each with ``t`` from the start; the server's load
            reports, each with ``t``).
        """
        t0 = time.monotonic() + 0.5
        for device in self.devices:
            device.proc.stdin.write(json.dumps({"op": "loop", "cut": cut, "t0": t0, "seconds": seconds,
                                                "fixed_load": fixed_load}) + "\n")
            device.proc.stdin.flush()
        reports = []
        while time.monotonic() < t0 + seconds:
            stats = self.loadgen.ask(op="stats")
            reports.append({"t": stats["t"] - t0, **stats.get("server", {})})
            time.sleep(poll_s)
        records = [device.answer(timeout_s=seconds + 600)["records"] for device in self.devices]
        for recs in records:
            for r in recs:
                r["t"] -= t0
        return records, reports


class _Slowdown:
    """Slow the device to ``share`` of its CPU time: a tighter CPU quota in kernel mode (its
    own quota scaled, or a new one), else a busy loop on its CPUs.

    The busy loop is the weaker of the two: the scheduler favours the device, which sleeps
    between requests, over a task that never sleeps (measured here: 1.4 ms AlexNet requests
    took no longer with a hog on their one CPU), so user-space mode shows little slowdown.
    """

    def __init__(self, session: Session, share: float = 0.4):
        self.session, self.share = session, share
        self.group: CpuQuota | None = None
        self.hog: subprocess.Popen | None = None
        self._base_cores = session.quota.cores if session.quota is not None else None

    def start(self) -> None:
        s = self.session
        if s.quota is not None:
            s.quota.set_cores(self._base_cores * self.share if self._base_cores else self.share)
        elif s.testbed.link.kernel:
            if self.group is None:
                self.group = CpuQuota("slow", self.share)
                self.group.add(s.device.proc.pid)
            self.group.set_cores(self.share)
        elif self.hog is None:
            self.hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, start_new_session=True)
            os.sched_setaffinity(self.hog.pid, os.sched_getaffinity(s.device.proc.pid))

    def stop(self) -> None:
        s = self.session
        if s.quota is not None:
            s.quota.set_cores(self._base_cores)
        elif self.group is not None:
            self.group.set_cores(None)
        if self.hog is not None:
            self.hog.kill()
            self.hog.wait(timeout=10)
            self.hog = None

    def close(self) -> None:
        self.stop()
        if self.group is not None:
            self.group.close()  # the device goes back to the root group
            self.group = None


class Testbed:
    """The emulated device-network-server setup for a benchmark run.

    Args:
        log_dir: where the children's stderr goes.
        userspace: use the user-space fallback even where kernel mode is possible.

    Attributes:
        link: the link (KernelLink or UserLink).
        fallback_reason: why kernel mode is not used (None when it is).
        cpusets: kernel mode on two CPUs or more: "device" and "server" :class:`CpuSet`;
            else empty.
        pinning_problem: why nothing is pinned (None when it is).
    """

    def __init__(self, log_dir: Path, userspace: bool = False):
        self.log_dir = Path(log_dir)
        self.link, self.fallback_reason = make_link(userspace)
        self._closed = False
        self._handle = cleanup.register("testbed link", self.link.close)
        self.cpusets: dict[str, CpuSet] = {}
        self.pinning_problem: str | None = "user-space fallback"
        if self.link.kernel:
            self.pinning_problem = self._pin()

    def _pin(self) -> str | None:
        """Make the device's and the server's cpusets; why not, if they cannot be made."""
        split = cpu_split()
        if isinstance(split, str):
            return split
        try:
            self.cpusets["device"] = CpuSet("dev", split[0])
            self.cpusets["server"] = CpuSet("srv", split[1])
        except NscompileError as exc:
            for cs in self.cpusets.values():
                cs.close()
            self.cpusets.clear()
            return str(exc)
        return None

    @property
    def server_cpus(self) -> list[int] | None:
        """The CPUs the server and the load generator are pinned to (None: not pinned)."""
        cs = self.cpusets.get("server")
        return cs.cpus if cs else None

    @property
    def server_threads(self) -> int | None:
        """onnxruntime threads per server model that fit the pinned server (None: not pinned)."""
        return len(self.server_cpus) if self.server_cpus else None

    @property
    def mode(self) -> str:
        """"kernel" or "user"."""
        return "kernel" if self.link.kernel else "user"

    def describe(self) -> str:
        """One line on how the link and the device's CPU are emulated, and what runs on which CPUs."""
        if not self.link.kernel:
            return (self.link.describe() + f"; device CPU: thread limit only (fallback: {self.fallback_reason}); "
                    "no CPU pinning in the fallback: device, server and load generator share every CPU")
        text = self.link.describe() + "; device CPU: a cgroup-v1 CFS quota where the device profile has one"
        if self.pinning_problem:
            return text + f"; no CPU pinning ({self.pinning_problem}): device, server and load generator share every CPU"
        dev, srv = self.cpusets["device"], self.cpusets["server"]
        n = len(srv.cpus)
        return (text + f", on CPU {format_cpus(dev.cpus)} (cpuset {dev.path.name}); server and load generator on "
                f"CPU {format_cpus(srv.cpus)} (cpuset {srv.path.name}), the server with {n} onnxruntime thread(s) "
                f"per model and {n} inference slot(s)")

    @contextmanager
    def session(self, build_dir: Path, *, device_threads: int = 1, device_cores: float | None = None,
                server_threads: int | None = None, tag: str = "run", preload: list[str] | None = None):
        """Start server, load generator and device for ``build_dir``; stop them on exit.

        Args:
            build_dir: a build (plan.json, device/, cloud/).
            device_threads: onnxruntime threads of the device (the profile's).
            device_cores: CPU quota of the device in cores (kernel mode only); None: no quota.
            server_threads: onnxruntime threads per server model (default: one per pinned
                server CPU, else onnxruntime's).
            tag: names the log files.
            preload: the server models to load at start-up (None: all); the others load
                when the device asks (see :meth:`Session.rounds`' ``managed``).

        Yields:
            The :class:`Session`.
        """
        build_dir = Path(build_dir)
        py = sys.executable
        workers: list[Worker] = []
        quota = None
        try:
            server, loadgen, url = self._start_server(build_dir, server_threads, preload, tag, workers)
            device_groups: tuple = (self.cpusets["device"],) if self.cpusets else ()
            if self.link.kernel and device_cores:
                quota = CpuQuota("dev", device_cores)
                device_groups += (quota,)
            device_cmd = [py, "-m", "nscompile.testbed.device", str(build_dir / "device"), url, "--threads", str(device_threads)]
            if quota is not None:
                device_cmd += ["--quota-group", str(quota.path)]
            device = Worker(self.link.wrap(device_cmd, "device"), f"{tag}-device", self.log_dir, groups=device_groups)
            workers.append(device)
            cuts = device.answer(timeout_s=600)["cuts"]
            session = Session(self, server, loadgen, device, cuts, quota)
            yield session
        finally:
            for w in reversed(workers):
                w.close()
            if quota is not None:
                quota.close()

    def _start_server(self, build_dir: Path, server_threads: int | None, preload: list[str] | None, tag: str,
                      workers: list[Worker]) -> tuple[Worker, Worker, str]:
        """Start ``nscompile serve`` on the build's ``cloud/`` and the load generator beside it (appended
        to ``workers``, so the caller stops them); (server, load generator, URL the devices use)."""
        plan = json.loads((build_dir / "plan.json").read_text())
        py = sys.executable
        if self.link.kernel:
            host, port = "0.0.0.0", 8000
            url = f"http://{self.link.server_host}:{port}"
            local = f"http://127.0.0.1:{port}"
        else:
            host, port = "127.0.0.1", _free_port()
            url = local = f"http://127.0.0.1:{port}"
        server_cmd = [py, "-m", "nscompile", "serve", str(build_dir / "cloud"), "--host", host, "--port", str(port)]
        server_threads = server_threads or self.server_threads
        if server_threads:
            server_cmd += ["--threads", str(server_threads)]
        if preload is not None:
            server_cmd += ["--preload", ",".join(preload)]
        if self.server_cpus:
            # The server's default is one inference slot per CPU of the machine; pinned,
            # more slots than its own CPUs would only time-share them.
            server_cmd += ["--concurrency", str(len(self.server_cpus))]
        server_side = (self.cpusets["server"],) if self.cpusets else ()
        server = Worker(self.link.wrap(server_cmd, "server"), f"{tag}-server", self.log_dir, quits=False, groups=server_side)
        workers.append(server)
        loadgen = Worker(self.link.wrap([py, "-m", "nscompile.testbed.loadgen", local, _load_target(plan)], "server"),
                         f"{tag}-loadgen", self.log_dir, groups=server_side)
        workers.append(loadgen)
        loadgen.answer(timeout_s=300)  # answers once the server is ready
        return server, loadgen, url

    @contextmanager
    def fleet(self, build_dir: Path, n: int, *, device_threads: int = 1, device_cores: float | None = None,
              server_threads: int | None = None, tag: str = "fleet"):
        """Start one server and ``n`` devices for ``build_dir``, each device under its own CPU quota.

        The devices share the device CPUs (kernel mode: the device cpuset); ``n`` quotas of
        ``device_cores`` beyond those CPUs time-share them. Each device sets up (loads its
        sessions) before its quota applies. The load generator runs beside the server
        with no clients, to read the server's load report.

        Yields:
            The :class:`Fleet`.
        """
        build_dir = Path(build_dir)
        py = sys.executable
        workers: list[Worker] = []
        quotas: list[CpuQuota] = []
        try:
            server, loadgen, url = self._start_server(build_dir, server_threads, None, tag, workers)
            device_groups: tuple = (self.cpusets["device"],) if self.cpusets else ()
            devices = []
            for i in range(n):
                cmd = [py, "-m", "nscompile.testbed.device", str(build_dir / "device"), url, "--threads", str(device_threads)]
                devices.append(Worker(self.link.wrap(cmd, "device"), f"{tag}-device{i}", self.log_dir, groups=device_groups))
                workers.append(devices[-1])
            for i, device in enumerate(devices):
                device.answer(timeout_s=600)
                if self.link.kernel and device_cores:
                    quotas.append(CpuQuota(f"dev{i}", device_cores))
                    quotas[-1].add(device.proc.pid)
            yield Fleet(self, server, loadgen, devices)
        finally:
            for w in reversed(workers):
                w.close()
            for q in quotas:
                q.close()

    def close(self) -> None:
        """Remove the cpusets and the link (namespaces, qdiscs)."""
        if not self._closed:
            self._closed = True
            for cs in self.cpusets.values():
                cs.close()
            cleanup.run_one(self._handle)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load_target(plan: dict) -> str:
    """The server model the load generator calls: the one doing the most work (all-cloud if emitted)."""
    served = [c for c in plan["cuts"] if c.get("cloud_model")]
    if not served:
        raise NscompileError(f"build of {plan['model']['name']} has no server model; rebuild with a wider --bandwidth grid")
    return min(served, key=lambda c: c["device_nodes"])["cloud_model"]
