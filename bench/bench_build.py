"""Build time of light ResNet-50 (random weights, default grid) next to onnx.load + onnx.save.

Everything is timed as a whole process, imports included, because that is what a user
waits for: ``python -m nscompile build`` (with and without ``--no-verify``) against
``python -c "onnx.save(onnx.load(...))"`` on the same file, runs interleaved so that
drift on a shared machine hits all alike, best of ``--repeats`` each (the median too,
and the CPU time, steadier than wall time where others load the machine; verification
runs on two cores, so its CPU time exceeds its wall time). The targets (issue 12): at
most 2.5x load+save without verification, at most 4x with it.

Processes run as from an installed nscompile, with its modules' bytecode cached (in a
temporary ``PYTHONPYCACHEPREFIX``, so no checkout gets ``__pycache__`` folders): a
``PYTHONDONTWRITEBYTECODE`` environment would otherwise recompile nscompile's sources
in every build process, which pip-installed packages never do. ``--compare-with DIR``
times the build of another checkout (e.g. ``main``) in the same interleaved loop, for
before/after figures measured side by side.

Run: ``python bench/bench_build.py [--model resnet50] [--repeats 2] [--compare-with ../main]
[--build-args "--encodings fp32"]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

from nscompile.examples import light_model

HERE = Path(__file__).resolve().parent.parent
LOAD_SAVE = "import sys, onnx; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], tree: Path, work: Path) -> tuple[float, float, str]:
    """Wall and CPU time of one process importing nscompile from ``tree``, and its stdout.

    It runs in ``work``: ``python -m`` and ``-c`` put the working directory first on the
    import path, so a run from inside a checkout would import that checkout instead.
    """
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONPYCACHEPREFIX=str(work / "pycache" / tree.name))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cpu, start = _cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return seconds, cpu, done.stdout


def _ratio(values: list[float], base: list[float]) -> str:
    return f"{min(values) / min(base):5.2f}x load+save ({statistics.median(values) / statistics.median(base):.2f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each command; the best counts")
    parser.add_argument("--compare-with", type=Path, help="another nscompile checkout to time alongside")
    parser.add_argument("--build-args", default="", help='more flags for both builds, e.g. "--encodings fp32"')
    args = parser.parse_args()
    trees = {"": HERE}
    if args.compare_with:
        trees[f" [{args.compare_with.name}]"] = args.compare_with.resolve()
    work = Path(tempfile.mkdtemp(prefix="nscompile-bench-"))
    try:
        source = work / f"{args.model}.onnx"
        onnx.save(light_model(args.model), source)
        python = sys.executable
        copy = work / "copy.onnx"
        commands: dict[str, tuple[list[str], Path, Path | None]] = {
            "load+save": ([python, "-c", LOAD_SAVE, str(source), str(copy)], HERE, copy)}
        for suffix, tree in trees.items():
            for label, flags in (("build --no-verify", ["--no-verify"]), ("build", [])):
                out = work / f"out{len(commands)}"
                command = [python, "-m", "nscompile", "build", str(source), "-o", str(out), "--json", *flags, *shlex.split(args.build_args)]
                commands[label + suffix] = (command, tree, out)
            commands[f"build --help{suffix}"] = ([python, "-m", "nscompile", "build", "--help"], tree, None)
        for tree in trees.values():  # each checkout must be the one its processes import
            _, _, where = _timed([python, "-c", "import nscompile; print(nscompile.__file__)"], tree, work)
            if not Path(where.strip()).is_relative_to(tree):
                raise SystemExit(f"processes meant to use {tree} import {where.strip()}; is nscompile installed there?")
        times: dict[str, list[float]] = {label: [] for label in commands}
        cpu_times: dict[str, list[float]] = {label: [] for label in commands}
        stages: dict[str, dict[str, float]] = {}
        for _ in range(args.repeats):
            for label, (command, tree, output) in commands.items():
                if output is not None and output.is_dir():  # every run writes afresh, as a first build does
                    shutil.rmtree(output)
                elif output is not None:
                    output.unlink(missing_ok=True)
                seconds, cpu, out = _timed(command, tree, work)
                times[label].append(seconds)
                cpu_times[label].append(cpu)
                if "--json" in command:
                    summary = json.loads(out)
                    stages[label] = {k: min(v, stages.get(label, {}).get(k, v)) for k, v in summary["timings_s"].items()}
                    cuts = len(summary["cuts"])
        print(f"model light_{args.model} (random weights, {source.stat().st_size / 1e6:.0f} MB), {cuts} cuts, "
              f"whole processes, {args.repeats} runs each: wall best (median), CPU best")
        for label in commands:
            wall, cpu = times[label], cpu_times[label]
            print(f"  {label:30s} {min(wall):6.3f} s ({statistics.median(wall):.3f})  {_ratio(wall, times['load+save'])}"
                  f"   CPU {min(cpu):6.3f} s  {min(cpu) / min(cpu_times['load+save']):5.2f}x")
        for label, timings in stages.items():
            print(f"  stages of {label} (best): " + ", ".join(f"{k} {v:.3f}" for k, v in timings.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
