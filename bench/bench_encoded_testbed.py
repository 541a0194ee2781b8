"""Encoded splits on the testbed (issue 13): measured latency of every emitted cut, fp32, fp16
and int8 pairs alike, against the plan's prediction for the same link.

For each model it builds with the phone-class device profile (its CPU quota applied to the
device on the testbed), the testbed's single-CPU server profile and ``--encodings
fp32,fp16,int8``, starts a testbed session, and for each network measures every cut forced,
side by side in shuffled rounds (the bench's method). It prints, per cut: encoding, bytes
sent, predicted ms (``Cut.latency_ms`` for the preset's uplink, downlink and RTT),
measured median ms and the error.

Run (root, for the kernel-mode link and quota): ``python bench/bench_encoded_testbed.py
[--models alexnet] [--networks LTE,WIFI] [--rounds 9]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from nscompile.compiler import build
from nscompile.cost_model import COST_MODELS_DIR, load_profile
from nscompile.planner import GridSpec
from nscompile.testbed.experiments import single_core_cloud_profile, _prepare_model, predicted_ms, rates_of
from nscompile.testbed.testbed import Testbed

PHONE = COST_MODELS_DIR / "epyc-ort-cpu-1thread-quota25.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="alexnet")
    ap.add_argument("--networks", default="LTE,WIFI")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--work", type=Path, default=None, help="Where models and builds go (default: a temporary directory).")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="nscompile-enc-"))
    profile = load_profile(PHONE)
    cores = profile.meta.get("cpu_quota_cores") if isinstance(profile.meta, dict) else None
    errors = []
    with Testbed(work / "logs") as tb:
        print(f"testbed: {tb.describe()}")
        cloud = single_core_cloud_profile() if tb.server_cpus and len(tb.server_cpus) == 1 else None
        for model in args.models.split(","):
            out = work / "builds" / model
            result = build(_prepare_model(model, "full", work / "models"), out, device_profile=PHONE, cloud_profile=cloud,
                           grid=GridSpec.parse(), encodings="fp32,fp16,int8", include_all_cloud=True, verify=False)
            cuts = {c["id"]: c for c in result.plan["cuts"]}
            with tb.session(out, device_threads=max(profile.threads, 1), device_cores=cores, tag=model) as s:
                for c in s.cuts:  # load every prefix and connection before anything is timed
                    s.run(c, 1)
                for network in args.networks.split(","):
                    rates = rates_of(network)
                    s.set_network(rates)
                    got = s.rounds(list(s.cuts), args.rounds, warmup=0, max_s=60.0, fresh=True)
                    print(f"\n{model} on {network} ({rates.up_mbps} Mbps up, {rates.down_mbps} down, RTT {rates.rtt_ms} ms)")
                    print(f"{'cut':16} {'encoding':8} {'KB sent':>9} {'predicted ms':>13} {'measured ms':>12} {'error':>7}")
                    for cut_id, recs in got.items():
                        doc = cuts[cut_id]
                        measured = statistics.median(r["total_ms"] for r in recs)
                        predicted = predicted_ms(doc, rates, 1.0)
                        err = measured / predicted - 1
                        errors.append((doc.get("encoding", "fp32"), abs(err)))
                        print(f"{cut_id:16} {doc.get('encoding', 'fp32'):8} {doc['predicted']['upload_bytes'] / 1024:9.1f} "
                              f"{predicted:13.1f} {measured:12.1f} {err:+7.1%}")
    for enc in ("fp32", "fp16", "int8"):
        errs = [e for k, e in errors if k == enc]
        if errs:
            print(f"{enc}: median |error| {statistics.median(errs):.1%} over {len(errs)} cuts, largest {max(errs):.1%}")


if __name__ == "__main__":
    main()
