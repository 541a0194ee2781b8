"""Run the profiler under a cgroup-v1 CPU bandwidth quota (a slower, phone-class CPU).

A quota of e.g. 25% of one core makes this machine's CPU behave, on average, like a
core four times slower: what a mid-range phone core is next to a server core. The CFS
period is kept short (4 ms) so that throttling averages out inside one timed batch
rather than freezing a whole measurement. Needs root and a cgroup-v1 ``cpu`` hierarchy
(``/sys/fs/cgroup/cpu``); elsewhere it raises a :class:`NscompileError` saying so.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from nscompile.errors import NscompileError

__all__ = ["cpu_quota", "CGROUP_CPU"]

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
_PERIOD_US = 4000


def _current_cgroup() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return CGROUP_CPU / path.lstrip("/")
    return CGROUP_CPU


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
    if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
        raise NscompileError(
            f"no cgroup-v1 cpu controller at {CGROUP_CPU}; profile on the real device instead, "
            "or drop --cpu-quota"
        )
    original = _current_cgroup()
    group = CGROUP_CPU / f"nscompile-profile-{os.getpid()}"
    try:
        group.mkdir(exist_ok=True)
        (group / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(max(int(_PERIOD_US * fraction), 1000)))
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as exc:
        try:
            group.rmdir()
        except OSError:
            pass
        raise NscompileError(
            f"cannot set a CPU quota in {group} ({exc.strerror}); run as root or drop --cpu-quota"
        ) from None
    # A `kill` (SIGTERM, SIGHUP) must leave through the `finally` below, not past it: the
    # cgroup would outlive the process.
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                handlers[sig] = signal.signal(sig, _exit_on_signal)
    try:
        yield group
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        try:
            (original / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            (CGROUP_CPU / "cgroup.procs").write_text(str(os.getpid()))
        try:
            group.rmdir()
        except OSError:
            pass
