"""The device-load variation experiment on its own (issue 14): idle, the device at 40% of its
CPU, idle again; nscompile learning its slowdown Kd against nscompile with Kd pinned at 1.

It builds one zoo model for the phone-class device (its CPU quota applied on the testbed)
with ``--encodings fp32,fp16,int8`` and the default ``--device-load`` levels, runs the
experiment of ``nscompile bench`` (:func:`nscompile.testbed.experiments.run_device_load`)
on one network, writes ``device_load.csv`` and ``device_load.png`` and prints the summary:
the cut idle and loaded, how many loaded requests it took to switch, the Kd estimate, and
the median latency while loaded, learnt against pinned.

Run (root, for the kernel-mode link and quota): ``python bench/bench_device_load.py
[--model alexnet] [--network LTE] [--phase-s 12] [-o DIR]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from nscompile.compiler import build
from nscompile.cost_model import COST_MODELS_DIR, load_profile
from nscompile.testbed.experiments import (BenchConfig, _prepare_model, _special_cuts, single_core_cloud_profile,
                                           device_load_summary, run_device_load, write_csv)
from nscompile.testbed.report import plot_device_load
from nscompile.testbed.testbed import Testbed

PHONE = COST_MODELS_DIR / "epyc-ort-cpu-1thread-quota25.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="alexnet")
    ap.add_argument("--network", default="LTE")
    ap.add_argument("--phase-s", type=float, default=12.0)
    ap.add_argument("-o", "--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="nscompile-devload-"))
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(PHONE)
    cores = profile.meta.get("cpu_quota_cores") if isinstance(profile.meta, dict) else None
    cfg = BenchConfig(models=[args.model], device_load_network=args.network, device_load_phase_s=args.phase_s)
    with Testbed(out / "logs") as tb:
        print(f"testbed: {tb.describe()}")
        cloud = single_core_cloud_profile() if tb.server_cpus and len(tb.server_cpus) == 1 else None
        build_dir = out / "build"
        result = build(_prepare_model(args.model, "full", out / "models"), build_dir, device_profile=PHONE,
                       cloud_profile=cloud, encodings="fp32,fp16,int8", include_all_cloud=True, verify=False)
        with tb.session(build_dir, device_threads=max(profile.threads, 1), device_cores=cores, tag=args.model) as s:
            for c in s.cuts:  # load every prefix and connection before anything is timed
                s.run(c, 1)
            rows = run_device_load(s, cfg, _special_cuts(result.plan))
    write_csv(out / "device_load.csv", rows)
    plot_device_load(rows, out / "device_load.png")
    print(json.dumps(device_load_summary(rows), indent=1))
    print(f"wrote {out / 'device_load.csv'} and {out / 'device_load.png'}")


if __name__ == "__main__":
    main()
