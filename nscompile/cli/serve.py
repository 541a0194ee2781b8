"""``nscompile serve`` (the cloud side) and ``nscompile run`` (the device side)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nscompile.cli import app
from nscompile.errors import NscompileError


@app.command()
def serve(
    repository: Path = typer.Argument(..., help="The cloud/ directory of a build."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 for all interfaces)."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, help="Server processes."),
    max_body_mb: float = typer.Option(64.0, help="Largest request body accepted, in MiB (413 beyond)."),
    concurrency: Optional[int] = typer.Option(None, help="Inferences computed at once (default: CPUs, at most 4)."),
    max_queue: int = typer.Option(64, help="In-flight requests admitted before answering 503."),
    threads: Optional[int] = typer.Option(None, help="onnxruntime intra-op threads per model."),
    drain_seconds: float = typer.Option(5.0, help="After SIGTERM: report not ready but keep answering this long, then finish what is in flight and exit 0."),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
    cors_origin: list[str] = typer.Option(
        [], "--cors-origin", help="Let pages on this origin call the server, e.g. http://localhost:8080 (repeatable; default: none)."
    ),
    preload: Optional[str] = typer.Option(
        None, "--preload", help="Models to load at start-up, comma separated ('' for none; default: all). The others load on "
                                "their first request or POST /v2/repository/models/NAME/load, and unload on .../unload."
    ),
) -> None:
    """Serve a build's suffix models over the KServe v2 protocol (Triton-compatible)."""
    from nscompile.serve import serve as run_server
    from nscompile.serve.cors import check_origins

    if workers < 1 or port < 0 or max_body_mb <= 0 or drain_seconds < 0:
        raise NscompileError("--workers must be >= 1, --port >= 0, --max-body-mb > 0 and --drain-seconds >= 0")
    run_server(
        repository,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        max_body_bytes=int(max_body_mb * (1 << 20)),
        concurrency=concurrency,
        max_queue=max_queue,
        threads=threads,
        drain_s=drain_seconds,
        cors_origins=check_origins(cors_origin),
        preload=None if preload is None else [m.strip() for m in preload.split(",") if m.strip()],
    )


def _parse_input(spec: str) -> tuple[str, "object"]:
    import numpy as np

    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise NscompileError(f"--input {spec!r} is not NAME=FILE.npy; e.g. --input data=x.npy")
    try:
        return name, np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise NscompileError(f"cannot read {path} as a .npy array ({exc}); save it with numpy.save") from None


@app.command()
def run(
    device_dir: Path = typer.Argument(..., help="The device/ directory of a build."),
    server: str = typer.Option(..., help="Server base URL, e.g. http://10.0.0.2:8000."),
    input: list[str] = typer.Option(..., "--input", help="NAME=FILE.npy, once per model input."),
    objective: Optional[str] = typer.Option(None, help="latency or energy (default latency; or pass --policy)."),
    policy: Optional[str] = typer.Option(None, "--policy", help="latency, energy, slo(latency_ms=X), budget(energy_mj=Y) or weighted(LAM)."),
    output_dir: Optional[Path] = typer.Option(None, help="Write each output as NAME.npy here."),
    cut: Optional[str] = typer.Option(None, help="Force this cut instead of looking it up."),
    bandwidth_mbps: Optional[float] = typer.Option(None, help="Use this uplink bandwidth instead of measuring it."),
    device_load: Optional[float] = typer.Option(None, help="Use this device slowdown (1 = as profiled) instead of learning it."),
    deadline_ms: float = typer.Option(5000.0, help="Finish on the device if the server takes longer."),
    as_json: bool = typer.Option(False, "--json", help="Print the record and output summaries as JSON."),
) -> None:
    """Run one inference split between this device and a server."""
    from nscompile.runtime import SplitRunner

    inputs = dict(_parse_input(s) for s in input)
    with SplitRunner(
        device_dir, server, objective, policy=policy, deadline_ms=deadline_ms, force_cut=cut, bandwidth_mbps=bandwidth_mbps,
        device_load=device_load,
    ) as runner:
        outputs, record = runner.run(inputs, with_record=True)
    if output_dir is not None:
        import numpy as np

        output_dir.mkdir(parents=True, exist_ok=True)
        for name, array in outputs.items():
            np.save(output_dir / f"{Path(name).name}.npy", array, allow_pickle=False)
    summary = {n: {"shape": list(a.shape), "dtype": a.dtype.name} for n, a in outputs.items()}
    if as_json:
        print(json.dumps({"record": record.as_dict(), "outputs": summary}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cut {record.cut} ({record.reason})", show_header=False)
    for key, value in record.as_dict().items():
        if value not in (None, 0, 0.0, False) or key in ("cut", "total_ms"):
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    for name, s in summary.items():
        table.add_row(f"output {name}", f"{s['dtype']} {s['shape']}")
    Console().print(table)
