"""cgroup-v1 CPU bandwidth groups: one CFS quota helper for the profiler and the testbed.

A quota of e.g. 25% of one core makes this machine's CPU behave, on average, like a core
four times slower (a phone-class core next to a server core). The CFS period is short
(4 ms by default) so that throttling averages out inside one layer or one timed batch
rather than freezing a whole request. Needs root and a cgroup-v1 ``cpu`` hierarchy.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
#: CFS period of the groups made here, in microseconds.
CFS_PERIOD_US = 4000
#: The kernel refuses a quota under 1 ms.
_MIN_QUOTA_US = 1000


def cpu_controller_problem() -> str | None:
    """Why no CPU quota can be set here (None when one can)."""
    if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
        return f"no cgroup-v1 cpu controller at {CGROUP_CPU}"
    return None


class CpuQuotaGroup:
    """A cgroup-v1 ``cpu`` group whose tasks share ``cores`` CPUs' worth of time.

    Args:
        path: the group's directory (created).
        cores: CPUs' worth of time per period, e.g. 0.25.
        period_us: the CFS period.

    Raises:
        OSError: the group cannot be made or configured (callers say what to do instead);
            a half-made group is removed first.
    """

    def __init__(self, path: Path, cores: float, period_us: int = CFS_PERIOD_US):
        self.path, self.cores, self.period_us = Path(path), cores, period_us
        try:
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(str(period_us))
            self.set_cores(cores)
        except OSError:
            remove_group(self.path)
            raise

    def set_cores(self, cores: float | None) -> None:
        """Change the quota to ``cores`` CPUs' worth of time per period (None: no limit).

        The kernel refuses a quota under 1 ms, so a share below 1 ms per period lengthens
        the period (12.5% of a core: 8 ms) instead of silently giving more time.
        """
        if cores is None:
            (self.path / "cpu.cfs_quota_us").write_text("-1")
        else:
            period = max(self.period_us, math.ceil(_MIN_QUOTA_US / cores))
            (self.path / "cpu.cfs_quota_us").write_text("-1")  # a period change must not meet the old quota
            (self.path / "cpu.cfs_period_us").write_text(str(period))
            (self.path / "cpu.cfs_quota_us").write_text(str(max(int(period * cores), _MIN_QUOTA_US)))
        self.cores = cores

    def add(self, pid: int) -> None:
        """Put process ``pid`` (all its threads) under the quota."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_s(self) -> float:
        """Seconds the group's tasks were held back by the quota so far."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            if line.startswith("throttled_time"):
                return int(line.split()[1]) / 1e9
        return 0.0

    def remove(self) -> None:
        """Delete the group; tasks still in it go back to the parent group."""
        remove_group(self.path)


def remove_group(group: Path) -> None:
    """Move any task left in ``group`` (any cgroup-v1 hierarchy) to its parent, then delete it."""
    for _ in range(20):  # bounded: tasks of a killed process vanish within milliseconds
        try:
            tasks = (group / "cgroup.procs").read_text().split()
        except OSError:
            tasks = []
        for t in tasks:
            try:
                (group.parent / "cgroup.procs").write_text(t)
            except OSError:
                pass
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
