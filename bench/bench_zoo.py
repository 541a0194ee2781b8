"""Build every zoo model with ``nscompile build`` (verification on) and time it.

For each model: write it (seed 0), check it with ``onnx.checker`` (``full_check=True``),
count layers / parameters / MACs from the graph, then build it with every emitted
prefix/suffix pair verified against the whole model. Prints a table and writes
``bench/out/zoo_<size>.json``. Files are deleted after each model unless ``--keep``
(the full zoo is about 2.5 GB of ONNX).

Run: ``python bench/bench_zoo.py [NAME ...] [--size full|small] [--keep]``.
Profiles: the shipped defaults, or ``--device-profile/--cloud-profile``; with
``--stand-in-profiles`` a MACs-and-bytes device 20x slower than the server is used
instead (for when no measured profile exists yet).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import onnx

from nscompile import zoo
from nscompile.compiler import build

OUT = Path(__file__).resolve().parent / "out"


def stand_in_profiles(directory: Path) -> tuple[Path, Path]:
    """Two analytic profiles: 100 ms/GMAC on the device, 5 ms/GMAC on the server."""
    from nscompile.cost_model import Profile, Regression

    paths = []
    for kind, ms_per_gmac in (("device", 100.0), ("server", 5.0)):
        fit = Regression(("macs", "bytes_in", "bytes_out"), "linear", (ms_per_gmac * 1e-9, 1e-7, 1e-7), 0.002)
        profile = Profile(name=f"stand-in-{kind}", kind=kind, provider="cpu", threads=1, compute_power_w=3.0,
                          idle_power_w=0.5, fallback=fit)
        paths.append(profile.save(directory / f"{kind}.json"))
    return paths[0], paths[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="zoo models (default: all)")
    parser.add_argument("--size", default="full", choices=zoo.SIZES)
    parser.add_argument("--keep", action="store_true", help="keep the models and builds under bench/out/zoo")
    parser.add_argument("--device-profile")
    parser.add_argument("--cloud-profile")
    parser.add_argument("--stand-in-profiles", action="store_true")
    args = parser.parse_args()

    work = OUT / f"zoo_{args.size}"
    work.mkdir(parents=True, exist_ok=True)
    device, cloud = args.device_profile, args.cloud_profile
    if args.stand_in_profiles:
        device, cloud = stand_in_profiles(work)
    names = args.names or [m.name for m in zoo.list_models()]
    rows = []
    header = f"{'model':12s} {'tag':4s} {'layers':>6s} {'params':>12s} {'MACs':>15s} {'MB':>6s} " \
             f"{'write s':>7s} {'check s':>7s} {'build s':>7s} {'cuts':>4s} {'max diff':>8s}"
    print(header, flush=True)
    for name in names:
        info = zoo.get_info(name)
        start = time.perf_counter()
        (path,) = zoo.write_models([name], work, size=args.size, seed=0)
        t_write = time.perf_counter() - start
        start = time.perf_counter()
        onnx.checker.check_model(str(path), full_check=True)
        t_check = time.perf_counter() - start
        model = onnx.load(str(path), load_external_data=False)
        layers = zoo.count_layers(model, exclude=info.app_layers)
        params, macs = zoo.count_params(model), zoo.count_macs(model)
        del model
        size_mb = sum(p.stat().st_size for p in work.glob(f"{path.name}*")) / 1e6
        start = time.perf_counter()
        result = build(path, work / f"build_{name}", device_profile=device, cloud_profile=cloud,
                       verify=True, report=False)
        t_build = time.perf_counter() - start
        cuts = [c["id"] for c in result.plan["cuts"]]
        assert set(result.verification) == set(cuts)
        worst = max(result.verification.values())
        row = dict(name=name, tag=info.tag, layers=layers, paper_layers=info.paper_layers, params=params,
                   macs=macs, megabytes=round(size_mb, 1), write_s=round(t_write, 2), check_s=round(t_check, 2),
                   build_s=round(t_build, 2), stage_s={k: round(v, 3) for k, v in result.timings.items()},
                   cuts=cuts, verified_pairs=len(result.verification), max_abs_diff=worst)
        rows.append(row)
        print(f"{name:12s} {info.tag:4s} {layers:6d} {params:12,d} {macs:15,d} {size_mb:6.0f} "
              f"{t_write:7.1f} {t_check:7.1f} {t_build:7.1f} {len(cuts):4d} {worst:8.1e}", flush=True)
        if not args.keep:
            for p in work.glob(f"{path.name}*"):
                p.unlink()
            shutil.rmtree(work / f"build_{name}", ignore_errors=True)
    report = OUT / f"zoo_{args.size}.json"
    report.write_text(json.dumps({"size": args.size, "profiles": [str(device or "default"), str(cloud or "default")],
                                  "models": rows}, indent=2))
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
