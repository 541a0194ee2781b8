"""The emulated device-server link and the device's CPU: namespaces, veth, tc tbf, cgroup quota.

Kernel mode (root, ``ip``, ``tc``, a cgroup-v1 ``cpu`` hierarchy): two network
namespaces, ``nscb-<pid>-dev`` (the device) and ``nscb-<pid>-srv`` (the server and the
load generator), joined by one veth pair. The device's egress (the uplink) and the
server's egress towards it (the downlink) are each shaped by a token bucket filter. The
RTT is added in user space (:mod:`nscompile.testbed.shaping`), as this kernel has no
netem. The device process runs in a cgroup ``nscb-<pid>-dev`` with a CFS quota.
Where the machine has two CPUs or more, cgroup-v1 cpusets keep the device on one CPU
(``cpuset/nscb-<pid>-dev``) and the server and the load generator on the others
(``cpuset/nscb-<pid>-srv``), so the server's work does not inflate the device's.

User mode (any of those missing): everything on 127.0.0.1, bandwidth shaped in user
space by the device's HTTP transport, the device limited only by its thread count.

Every namespace and cgroup is registered with :mod:`nscompile.testbed.cleanup`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from nscompile.cgroups import CGROUP_CPU, CpuQuotaGroup, cpu_controller_problem, remove_group
from nscompile.errors import NscompileError
from nscompile.testbed import cleanup

#: tbf counts Ethernet/IP/TCP headers; a full 1448-byte TCP payload takes a 1514-byte frame.
#: Shaping the wire rate this much higher makes the goodput equal to the preset's Mbps.
WIRE_OVERHEAD = 1514 / 1448
SERVER_IP, DEVICE_IP = "10.213.0.1", "10.213.0.2"
DEV_IF, SRV_IF = "nscbdev", "nscbsrv"


def _run(*cmd: str) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise NscompileError(f"'{' '.join(cmd)}' failed: {r.stderr.strip() or r.stdout.strip()}")
    return r


def kernel_mode_problem() -> str | None:
    """Why kernel mode is unavailable here (None when it is available)."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"no '{tool}' command"
    if cpu_controller_problem():
        return cpu_controller_problem()
    if not os.access(CGROUP_CPU, os.W_OK):
        return f"{CGROUP_CPU} is not writable"
    return None


@dataclass
class Rates:
    """Link conditions: uplink/downlink goodput (Mbps, None = unshaped) and added RTT."""

    up_mbps: float | None
    down_mbps: float | None
    rtt_ms: float = 0.0


class KernelLink:
    """Two namespaces joined by a tbf-shaped veth pair (see the module docstring).

    Raises:
        NscompileError: a command failed (everything made so far is removed).
    """

    kernel = True

    def __init__(self):
        pid = os.getpid()
        self.dev_ns, self.srv_ns = f"{cleanup.PREFIX}-{pid}-dev", f"{cleanup.PREFIX}-{pid}-srv"
        self.server_host = SERVER_IP
        self._handles = []
        try:
            for ns in (self.srv_ns, self.dev_ns):
                _run("ip", "netns", "add", ns)
                self._handles.append(cleanup.register(f"netns {ns}", lambda ns=ns: _del_netns(ns)))
            _run("ip", "link", "add", DEV_IF, "netns", self.dev_ns, "type", "veth", "peer", "name", SRV_IF, "netns", self.srv_ns)
            for ns, dev, ip in ((self.dev_ns, DEV_IF, DEVICE_IP), (self.srv_ns, SRV_IF, SERVER_IP)):
                _run("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
                _run("ip", "-n", ns, "link", "set", dev, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        self.rates = Rates(None, None)

    def wrap(self, cmd: list[str], side: str) -> list[str]:
        """``cmd`` made to run inside the device's or the server's namespace."""
        return ["ip", "netns", "exec", self.dev_ns if side == "device" else self.srv_ns, *cmd]

    def set(self, rates: Rates) -> None:
        """Shape the uplink (device egress) and downlink (server egress towards the device)."""
        for ns, dev, mbps in ((self.dev_ns, DEV_IF, rates.up_mbps), (self.srv_ns, SRV_IF, rates.down_mbps)):
            if mbps is None:
                subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True, timeout=20)
                continue
            bps = mbps * 1e6 * WIRE_OVERHEAD
            burst = max(2 * 1514, int(bps / 8 * 0.001))  # 1 ms of tokens: small transfers pay their time too
            limit = min(max(int(bps / 8 * 1.0), 128 * 1024), 32 << 20)  # a second of queue: TCP is not starved by drops
            _run("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
                 "rate", f"{int(bps)}bit", "burst", str(burst), "limit", str(limit))
        self.rates = rates

    def transport_rates(self, rates: Rates) -> dict:
        """What the device's transport must add itself: only the RTT here."""
        return {"rtt_ms": rates.rtt_ms, "up_mbps": None, "down_mbps": None}

    def describe(self) -> str:
        return f"kernel: netns {self.dev_ns} <-veth, tc tbf-> {self.srv_ns}; RTT added in user space (no netem)"

    def close(self) -> None:
        """Delete both namespaces (with them the veth pair and its qdiscs)."""
        for h in reversed(self._handles):
            cleanup.run_one(h)
        self._handles.clear()


def _del_netns(ns: str) -> None:
    cleanup.kill_netns_processes(ns)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


class UserLink:
    """Fallback: loopback, with bandwidth and RTT both emulated by the device's transport."""

    kernel = False

    def __init__(self):
        self.server_host = "127.0.0.1"
        self.rates = Rates(None, None)

    def wrap(self, cmd: list[str], side: str) -> list[str]:  # noqa: ARG002
        return cmd

    def set(self, rates: Rates) -> None:
        self.rates = rates

    def transport_rates(self, rates: Rates) -> dict:
        return {"rtt_ms": rates.rtt_ms, "up_mbps": rates.up_mbps, "down_mbps": rates.down_mbps}

    def describe(self) -> str:
        return "user space: loopback, bandwidth and RTT emulated in the device's HTTP transport"

    def close(self) -> None:
        pass


class CpuQuota(CpuQuotaGroup):
    """The testbed's CPU quota group ``nscb-<pid>-NAME`` of ``cores`` CPUs, removed by the cleanup
    registry also when the testbed is interrupted; processes are added by pid.

    Raises:
        NscompileError: the group cannot be made.
    """

    def __init__(self, name: str, cores: float):
        path = CGROUP_CPU / f"{cleanup.PREFIX}-{os.getpid()}-{name}"
        try:
            super().__init__(path, cores)
        except OSError as exc:
            raise NscompileError(f"cannot make CPU cgroup {path} ({exc.strerror}); run as root or use --userspace") from None
        self._handle = cleanup.register(f"cgroup {self.path}", self.remove)

    def close(self) -> None:
        """Delete the group (its tasks go back to the root group)."""
        cleanup.run_one(self._handle)


class CpuSet:
    """A cgroup-v1 cpuset confining its processes to ``cpus``; processes are added by pid.

    Args:
        name: the group's suffix (``nscb-<pid>-NAME``).
        cpus: CPU numbers.

    Raises:
        NscompileError: the group cannot be made.
    """

    def __init__(self, name: str, cpus: list[int]):
        root = cleanup.CGROUP_CPUSET
        self.path = root / f"{cleanup.PREFIX}-{os.getpid()}-{name}"
        self.cpus = list(cpus)
        try:
            self.path.mkdir(exist_ok=True)
            self._handle = cleanup.register(f"cgroup {self.path}", lambda: remove_group(self.path))
            (self.path / "cpuset.cpus").write_text(format_cpus(self.cpus))
            # A new cpuset starts with no memory nodes, and a group without any takes no tasks.
            (self.path / "cpuset.mems").write_text((root / "cpuset.mems").read_text().strip())
        except OSError as exc:
            remove_group(self.path)
            raise NscompileError(f"cannot make cpuset {self.path} ({exc.strerror}); run as root or use --userspace") from None

    def add(self, pid: int) -> None:
        """Confine process ``pid`` (all its threads) to the set's CPUs."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        """Delete the group (its tasks go back to the root cpuset, every CPU)."""
        cleanup.run_one(self._handle)


def parse_cpus(text: str) -> list[int]:
    """CPU numbers of a cpuset list such as ``"0-3,6"``."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def format_cpus(cpus: list[int]) -> str:
    """The cpuset list form of CPU numbers (``[0, 1, 2]`` -> ``"0,1,2"``)."""
    return ",".join(str(c) for c in sorted(cpus))


def cpu_split() -> tuple[list[int], list[int]] | str:
    """(device CPUs, server CPUs) for pinning, or why this machine cannot pin.

    The device gets the lowest CPU this process may use, the server and the load
    generator all the others.
    """
    root = cleanup.CGROUP_CPUSET
    if not (root / "cpuset.cpus").exists():
        return f"no cgroup-v1 cpuset controller at {root}"
    if not os.access(root, os.W_OK):
        return f"{root} is not writable"
    try:
        allowed = sorted(set(os.sched_getaffinity(0)) & set(parse_cpus((root / "cpuset.effective_cpus").read_text())))
    except (OSError, ValueError) as exc:
        return f"cannot read the CPUs of {root} ({exc})"
    if len(allowed) < 2:
        return f"only {len(allowed)} CPU available"
    return allowed[:1], allowed[1:]


def make_link(userspace: bool = False):
    """The best link this machine allows, and why not the kernel one when it is not.

    Returns:
        (link, reason): reason is None in kernel mode, else why it fell back.
    """
    cleanup.sweep_stale()
    problem = "--userspace given" if userspace else kernel_mode_problem()
    if problem is None:
        try:
            return KernelLink(), None
        except NscompileError as exc:
            problem = str(exc)
    return UserLink(), problem
