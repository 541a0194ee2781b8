"""Undo everything the testbed set up: processes, namespaces, cgroups, also on interrupt.

Every resource the testbed makes registers an undo action here, newest first. The
actions run when the testbed closes, at interpreter exit (``atexit``) and on SIGTERM /
SIGHUP (turned into ``SystemExit`` so ``finally`` blocks run). A run killed with
SIGKILL cannot clean up after itself; :func:`sweep_stale` removes what such a run left
behind (the names carry the owner's pid) the next time a testbed starts.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from nscompile.cgroups import CGROUP_CPU, remove_group

#: Prefix of every namespace, interface and cgroup the testbed creates.
PREFIX = "nscb"
CGROUP_CPUSET = Path("/sys/fs/cgroup/cpuset")

_lock = threading.Lock()
_actions: list[tuple[int, str, Callable[[], None]]] = []
_next_id = 0
_installed = False


def register(description: str, action: Callable[[], None]) -> int:
    """Remember an undo action; returns a handle for :func:`run_one`."""
    global _next_id
    _install()
    with _lock:
        _next_id += 1
        _actions.append((_next_id, description, action))
        return _next_id


def run_one(handle: int) -> None:
    """Run (and forget) one registered action now; errors are swallowed (best effort)."""
    with _lock:
        found = [a for a in _actions if a[0] == handle]
        _actions[:] = [a for a in _actions if a[0] != handle]
    for _, _, action in found:
        _safe(action)


def run_all() -> list[str]:
    """Run every pending action, newest first; returns their descriptions."""
    with _lock:
        pending = list(reversed(_actions))
        _actions.clear()
    for _, _, action in pending:
        _safe(action)
    return [d for _, d, _ in pending]


def pending() -> list[str]:
    """Descriptions of the actions not yet run (for tests)."""
    with _lock:
        return [d for _, d, _ in _actions]


def _safe(action: Callable[[], None]) -> None:
    try:
        action()
    except Exception:  # cleanup is best effort: one failure must not stop the others
        pass


def _on_signal(signum, frame):  # noqa: ARG001
    # SystemExit unwinds through every `with`/`finally` of the testbed, then atexit runs the rest.
    raise SystemExit(128 + signum)


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(run_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(name: str) -> int | None:
    parts = name.split("-")
    if len(parts) >= 2 and parts[0] == PREFIX and parts[1].isdigit():
        return int(parts[1])
    return None


def sweep_stale() -> list[str]:
    """Remove namespaces and cgroups left by testbed runs whose process is gone.

    Returns:
        What was removed.
    """
    removed = []
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = _owner(name)
        if pid is not None and pid != os.getpid() and not _alive(pid):
            kill_netns_processes(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
            removed.append(f"netns {name}")
    for hierarchy in (CGROUP_CPU, CGROUP_CPUSET):
        if not hierarchy.is_dir():
            continue
        for group in hierarchy.glob(f"{PREFIX}-*"):
            pid = _owner(group.name)
            if pid is not None and pid != os.getpid() and not _alive(pid):
                remove_group(group)
                removed.append(f"cgroup {group}")
    return removed


def kill_netns_processes(name: str) -> None:
    """SIGKILL the processes still running inside network namespace ``name`` (ours only)."""
    try:
        out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return
    for tok in out.split():
        if tok.isdigit():
            try:
                os.kill(int(tok), signal.SIGKILL)
            except OSError:
                pass
