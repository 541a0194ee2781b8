"""Build time of light ResNet-50 (random weights, default grid) next to onnx.load + onnx.save.

Everything is timed as a whole process, imports included, because that is what a user
waits for: ``python -m nscompile build`` (with and without ``--no-verify``) against
``python -c "onnx.save(onnx.load(...))"`` on the same file, runs interleaved so that
drift on a shared machine hits all alike, best of ``--repeats`` each. The targets
(issue 12): at most 2.5x load+save without verification, at most 4x with it.

Processes run as from an installed nscompile, with its modules' bytecode cached (in a
temporary ``PYTHONPYCACHEPREFIX``, so no checkout gets ``__pycache__`` folders): a
``PYTHONDONTWRITEBYTECODE`` environment would otherwise recompile nscompile's sources
in every build process, which pip-installed packages never do. ``--compare-with DIR``
times the build of another checkout (e.g. ``main``) in the same interleaved loop, for
before/after figures measured side by side.

Run: ``python bench/bench_build.py [--model resnet50] [--repeats 2] [--compare-with ../main]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

from nscompile.examples import light_model

HERE = Path(__file__).resolve().parent.parent
LOAD_SAVE = "import sys, onnx; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"


def _timed(command: list[str], tree: Path, pycache: Path) -> tuple[float, str]:
    """Wall time of one process run with ``tree`` first on the import path, and its stdout."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONPYCACHEPREFIX=str(pycache / tree.name))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each command; the best counts")
    parser.add_argument("--compare-with", type=Path, help="another nscompile checkout to time alongside")
    args = parser.parse_args()
    trees = {"": HERE}
    if args.compare_with:
        trees[f" [{args.compare_with.name}]"] = args.compare_with.resolve()
    work = Path(tempfile.mkdtemp(prefix="nscompile-bench-"))
    try:
        source = work / f"{args.model}.onnx"
        onnx.save(light_model(args.model), source)
        python = sys.executable
        commands: dict[str, tuple[list[str], Path]] = {"load+save": ([python, "-c", LOAD_SAVE, str(source), str(work / "copy.onnx")], HERE)}
        for suffix, tree in trees.items():
            build = [python, "-m", "nscompile", "build", str(source), "-o", str(work / "out"), "--json"]
            commands[f"build --help{suffix}"] = ([python, "-m", "nscompile", "build", "--help"], tree)
            commands[f"build --no-verify{suffix}"] = ([*build, "--no-verify"], tree)
            commands[f"build{suffix}"] = (build, tree)
        best = {label: float("inf") for label in commands}
        stages: dict[str, dict[str, float]] = {}
        for _ in range(args.repeats):
            for label, (command, tree) in commands.items():
                seconds, out = _timed(command, tree, work / "pycache")
                best[label] = min(best[label], seconds)
                if "--json" in command:
                    summary = json.loads(out)
                    stages[label] = {k: min(v, stages.get(label, {}).get(k, v)) for k, v in summary["timings_s"].items()}
                    cuts = len(summary["cuts"])
        base = best["load+save"]
        print(f"model light_{args.model} (random weights, {source.stat().st_size / 1e6:.0f} MB), {cuts} cuts, "
              f"whole processes, best of {args.repeats}")
        for label, seconds in best.items():
            print(f"  {label:30s} {seconds:7.3f} s   {seconds / base:5.2f}x load+save")
        for label, timings in stages.items():
            print(f"  stages of {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in timings.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
