"""Build time of light ResNet-50 (random weights, default grid) next to onnx.load + onnx.save.

Prints medians of interleaved runs and their ratios (the targets: under 3x without
verification, under 10x with it). Run: ``python bench/bench_build.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import onnx

from nscompile.compiler import build
from nscompile.examples import light_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nscompile-bench-"))
    try:
        source = work / f"{args.model}.onnx"
        onnx.save(light_model(args.model), source)
        times: dict[str, list[float]] = {"load+save": [], "build --no-verify": [], "build": []}
        stages: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all alike
            start = time.perf_counter()
            onnx.save(onnx.load(source), work / "copy.onnx")
            times["load+save"].append(time.perf_counter() - start)
            for label, verify in (("build --no-verify", False), ("build", True)):
                start = time.perf_counter()
                result = build(source, work / "out", verify=verify)
                times[label].append(time.perf_counter() - start)
                for stage, seconds in result.timings.items():
                    stages.setdefault(f"{label}: {stage}", []).append(seconds)
        base = statistics.median(times["load+save"])
        print(f"model light_{args.model} (random weights), {len(result.plan['cuts'])} cuts, median of {args.repeats}")
        for label, values in times.items():
            print(f"  {label:20s} {statistics.median(values):7.3f} s   {statistics.median(values) / base:5.2f}x load+save")
        for label, values in stages.items():
            print(f"    {label:30s} {statistics.median(values):7.3f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
