"""What fp16/int8 cut tensors change (issue 13): real splits, their predicted gain, accuracy, build time.

For each zoo model (full size) it builds twice with the phone-class device profile and
the default server, ``--encodings fp32`` and ``--encodings fp32,fp16,int8``, side by
side, and prints per model:

* the share of latency-table cells (bandwidth x load) whose choice is a real split
  (a prefix and a suffix), under each setting;
* in those cells, the predicted latency gain over the better extreme (all-device or
  all-cloud at the same conditions, from plan.json's predictions): median and largest;
* where the encodings changed the choice, the predicted gain over the fp32 plan's choice;
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
from nscompile.runtime.plan import Cut

PHONE = COST_MODELS_DIR / "epyc-ort-cpu-1thread-quota25.json"
SETTINGS = {"fp32": "fp32", "fp32,fp16,int8": "fp32,fp16,int8"}


def cell_latencies(plan: dict) -> list[tuple[dict, float, float, float]]:
    """Per latency-table cell: (chosen cut, its predicted ms, all-device ms, all-cloud ms) at the cell's point."""
    cuts = {c["id"]: c for c in plan["cuts"]}
    device = Cut.from_doc(cuts[plan["fallback"]])
    cloud = Cut.from_doc(next(c for c in plan["cuts"] if c["prefix"] is None))  # built with include_all_cloud
    grid = plan["grid"]
    bw = np.array(grid["bandwidth_mbps"])
    centres = np.append(np.sqrt(bw[:-1] * bw[1:]), bw[-1])  # each bucket's representative point
    out = []
    for load, row in zip(grid["load"], plan["tables"]["latency"]):
        for centre, cut_id in zip(centres, row):
            conditions = (float(centre), load, float(grid["rtt_ms"]), grid["downlink_mbps"])
            out.append((cuts[cut_id], Cut.from_doc(cuts[cut_id]).latency_ms(*conditions),
                        device.latency_ms(*conditions), cloud.latency_ms(*conditions)))
    return out


def cell_figures(plan: dict) -> dict:
    """Real-split cells of the latency table and their predicted gain over the better extreme."""
    cells = cell_latencies(plan)
    gains = [min(dev, cloud) / ms for cut, ms, dev, cloud in cells if cut["prefix"] and cut["suffix"]]
    return {"cells": len(cells), "splits": len(gains), "gains": gains}


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
            # Where the encodings changed the choice: the new choice's predicted gain over the old one's.
            results[name]["changed"] = [old[1] / new[1] for old, new in zip(cell_latencies(plans["fp32"]), cell_latencies(plans["fp32,fp16,int8"]))
                                        if old[0]["id"] != new[0]["id"]]
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
    for label in SETTINGS:
        f = figures[label]
        parts.append(f"{label}: {f['splits']}/{f['cells']} split cells, gain {_gain_text(f['gains'])}, build {f['build_s']:.1f}s")
    changed = figures["changed"]
    parts.append(f"{len(changed)} cells changed, gain over the fp32 choice {_gain_text(changed)}")
    print(f"{name:12s} " + " | ".join(parts), flush=flush)
    for pair in figures["fp32,fp16,int8"]["accuracy"]:
        outs = ", ".join(f"{o} rel L2 {v['rel_l2']:.2g}" + (f" top-1 {v['top1_agreement']:.2f}" if "top1_agreement" in v else "")
                         if "rel_l2" in v else f"{o} agreement {v['agreement']:.2f}" for o, v in pair["outputs"].items())
        print(f"{'':12s}   {pair['cut']}: {pair['bytes']} B (fp32 {pair['fp32_bytes']} B); {outs}", flush=flush)
    for d in figures["fp32,fp16,int8"]["dropped"]:
        print(f"{'':12s}   dropped {d['cut']}: {'; '.join(d['violations'])}", flush=flush)


def print_summary(results: dict) -> None:
    changed = [g for r in results.values() for g in r["changed"]]
    print(f"\ncells whose choice the encodings changed: {len(changed)}; predicted gain over the fp32 plan's choice there "
          f"(median / largest): {_gain_text(changed)}")
    print("| setting | real-split cells | share | median gain over the better extreme | largest | build s (sum) |")
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
