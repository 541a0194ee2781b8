"""Many devices, one server (issue 16): N device processes against one `nscompile serve`.

Runs :func:`nscompile.testbed.fleet.run_fleet`: for each fleet size N, N devices at once,
each under its own CPU quota on the device CPU and on its own emulated link, in three
modes (load-aware nscompile, nscompile with the load fixed at 1, all-cloud). Prints and
writes (``fleet.md`` beside the CSVs and PNGs) the server's throughput, the fleet's, the
p50/p95 latency over all devices and each device's, the share offloaded and the switch
rate; ``fleet_herding.png`` shows whether load-aware devices switch together.

The default is small (N = 1, 4, 8; 10 s per mode: about 3 minutes on a 2-core machine).
The issue's sweep: ``--devices 1,4,8,16 --window-s 30``. The device class by default is
this CPU's shipped profile at 12.5% of a core (8x slower than the server core, e.g.
``cost_models/epyc-ort-cpu-1thread-quota12.json``) where there is one, else the 25% one.

Run (root, for the kernel-mode link and quotas): ``python bench/bench_fleet.py [--model
resnet18] [--network 5G] [--devices 1,4,8] [--window-s 10] [--device-profile FILE] [-o DIR]``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from nscompile.testbed.fleet import MODES, FleetConfig, run_fleet


def _fmt(x, digits=1) -> str:
    return "–" if isinstance(x, float) and not math.isfinite(x) else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def table(rows: list[dict]) -> list[str]:
    """The (N, mode) rows as a markdown table, with throughput relative to all-cloud at the same N."""
    fleet_cloud = {r["devices"]: r["fleet_qps"] for r in rows if r["mode"] == "all-cloud"}
    out = ["| devices | mode | server q/s | fleet q/s | fleet q/s vs all-cloud | p50 ms | p95 ms | worst device p95 ms | "
           "offloaded | switches/device/s | server K mean (sd) | offloaded share sd |", "|---" * 12 + "|"]
    for r in rows:
        ratio = r["fleet_qps"] / fleet_cloud[r["devices"]] if fleet_cloud.get(r["devices"]) else math.nan
        out.append(f"| {r['devices']} | {r['mode']} | {_fmt(r['server_qps'], 2)} | {_fmt(r['fleet_qps'], 2)} | "
                   f"{_fmt(ratio, 2)}x | {_fmt(r['p50_ms'])} | {_fmt(r['p95_ms'])} | {_fmt(r['device_p95_ms_max'])} | "
                   f"{r['offloaded']:.0%} | {_fmt(r['switches_per_device_s'], 2)} | {_fmt(r['server_load_mean'], 2)} "
                   f"({_fmt(r['server_load_sd'], 2)}) | {_fmt(r['offloaded_share_sd'], 2)} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", default="full", choices=("full", "small"))
    ap.add_argument("--network", default="5G")
    ap.add_argument("--devices", default="1,4,8", help="fleet sizes, comma separated")
    ap.add_argument("--window-s", type=float, default=10.0, help="seconds each mode runs per fleet size")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--device-profile", type=Path, default=None)
    ap.add_argument("--cloud-profile", type=Path, default=None)
    ap.add_argument("--userspace", action="store_true")
    ap.add_argument("-o", "--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="nscompile-fleet-"))
    cfg = FleetConfig(model=args.model, size=args.size, network=args.network.upper(),
                      devices=[int(n) for n in args.devices.split(",")], window_s=args.window_s,
                      device_profile=args.device_profile, cloud_profile=args.cloud_profile,
                      modes=tuple(m.strip() for m in args.modes.split(",")), userspace=args.userspace)
    result = run_fleet(cfg, out, stage=print)
    lines = [f"# Fleet: {cfg.model} ({cfg.size}) on {cfg.network}, device profile {cfg.profile_path().name}", "",
             f"Testbed: {result.testbed}. {result.seconds / 60:.1f} min, {cfg.window_s:g} s per mode.", "",
             *table(result.rows), "", "Per device (p50 / p95 ms):", ""]
    for r in result.device_rows:
        lines.append(f"- N={r['devices']} {r['mode']} device {r['device']}: {_fmt(r['p50_ms'])} / {_fmt(r['p95_ms'])} ms, "
                     f"{r['requests']} requests, {r['offloaded']:.0%} offloaded, {r['switches']} switches ({r['cuts']})")
    lines += ["", "![fleet](fleet.png)", "", "![herding](fleet_herding.png)", ""]
    (out / "fleet.md").write_text("\n".join(lines))
    print("\n".join(lines[:len(result.rows) + 6]))
    print(f"wrote {out / 'fleet.md'}, fleet.csv, fleet_devices.csv, fleet_trace.csv, fleet.png, fleet_herding.png")


if __name__ == "__main__":
    main()
