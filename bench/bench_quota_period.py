"""Which CFS period for a 12.5% CPU quota (the paper-like device class): stalls against a request.

A cgroup-v1 quota lets a group run ``quota`` microseconds per ``period``; once spent, the
group waits for the next period. At 12.5% of a core the kernel's 1 ms minimum quota
makes the shortest period 8 ms (``nscompile.cgroups.CpuQuotaGroup`` picks it): a stall is
then at most 7 ms. Longer periods give the same average share in longer stalls, so a
request of a few periods' work takes a time that depends on where in the period it
starts. This script runs a zoo model back to back (with short sleeps, as a device
between requests) under 12.5% with several periods and prints, per period, the median,
p95 and spread of the per-request slowdown (wall time over the thread's CPU time).

Run (root, cgroup v1): ``python bench/bench_quota_period.py [--model resnet18] [--size full]
[--periods 8,16,40,100] [--requests 60]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from nscompile import zoo
from nscompile.cgroups import CGROUP_CPU, CpuQuotaGroup


def measure(model_path: Path, cores: float, period_ms: float, requests: int, gap_s: float) -> list[float]:
    """Per-request wall/CPU ratios of ``requests`` runs of the model under ``cores`` with the given period."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
             for i in sess.get_inputs()}
    sess.run(None, feeds)
    group = CpuQuotaGroup(CGROUP_CPU / f"nscompile-period-{os.getpid()}", cores, int(period_ms * 1000))
    ratios = []
    try:
        group.add(os.getpid())
        for _ in range(requests):
            time.sleep(gap_s)
            w, c = time.perf_counter(), time.thread_time()
            sess.run(None, feeds)
            ratios.append((time.perf_counter() - w) / max(time.thread_time() - c, 1e-9))
    finally:
        (CGROUP_CPU / "cgroup.procs").write_text(str(os.getpid()))
        group.remove()
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", default="full", choices=("full", "small"))
    ap.add_argument("--cores", type=float, default=0.125)
    ap.add_argument("--periods", default="8,16,40,100", help="CFS periods in ms")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--gap-s", type=float, default=0.05, help="sleep between requests (the group's quota refills)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        zoo.write_models([args.model], Path(tmp), size=args.size)
        path = next(Path(tmp).glob("*.onnx"))
        print(f"{args.model} ({args.size}) under {args.cores:.3f} cores; slowdown = wall / CPU time per request "
              f"(ideal {1 / args.cores:.1f}x)")
        print("| period ms | median | p95 | max | spread p95/p5 |")
        print("|---|---|---|---|---|")
        for period in (float(p) for p in args.periods.split(",")):
            r = sorted(measure(path, args.cores, period, args.requests, args.gap_s))
            p5, p95 = r[int(0.05 * (len(r) - 1))], r[int(0.95 * (len(r) - 1))]
            print(f"| {period:g} | {statistics.median(r):.2f}x | {p95:.2f}x | {r[-1]:.2f}x | {p95 / p5:.2f} |")


if __name__ == "__main__":
    main()
