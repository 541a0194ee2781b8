"""Many devices, one server: the paper's datacenter experiment on the testbed.

Neurosurgeon claimed 1.5x datacenter throughput on average (up to 6.7x): devices that
read the server's load keep more work to themselves as it rises. :func:`run_fleet` runs
N device processes at once (each under its own CPU quota on the device CPUs, each on its
own emulated link) against one ``nscompile serve``, for N in ``devices``, in three modes:

- ``nscompile``: the runtime as shipped, reading the server's load from every answer;
- ``load fixed at 1``: the same plan, the load pinned at 1 (a server assumed idle);
- ``all-cloud``: every request runs on the server.

Per (N, mode) it reports the server's throughput (queries it answered per second), the
fleet's (inferences completed per second, on the device or not), each device's p50/p95
latency, the share of requests offloaded, and how the devices switched: when all of them
read the same load and switch together, the load swings and they switch back (herding);
``fleet_herding.png`` shows the offloaded share and the server's load over time.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nscompile.cost_model import load_profile
from nscompile.errors import NscompileError
from nscompile.planner import NETWORK_PRESETS, GridSpec
from nscompile.testbed.experiments import (BUILD_BANDWIDTH, BUILD_ENCODINGS, BUILD_LOAD, PHONE_PROFILE, cloud_profile_default,
                                           quota_profile, rates_of, write_csv)
from nscompile.testbed.testbed import Testbed

MODES = ("nscompile", "load fixed at 1", "all-cloud")
#: Time bins of the herding figures.
BIN_S = 0.5


@dataclass
class FleetConfig:
    """What to run: one model on one network, fleets of ``devices`` devices, ``window_s`` per mode."""

    model: str = "resnet18"
    size: str = "full"
    network: str = "5G"
    devices: list[int] = field(default_factory=lambda: [1, 4, 8])
    window_s: float = 10.0
    device_profile: Path | None = None
    cloud_profile: Path | None = None
    modes: tuple[str, ...] = MODES
    userspace: bool = False

    def profile_path(self) -> Path:
        """The device profile: the one given, else this CPU's paper-like class (12.5% of a core) if
        shipped, else its phone class (25%), else the shipped phone class of another CPU."""
        if self.device_profile is not None:
            return Path(self.device_profile)
        return quota_profile(0.125) or quota_profile(0.25) or PHONE_PROFILE


def percentile(xs: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``xs``, linear between order statistics; nan when empty."""
    xs = sorted(xs)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def offloaded(rec: dict, all_device: str) -> bool:
    """Whether a request was answered by the server (a split or all-cloud that did not fall back)."""
    return rec["cut"] != all_device and not rec.get("fell_back")


def summarise(n: int, mode: str, records: list[list[dict]], reports: list[dict], window_s: float, all_device: str) -> tuple[dict, list[dict]]:
    """One (N, mode) row and its per-device rows from the devices' records and the server's load reports.

    Only requests that finished inside the window count (a request still running at its
    end is cut off); a device's switches are changes of its cut between requests.
    """
    rows, lat_all, served, done, switches = [], [], 0, 0, 0
    for i, recs in enumerate(records):
        inside = [r for r in recs if r["t"] <= window_s]
        ms = [r["total_ms"] for r in inside]
        lat_all += ms
        off = sum(offloaded(r, all_device) for r in inside)
        served += off
        done += len(inside)
        sw = sum(a["cut"] != b["cut"] for a, b in zip(inside, inside[1:]))
        switches += sw
        rows.append({"devices": n, "mode": mode, "device": i, "requests": len(inside), "p50_ms": percentile(ms, 50),
                     "p95_ms": percentile(ms, 95), "offloaded": off / len(inside) if inside else math.nan,
                     "switches": sw, "cuts": ";".join(f"{c}:{k}" for c, k in Counter(r["cut"] for r in inside).items())})
    loads = [r["load"] for r in reports if isinstance(r.get("load"), (int, float))]
    share = _binned_share(records, window_s, all_device)
    row = {
        "devices": n, "mode": mode, "server_qps": served / window_s, "fleet_qps": done / window_s,
        "p50_ms": percentile(lat_all, 50), "p95_ms": percentile(lat_all, 95),
        "device_p50_ms_median": statistics.median(r["p50_ms"] for r in rows) if rows else math.nan,
        "device_p95_ms_max": max((r["p95_ms"] for r in rows), default=math.nan),
        "offloaded": served / done if done else math.nan,
        "switches_per_device_s": switches / (n * window_s),
        "server_load_mean": statistics.mean(loads) if loads else math.nan,
        "server_load_sd": statistics.pstdev(loads) if len(loads) > 1 else math.nan,
        # Herding shows as the fleet's offloaded share swinging between bins of BIN_S.
        "offloaded_share_sd": statistics.pstdev(share) if len(share) > 1 else math.nan,
    }
    return row, rows


def _binned_share(records: list[list[dict]], window_s: float, all_device: str) -> list[float]:
    """The share of requests offloaded per time bin of :data:`BIN_S`, over all devices (bins with requests)."""
    bins: dict[int, list[bool]] = {}
    for recs in records:
        for r in recs:
            if r["t"] <= window_s:
                bins.setdefault(int(r["t"] // BIN_S), []).append(offloaded(r, all_device))
    return [sum(v) / len(v) for _, v in sorted(bins.items())]


@dataclass
class FleetResult:
    """What :func:`run_fleet` produced."""

    out_dir: Path
    rows: list[dict]
    device_rows: list[dict]
    trace_rows: list[dict]
    load_rows: list[dict]
    testbed: str
    seconds: float


def run_fleet(cfg: FleetConfig, out_dir: Path, stage: Callable[[str], None] = lambda text: None) -> FleetResult:
    """Run the fleet experiment of ``cfg``; write fleet.csv, fleet_devices.csv, fleet_trace.csv and PNGs under ``out_dir``.

    Raises:
        NscompileError: unknown model or network, a mode the plan cannot run, a testbed failure.
    """
    from nscompile import zoo
    from nscompile.compiler import build

    t_start = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model not in {m.name for m in zoo.list_models()}:
        raise NscompileError(f"unknown zoo model '{cfg.model}'; see `nscompile zoo --list`")
    if cfg.network not in NETWORK_PRESETS:
        raise NscompileError(f"unknown network '{cfg.network}'; use one of {', '.join(NETWORK_PRESETS)}")
    bad = [m for m in cfg.modes if m not in MODES]
    if bad:
        raise NscompileError(f"unknown fleet mode '{bad[0]}'; use some of {', '.join(MODES)}")
    device_path = cfg.profile_path()
    profile = load_profile(device_path)
    cores = profile.meta.get("cpu_quota_cores") if isinstance(profile.meta, dict) else None
    rows, device_rows, trace_rows, load_rows = [], [], [], []
    with Testbed(out_dir / "logs", userspace=cfg.userspace) as tb:
        cloud = Path(cfg.cloud_profile or cloud_profile_default(tb))
        stem = cfg.model if cfg.size == "full" else f"{cfg.model}_small"
        model_path = out_dir / "models" / f"{stem}.onnx"
        if not model_path.is_file():
            zoo.write_models([cfg.model], out_dir / "models", size=cfg.size)
        build_dir = out_dir / "builds" / f"{stem}-{device_path.stem}"
        stage(f"build {stem} for {profile.name}")
        plan = build(model_path, build_dir, device_profile=device_path, cloud_profile=cloud,
                     grid=GridSpec.parse(BUILD_BANDWIDTH, BUILD_LOAD), report=False, include_all_cloud=True,
                     encodings=BUILD_ENCODINGS).plan
        all_device = plan["fallback"]
        all_cloud = next((c["id"] for c in plan["cuts"] if c.get("cloud_model") and not c.get("prefix")), None)
        server_threads = tb.server_threads or load_profile(cloud).threads or None
        for n in cfg.devices:
            stage(f"{n} device(s), each at {cores or 'no'} core quota, on {cfg.network}")
            with tb.fleet(build_dir, n, device_threads=max(profile.threads, 1), device_cores=cores,
                          server_threads=server_threads, tag=f"fleet{n}") as fleet:
                fleet.set_network(rates_of(cfg.network))
                fleet.loop(None, 1.0)  # every device's sessions and connection warm before anything is timed
                for mode in cfg.modes:
                    cut = all_cloud if mode == "all-cloud" else None
                    records, reports = fleet.loop(cut, cfg.window_s, 1.0 if mode == "load fixed at 1" else None)
                    row, per_device = summarise(n, mode, records, reports, cfg.window_s, all_device)
                    stage(f"  {mode:<16} server {row['server_qps']:.2f} q/s, fleet {row['fleet_qps']:.2f} q/s, "
                          f"p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, offloaded {row['offloaded']:.0%}")
                    rows.append(row)
                    device_rows += per_device
                    for i, recs in enumerate(records):
                        trace_rows += [{"devices": n, "mode": mode, "device": i, "t_s": round(r["t"], 4),
                                        "latency_ms": r["total_ms"], "cut": r["cut"], "load": r.get("load"),
                                        "offloaded": offloaded(r, all_device)} for r in recs]
                    load_rows += [{"devices": n, "mode": mode, "t_s": round(r["t"], 4), "load": r.get("load"),
                                   "in_flight": r.get("in_flight")} for r in reports]
        testbed = tb.describe()
    write_csv(out_dir / "fleet.csv", rows)
    write_csv(out_dir / "fleet_devices.csv", device_rows)
    write_csv(out_dir / "fleet_trace.csv", trace_rows)
    write_csv(out_dir / "fleet_load.csv", load_rows)
    result = FleetResult(out_dir, rows, device_rows, trace_rows, load_rows, testbed, time.monotonic() - t_start)
    plot_fleet(result, out_dir / "fleet.png")
    plot_herding(result, out_dir / "fleet_herding.png", max(cfg.devices))
    return result


def plot_fleet(result: FleetResult, path: Path) -> None:
    """Server throughput, fleet throughput and p95 latency against the number of devices, per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"nscompile": "#1b9e77", "load fixed at 1": "#7570b3", "all-cloud": "#666666"}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for mode in dict.fromkeys(r["mode"] for r in result.rows):
        pts = [r for r in result.rows if r["mode"] == mode]
        ns = [r["devices"] for r in pts]
        for ax, key in zip(axes, ("server_qps", "fleet_qps", "p95_ms")):
            ax.plot(ns, [r[key] for r in pts], "o-", label=mode, color=colors.get(mode))
    for ax, label in zip(axes, ("server queries/s answered", "fleet inferences/s", "p95 latency (ms)")):
        ax.set_xlabel("devices")
        ax.set_ylabel(label)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_herding(result: FleetResult, path: Path, n: int) -> None:
    """For the fleet of ``n`` devices, load-aware: the share of requests offloaded and the server's load over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for mode, color in (("nscompile", "#1b9e77"), ("load fixed at 1", "#7570b3")):
        recs = [r for r in result.trace_rows if r["devices"] == n and r["mode"] == mode]
        bins: dict[int, list[bool]] = {}
        for r in recs:
            bins.setdefault(int(r["t_s"] // BIN_S), []).append(r["offloaded"])
        ts = sorted(bins)
        axes[0].plot([t * BIN_S for t in ts], [sum(bins[t]) / len(bins[t]) for t in ts], ".-", color=color, label=mode)
        loads = [r for r in result.load_rows if r["devices"] == n and r["mode"] == mode and r["load"] is not None]
        axes[1].plot([r["t_s"] for r in loads], [r["load"] for r in loads], ".-", ms=3, color=color, label=mode)
    axes[0].set_ylabel(f"share offloaded ({BIN_S} s bins)")
    axes[0].set_ylim(-0.05, 1.05)
    axes[1].set_ylabel("server load K")
    axes[1].set_xlabel("time (s)")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"{n} devices: do they switch together?", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
