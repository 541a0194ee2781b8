"""SLO policies on the testbed (issue 15): measured SLO attainment and device energy of
``slo(latency_ms=X)`` against the latency-only and the energy-only policy.

For every model and network preset it builds the model for the phone-class device
(``--encodings fp32,fp16,int8``; the preset's RTT, downlink and radio in the grid, so that the
plan's energy and fronts are those of that network) and reads, from the device's plan, the
predicted all-device and all-cloud latency at the preset (``Cut.latency_ms``) and the
latency-energy front there (``Plan.pareto_front``). Two SLOs:

- ``mid``: halfway between the all-device and the all-cloud latency (the issue's setting);
- ``tight``: halfway between the fastest and the least-energy point of the front, where an
  SLO policy cannot simply take either end (left out where the front has one point).

On the testbed (:mod:`nscompile.testbed`: the device in a network namespace behind a
``tc``-shaped link under its CPU quota, a real ``nscompile serve``) nscompile's own requests
under ``latency``, ``energy`` and each ``slo(...)`` run side by side, one of each per round in a
shuffled order, the policy switched between calls on one runner. Per policy: the share of
requests within each SLO (measured end-to-end latency), the median latency, and the mean
device energy per request. The energy is the testbed's model of it
(:func:`nscompile.testbed.energy.request_energy_mj`): the measured phase times of each request
times the device profile's power figures (compute, idle, Huang et al.'s radio model for the
preset); the profile's power is assumed, not metered.

Run (root, for the kernel-mode link and quota): ``python bench/bench_slo.py [--models
alexnet,mobilenetv2] [--networks LTE,WIFI] [--rounds 40] [-o DIR]``; writes ``slo.csv`` (one row
per SLO and policy), ``requests.csv`` (every request's record) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import Counter
from pathlib import Path

from nscompile.compiler import build
from nscompile.cost_model import COST_MODELS_DIR, load_profile
from nscompile.planner import NETWORK_PRESETS, GridSpec
from nscompile.runtime.plan import load_plan
from nscompile.runtime.policies import slo
from nscompile.testbed.energy import RADIO_OF_PRESET, request_energy_mj
from nscompile.testbed.experiments import (BUILD_BANDWIDTH, BUILD_LOAD, _prepare_model, cloud_profile_default, rates_of,
                                           write_csv)
from nscompile.testbed.link import Rates
from nscompile.testbed.testbed import Testbed

PHONE = COST_MODELS_DIR / "epyc-ort-cpu-1thread-quota25.json"


def build_for(model: str, network: str, out: Path, cloud: Path) -> Path:
    """The model built for the phone-class device on ``network`` (reused when already there)."""
    preset = NETWORK_PRESETS[network]
    build_dir = out / "builds" / f"{model}-{network}"
    if (build_dir / "plan.json").is_file():
        grid = json.loads((build_dir / "plan.json").read_text())["grid"]
        if grid["radio"] == preset["radio"] and grid["rtt_ms"] == preset["rtt_ms"]:
            return build_dir
    grid = GridSpec.parse(BUILD_BANDWIDTH, BUILD_LOAD, rtt_ms=preset["rtt_ms"], downlink_mbps=preset["downlink_mbps"],
                          radio=preset["radio"])
    build(_prepare_model(model, "full", out / "models"), build_dir, device_profile=PHONE, cloud_profile=cloud, grid=grid,
          encodings="fp32,fp16,int8", include_all_cloud=True, verify=False, report=False)
    return build_dir


def slos_for(build_dir: Path, network: str) -> tuple[dict[str, float], dict]:
    """The SLOs of a build on ``network`` (see the module docstring) and what they were set from."""
    preset = NETWORK_PRESETS[network]
    plan = load_plan(build_dir / "device")
    conditions = (preset["uplink_mbps"], 1.0, preset["rtt_ms"], preset["downlink_mbps"], 1.0)
    all_device = plan.cuts[plan.fallback].latency_ms(*conditions)
    all_cloud = next(c for c in plan.cuts.values() if c.cloud_model and c.prefix is None).latency_ms(*conditions)
    front = plan.pareto_front(preset["uplink_mbps"], 1.0, preset["rtt_ms"], preset["downlink_mbps"])
    slos = {"mid": round(0.5 * (all_device + all_cloud), 1)}
    if len(front) > 1:
        slos["tight"] = round(0.5 * (front[0].latency_ms + front[-1].latency_ms), 1)
    basis = {"all_device_ms": all_device, "all_cloud_ms": all_cloud,
             "front": [(p.cut, round(p.latency_ms, 1), round(p.energy_mj, 1)) for p in front]}
    return slos, basis


def measure(model: str, network: str, build_dir: Path, tb: Testbed, rounds: int, max_s: float,
            requests: list[dict]) -> list[dict]:
    """One model on one network: every policy side by side; one row per (SLO, policy).

    Every request's record (its policy, cut, estimates, prediction and phase times) is
    appended to ``requests``.
    """
    profile = load_profile(PHONE)
    cores = profile.meta.get("cpu_quota_cores") if isinstance(profile.meta, dict) else None
    slos, basis = slos_for(build_dir, network)
    policies = ["latency", "energy", *(str(slo(x)) for x in slos.values())]
    rates = rates_of(network)
    with tb.session(build_dir, device_threads=max(profile.threads, 1), device_cores=cores,
                    server_threads=tb.server_threads, tag=f"slo-{model}-{network}") as s:
        s.set_network(Rates(None, None, 0.0))
        for c in s.cuts:  # load every prefix and connection before anything is timed
            s.run(c, 1)
        s.set_network(rates)
        records = s.policy_rounds(policies, rounds, warmup=2, max_s=max_s, fresh=True)
    requests.extend({"model": model, "network": network, **r} for recs in records.values() for r in recs)
    radio = RADIO_OF_PRESET[network]
    rows = []
    for slo_name, target in slos.items():
        for policy in ("latency", "energy", str(slo(target))):
            recs = records[policy]
            ms = [r["total_ms"] for r in recs]
            mj = [request_energy_mj(r, profile, rates.up_mbps, rates.down_mbps, radio) for r in recs]
            rows.append({
                "model": model, "network": network, "slo": slo_name, "slo_ms": target, "policy": policy,
                "cuts": ";".join(f"{c}:{n}" for c, n in Counter(r["cut"] for r in recs).most_common()),
                "attainment": sum(m <= target for m in ms) / len(ms), "median_ms": statistics.median(ms),
                "p90_ms": statistics.quantiles(ms, n=10)[-1] if len(ms) >= 2 else ms[0],
                "mean_mj": statistics.fmean(mj),
                "predicted_ms": statistics.median(r["predicted_latency_ms"] or 0.0 for r in recs),
                "predicted_mj": statistics.median(r["predicted_energy_mj"] or 0.0 for r in recs),
                "all_device_ms": basis["all_device_ms"], "all_cloud_ms": basis["all_cloud_ms"],
                "front": " ".join(f"{c}({l:g}ms,{e:g}mJ)" for c, l, e in basis["front"]), "n": len(recs),
            })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="alexnet,mobilenetv2")
    ap.add_argument("--networks", default="LTE,WIFI")
    ap.add_argument("--rounds", type=int, default=40, help="rounds of one request per policy (at most)")
    ap.add_argument("--max-s", type=float, default=60.0, help="no new round after this many seconds per case")
    ap.add_argument("-o", "--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="nscompile-slo-"))
    out.mkdir(parents=True, exist_ok=True)
    rows, requests = [], []
    with Testbed(out / "logs") as tb:
        print(f"testbed: {tb.describe()}")
        cloud = cloud_profile_default(tb)
        for model in args.models.split(","):
            for network in args.networks.split(","):
                build_dir = build_for(model, network, out, cloud)
                rows += measure(model, network, build_dir, tb, args.rounds, args.max_s, requests)
                write_csv(out / "slo.csv", rows)  # after each case: partial results survive
                write_csv(out / "requests.csv", requests)
    print("| model | network | SLO | policy | cuts used | within SLO | median ms | p90 ms | device mJ (mean) | predicted ms / mJ |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['network']} | {r['slo']} {r['slo_ms']:g} ms | {r['policy']} | {r['cuts']} | "
              f"{r['attainment']:.0%} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['mean_mj']:.1f} | "
              f"{r['predicted_ms']:.1f} / {r['predicted_mj']:.1f} |")
    seen = set()
    for r in rows:
        if (r["model"], r["network"]) not in seen:
            seen.add((r["model"], r["network"]))
            print(f"{r['model']} {r['network']}: predicted all-device {r['all_device_ms']:.1f} ms, all-cloud "
                  f"{r['all_cloud_ms']:.1f} ms; front {r['front']}")
    print(f"wrote {out / 'slo.csv'}")


if __name__ == "__main__":
    main()
