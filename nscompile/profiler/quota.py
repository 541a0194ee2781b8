"""Run the profiler under a cgroup-v1 CPU bandwidth quota (a slower, phone-class CPU).

The group itself is :class:`nscompile.cgroups.CpuQuotaGroup`, the testbed's too; this
module moves the profiling process into it and back out. Needs root and a cgroup-v1
``cpu`` hierarchy (``/sys/fs/cgroup/cpu``); elsewhere it raises a :class:`NscompileError`
saying so.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from nscompile.cgroups import CGROUP_CPU, CpuQuotaGroup, cpu_controller_problem
from nscompile.errors import NscompileError

__all__ = ["cpu_quota", "quota_period_s", "CGROUP_CPU"]


def _current_cgroup() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return CGROUP_CPU / path.lstrip("/")
    return CGROUP_CPU


def quota_period_s() -> float | None:
    """The CFS period of this process's CPU quota in seconds (None: no quota, or none readable).

    A timed batch must span many periods for the throttling to average out inside it:
    :class:`~nscompile.cgroups.CpuQuotaGroup` lengthens the period for shares under 25%
    (12.5% of a core: 8 ms), so fixed batch lengths would span fewer of them.
    """
    group = _current_cgroup()
    try:
        if int((group / "cpu.cfs_quota_us").read_text()) < 0:
            return None
        return int((group / "cpu.cfs_period_us").read_text()) / 1e6
    except (OSError, ValueError):
        return None


def _exit_on_signal(signum, frame):  # noqa: ARG001
    raise SystemExit(128 + signum)


@contextmanager
def cpu_quota(fraction: float):
    """Confine this process to ``fraction`` of one CPU core while the block runs.

    Args:
        fraction: Share of one core, in (0, 64].

    Raises:
        NscompileError: bad fraction, or no writable cgroup-v1 cpu controller.
    """
    if not (0 < fraction <= 64):
        raise NscompileError(f"--cpu-quota must be in (0, 64] cores, got {fraction}")
    if cpu_controller_problem():
        raise NscompileError(f"{cpu_controller_problem()}; profile on the real device instead, or drop --cpu-quota")
    original = _current_cgroup()
    path = CGROUP_CPU / f"nscompile-profile-{os.getpid()}"
    group = None
    try:
        group = CpuQuotaGroup(path, fraction)
        group.add(os.getpid())
    except OSError as exc:
        if group is not None:
            group.remove()
        raise NscompileError(
            f"cannot set a CPU quota in {path} ({exc.strerror}); run as root or drop --cpu-quota"
        ) from None
    # A `kill` (SIGTERM, SIGHUP) must leave through the `finally` below, not past it: the
    # cgroup would outlive the process.
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                handlers[sig] = signal.signal(sig, _exit_on_signal)
    try:
        yield group.path
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        try:
            (original / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            (CGROUP_CPU / "cgroup.procs").write_text(str(os.getpid()))
        group.remove()
