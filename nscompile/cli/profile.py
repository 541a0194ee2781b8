"""``nscompile profile``: measure this device and write its cost-model profile (JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nscompile.cli import app
from nscompile.errors import NscompileError


@app.command()
def profile(
    name: Optional[str] = typer.Option(None, "--name", help="Profile name, e.g. pixel7-ort-cpu-1thread (required unless --model)."),
    out: Path = typer.Option(..., "-o", "--out", help="Where to write the profile JSON."),
    kind: str = typer.Option("device", "--kind", help="device (runs the prefix) or server (runs the suffix)."),
    threads: int = typer.Option(1, "--threads", help="onnxruntime intra-op threads, as deployed (0 = all cores)."),
    provider: str = typer.Option("cpu", "--provider", help="Execution provider: cpu or cuda."),
    quick: bool = typer.Option(False, "--quick", help="Small sweep (under two minutes), for CI and smoke tests."),
    seed: int = typer.Option(0, "--seed", help="Seed of the benchmark configurations."),
    cpu_quota: Optional[float] = typer.Option(
        None, "--cpu-quota",
        help="Emulate a slower CPU: confine profiling to this share of one core (cgroup v1, root), e.g. 0.25.",
    ),
    compute_power_w: Optional[float] = typer.Option(None, "--compute-power-w", help="Measured compute power (W)."),
    idle_power_w: Optional[float] = typer.Option(None, "--idle-power-w", help="Measured idle power (W)."),
    radio_json: Optional[Path] = typer.Option(
        None, "--radio-json", help='JSON {"lte": {"up_alpha_w_per_mbps": ..., "up_beta_w": ..., ...}} overriding radio presets.'
    ),
    notes: Optional[str] = typer.Option(None, "--notes", help="Free text stored in the profile."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of a table."),
    model: Optional[list[Path]] = typer.Option(
        None, "--model",
        help="Calibrate instead: time this model per node on this device and add the times to --base (repeatable).",
    ),
    base: Optional[Path] = typer.Option(None, "--base", help="With --model: this device's profile (default: the shipped device profile)."),
    input_shape: Optional[list[str]] = typer.Option(None, "--input-shape", help="With --model: pin an input's shape, NAME=1x3x224x224."),
    web: bool = typer.Option(
        False, "--web",
        help="Profile the browser instead: run the microbenchmarks in headless Chromium with onnxruntime-web "
             "(WASM, 1 thread); needs `npm ci` in nscompile/runtime/js and Chromium.",
    ),
) -> None:
    """Time single-op and fused-pattern microbenchmarks with onnxruntime and fit per-op regressions.

    Run it on the device itself (phone, Jetson, Raspberry Pi) and on the server, with the
    threads and provider they will use in deployment; pass the results to `nscompile build`.
    With --model, calibrate an existing profile on given models instead (per-node times the
    compiler then prefers for those models).
    """
    from contextlib import nullcontext

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from nscompile.cost_model import load_radio_overrides
    from nscompile.profiler import run_profile
    from nscompile.profiler.quota import cpu_quota as quota_ctx

    if model:
        _calibrate(model, base, out, input_shape, as_json)
        return
    if not name:
        raise NscompileError("--name is required to profile a device (e.g. --name pixel7-ort-cpu-1thread)")
    if web and (kind != "device" or threads != 1 or provider != "cpu" or cpu_quota is not None):
        raise NscompileError("--web profiles a browser device (onnxruntime-web, one thread); drop --kind, --threads, "
                             "--provider and --cpu-quota")
    radio = load_radio_overrides(radio_json) if radio_json else None
    console = Console(stderr=True)
    ctx = quota_ctx(cpu_quota) if cpu_quota is not None else nullcontext()
    with ctx, Progress(
        TextColumn("[bold]profiling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.description}"), console=console, transient=True,
    ) as bar:
        task = bar.add_task("", total=None)

        def progress(done: int, total: int, case: str) -> None:
            bar.update(task, completed=done, total=total, description=case[:40])

        note = notes
        if cpu_quota is not None:
            note = (note + " " if note else "") + f"Measured under a cgroup-v1 CPU quota of {cpu_quota} core(s)."
        if web:
            from nscompile.profiler.web import run_web_profile

            prof = run_web_profile(name, quick=quick, seed=seed, progress=progress, notes=note,
                                   compute_power_w=compute_power_w, idle_power_w=idle_power_w, radio=radio)
        else:
            prof = run_profile(
                name, kind=kind, threads=threads, provider=provider, quick=quick, seed=seed, progress=progress,
                compute_power_w=compute_power_w, idle_power_w=idle_power_w, radio=radio, notes=note,
                under_quota=cpu_quota is not None,
            )
    if cpu_quota is not None:
        prof.meta["cpu_quota_cores"] = cpu_quota
    prof.save(out)
    rows = sorted(prof.models.items())
    speed = prof.meta.get("speed_checks", {})
    unsteady = {k: v for k, v in speed.get("spread", {}).items() if v > speed.get("unsteady_above", 1.0)}
    if unsteady:
        moved = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(unsteady.items()))
        typer.echo(f"warning: this machine's speed moved while profiling (reference kernels, slowest vs fastest "
                   f"checks: {moved}); the times are corrected to its median speed, but a quieter run is "
                   "better: profile again with nothing else running, or calibrate on your models with --model.",
                   err=True)
    if as_json:
        typer.echo(json.dumps({
            "profile": str(out), "name": prof.name, "sha256": prof.sha256, "speed_checks": speed,
            "models": {k: {"transform": r.transform, "heldout_error": r.heldout_error, "n_samples": r.n_samples}
                       for k, r in rows},
        }, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{prof.name}: {len(rows)} op keys, {prof.meta.get('n_benchmarks')} benchmarks, "
                        f"{prof.meta.get('profiling_seconds')} s")
    for col in ("op key", "form", "features", "held-out error", "samples"):
        table.add_column(col)
    for k, r in rows:
        err = "-" if r.heldout_error is None else f"{100 * r.heldout_error:.0f}%"
        table.add_row(k, r.transform, ", ".join(r.features) or "-", err, str(r.n_samples))
    Console().print(table)
    typer.echo(f"wrote {out}")


def _calibrate(models: list[Path], base: Optional[Path], out: Path, input_shape: Optional[list[str]], as_json: bool) -> None:
    """``nscompile profile --model``: per-node times of ``models`` added to the base profile."""
    from contextlib import nullcontext

    from nscompile.cost_model import default_profile_path, load_profile
    from nscompile.frontend import parse_input_shapes
    from nscompile.profiler.calibrate import calibrate
    from nscompile.profiler.quota import cpu_quota as quota_ctx

    prof = load_profile(base or default_profile_path("device"))
    shapes = parse_input_shapes(input_shape)
    quota = prof.meta.get("cpu_quota_cores")
    calibrations = dict(prof.calibrations)
    # A profile measured under a CPU quota is calibrated under the same quota.
    with quota_ctx(float(quota)) if quota else nullcontext():
        for path in models:
            sha, entry = calibrate(path, prof, shapes)
            calibrations[sha] = entry
            line = {"model": str(path), "measured_ms": entry["measured_ms"], "predicted_ms": entry["predicted_ms"],
                    "nodes": len(entry["nodes"])}
            typer.echo(json.dumps(line) if as_json else
                       f"{path}: measured {entry['measured_ms']:.3f} ms, regressions predicted "
                       f"{entry['predicted_ms']:.3f} ms; {len(entry['nodes'])} nodes calibrated")
    prof.with_calibrations(calibrations).save(out)
    typer.echo(f"wrote {out}")
