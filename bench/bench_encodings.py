"""What fp16/int8 cut tensors change (issue 13): real splits, their predicted gain, accuracy, build time.

For each zoo model (full size) it builds twice with the phone-class device profile and
the default server, ``--encodings fp32`` and ``--encodings fp32,fp16,int8``, side by
side, and prints per model:

* the share of latency-table cells (bandwidth x load) whose choice is a real split
  (a prefix and a suffix), under each setting;
* in those cells, the predicted latency gain over the better extreme (all-device or
  all-cloud at the same conditions, from plan.json's predictions): median and largest;
* the accuracy gate's figures of every emitted lossy pair (relative L2 error of each
  output, top-1 agreement), and the pairs it dropped;
* build time of each setting (median of ``--repeats`` interleaved runs).

Run: ``python bench/bench_encodings.py [--models alexnet,lenet] [--repeats 1] [--json FILE]``
(the models are written with ``nscompile zoo`` into a temporary directory unless
``--zoo DIR`` holds them already).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from nscompile.compiler import build
from nscompile.cost_model import COST_MODELS_DIR
from nscompile.testbed.experiments import Rates, predicted_ms

PHONE = COST_MODELS_DIR / "epyc-ort-cpu-1thread-quota25.json"
SETTINGS = {"fp32": "fp32", "fp32,fp16,int8": "fp32,fp16,int8"}


def cell_figures(plan: dict) -> dict:
    """Real-split cells of the latency table and their predicted gain over the better extreme."""
    cuts = {c["id"]: c for c in plan["cuts"]}
    device = cuts[plan["fallback"]]
    cloud = next(c for c in plan["cuts"] if c["prefix"] is None)  # built with include_all_cloud
    grid = plan["grid"]
    bw = np.array(grid["bandwidth_mbps"])
    centres = np.append(np.sqrt(bw[:-1] * bw[1:]), bw[-1])  # each bucket's representative point
    splits, gains, cells = 0, [], 0
    for load, row in zip(grid["load"], plan["tables"]["latency"]):
        for centre, cut_id in zip(centres, row):
            cells += 1
            cut = cuts[cut_id]
            if not (cut["prefix"] and cut["suffix"]):
                continue
            rates = Rates(float(centre), float(grid["downlink_mbps"] or centre), float(grid["rtt_ms"]))
            extreme = min(predicted_ms(device, rates, load), predicted_ms(cloud, rates, load))
            splits += 1
            gains.append(extreme / predicted_ms(cut, rates, load))
    return {"cells": cells, "splits": splits, "gains": gains}


def lossy_accuracy(plan: dict) -> list[dict]:
    """The gate's figures of every emitted lossy pair."""
    out = []
    for c in plan["cuts"]:
        if c.get("accuracy"):
            out.append({"cut": c["id"], "bytes": c["predicted"]["upload_bytes"], "fp32_bytes": c["upload_bytes_by_encoding"]["fp32"],
                        "outputs": c["accuracy"]["outputs"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="comma list of zoo models [default: all]")
    parser.add_argument("--zoo", type=Path, default=None, help="directory holding <name>.onnx already")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    from nscompile import zoo

    names = args.models.split(",") if args.models else [m.name for m in zoo.list_models()]
    work = Path(tempfile.mkdtemp(prefix="nscompile-bench-enc-"))
    results = {}
    try:
        for name in names:
            source = (args.zoo or work) / f"{name}.onnx"
            if not source.exists():
                zoo.write_models([name], work, size="full")
                source = work / f"{name}.onnx"
            times = {s: [] for s in SETTINGS}
            plans = {}
            for _ in range(args.repeats):  # interleaved: drift on a shared machine hits both alike
                for label, encodings in SETTINGS.items():
                    start = time.perf_counter()
                    result = build(source, work / "out", device_profile=PHONE, encodings=encodings, include_all_cloud=True, report=False)
                    times[label].append(time.perf_counter() - start)
                    plans[label] = result.plan
            results[name] = {label: {**cell_figures(plans[label]), "build_s": statistics.median(times[label]),
                                     "accuracy": lossy_accuracy(plans[label]),
                                     "dropped": (plans[label].get("accuracy_gate") or {}).get("dropped", [])}
                             for label in SETTINGS}
            print_model(name, results[name], flush=True)
        print_summary(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _gain_text(gains: list[float]) -> str:
    return f"{statistics.median(gains):.2f}x / {max(gains):.2f}x" if gains else "-"


def print_model(name: str, figures: dict, flush: bool = False) -> None:
    parts = []
    for label, f in figures.items():
        parts.append(f"{label}: {f['splits']}/{f['cells']} split cells, gain {_gain_text(f['gains'])}, build {f['build_s']:.1f}s")
    print(f"{name:12s} " + " | ".join(parts), flush=flush)
    for pair in figures["fp32,fp16,int8"]["accuracy"]:
        outs = ", ".join(f"{o} rel L2 {v['rel_l2']:.2g}" + (f" top-1 {v['top1_agreement']:.2f}" if "top1_agreement" in v else "")
                         if "rel_l2" in v else f"{o} agreement {v['agreement']:.2f}" for o, v in pair["outputs"].items())
        print(f"{'':12s}   {pair['cut']}: {pair['bytes']} B (fp32 {pair['fp32_bytes']} B); {outs}", flush=flush)
    for d in figures["fp32,fp16,int8"]["dropped"]:
        print(f"{'':12s}   dropped {d['cut']}: {'; '.join(d['violations'])}", flush=flush)


def print_summary(results: dict) -> None:
    print("\n| setting | real-split cells | share | median gain over the better extreme | largest | build s (sum) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label in SETTINGS:
        cells = sum(r[label]["cells"] for r in results.values())
        splits = sum(r[label]["splits"] for r in results.values())
        gains = [g for r in results.values() for g in r[label]["gains"]]
        build_s = sum(r[label]["build_s"] for r in results.values())
        print(f"| --encodings {label} | {splits}/{cells} | {100 * splits / max(cells, 1):.1f}% | "
              f"{statistics.median(gains) if gains else float('nan'):.2f}x | {max(gains, default=float('nan')):.2f}x | {build_s:.1f} |")


if __name__ == "__main__":
    main()
