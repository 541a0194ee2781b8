"""``nscompile build`` and ``nscompile inspect``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nscompile.cli import app

console = Console()
progress_console = Console(stderr=True)  # progress never mixes with --json output


@app.command()
def build(
    model: Path = typer.Argument(..., help="The ONNX model to split."),
    output: Path = typer.Option(None, "-o", "--output", help="Build directory (default: build/<model name>)."),
    device: Optional[Path] = typer.Option(None, "--device", help="Device profile JSON (default: shipped device profile)."),
    cloud: Optional[Path] = typer.Option(None, "--cloud", help="Server profile JSON (default: shipped server profile)."),
    objective: str = typer.Option("latency", help="Objective of plan.json's table: latency or energy (both are solved)."),
    bandwidth: str = typer.Option("0.1:1000:32", help="Uplink buckets: MIN:MAX:N Mbps (log-spaced), or a list such as 3G,LTE,WIFI."),
    load: str = typer.Option("1,2,4,8", help="Server load levels (slowdown factor K >= 1), comma separated."),
    device_load: str = typer.Option("1,1.5,2,4", "--device-load", help="Device load levels (slowdown Kd against the device profile; 1 is always among them), comma separated."),
    rtt: float = typer.Option(0.0, "--rtt", help="Round-trip time in ms added to every split that uses the server."),
    downlink: Optional[float] = typer.Option(None, "--downlink", help="Downlink Mbps (default: equal to the uplink)."),
    radio: str = typer.Option("wifi", help="Radio power model for the energy objective: wifi, lte, 3g or cat1."),
    input_bytes: Optional[int] = typer.Option(None, "--input-bytes", help="Upload size of the raw input (e.g. a JPEG) instead of its tensor size."),
    input_shape: Optional[list[str]] = typer.Option(None, "--input-shape", help="Pin an input's shape: NAME=1x3x224x224 (repeatable)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check every emitted prefix+suffix against the whole model."),
    triton_backend: str = typer.Option("onnxruntime", "--triton-backend", help="How Triton runs cloud/: onnxruntime (its ONNX backend) or python (1/model.py runs the ONNX file with onnxruntime)."),
    encodings: str = typer.Option("fp32,fp16", "--encodings", help="How cut tensors may travel: comma list of fp32, fp16, int8 (fp32 required; int8 is lossy)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Real inputs (a directory or .npz) for the accuracy gate of lossy cuts (default: random inputs)."),
    tolerance: Optional[str] = typer.Option(None, "--tolerance", help="What a lossy cut may change: REL_L2, or rel_l2=0.01,top1=0.99 (default: that)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Annotate, partition for every bandwidth x load bucket, emit and verify split artifacts."""
    from nscompile.accuracy import Tolerance
    from nscompile.compiler import build as run_build
    from nscompile.encoding import LOSSLESS, parse_encodings
    from nscompile.frontend import parse_input_shapes
    from nscompile.planner import GridSpec
    from nscompile.report import worst_rel_l2

    grid = GridSpec.parse(bandwidth, load, device_load, rtt_ms=rtt, downlink_mbps=downlink, radio=radio, input_bytes=input_bytes)
    chosen_encodings, gate_tolerance = parse_encodings(encodings), Tolerance.parse(tolerance)
    output = output or Path("build") / model.stem
    lossy = any(e != LOSSLESS for e in chosen_encodings)
    stages = ["load", "annotate", "partition", "emit", *(["accuracy"] if lossy else []), *(["verify"] if verify else []), "report"]
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=progress_console, transient=True) as progress:
        task = progress.add_task(f"{model.name}: load", total=len(stages))

        def on_stage(stage: str) -> None:
            progress.update(task, completed=stages.index(stage), description=f"{model.name}: {stage}")

        result = run_build(model, output, device_profile=device, cloud_profile=cloud, objective=objective, grid=grid,
                           input_shapes=parse_input_shapes(input_shape), verify=verify, triton_backend=triton_backend,
                           encodings=chosen_encodings, calibration_inputs=calibration, tolerance=gate_tolerance,
                           on_stage=on_stage)
    if as_json:
        print(json.dumps({"output": str(result.out_dir), "cuts": [c["id"] for c in result.plan["cuts"]],
                          "timings_s": result.timings, "verification_max_abs_diff": result.verification,
                          "accuracy_gate": result.accuracy, "notes": result.notes}))
        return
    table = Table(title=f"{result.plan['model']['name']}: {len(result.plan['cuts'])} cuts emitted to {result.out_dir}")
    for column in ("cut", "device nodes", "device ms", "cloud ms", "upload KB", "verified max |diff|"):
        table.add_column(column, justify="left" if column == "cut" else "right")
    for cut in result.plan["cuts"]:
        p = cut["predicted"]
        if cut["accuracy"]:  # lossy: the gate's worst relative L2 error over the outputs
            diff = f"rel L2 {worst_rel_l2(cut['accuracy']):.2g}"
        else:
            diff = "skipped" if result.verification is None else f"{result.verification[cut['id']]:.2g}"
        table.add_row(cut["id"], str(cut["device_nodes"]), f"{p['device_ms']:.2f}", f"{p['cloud_ms']:.2f}", f"{p['upload_bytes'] / 1024:.1f}", diff)
    console.print(table)
    for line in [*result.notes, *_gate_summary(result.accuracy)]:
        console.print(line)
    console.print("stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))


def _gate_summary(gate: dict | None) -> list[str]:
    """The build summary's lines about the accuracy gate of lossy cuts."""
    if not gate:
        return []
    tol = gate["tolerance"]
    if not gate["measured"]:
        return [f"accuracy gate: no lossy cut was chosen (encodings {','.join(gate['encodings'])})"]
    data = "real inputs" if gate["real_data"] else "random inputs, not real data (pass --calibration)"
    lines = [f"accuracy gate: {gate['measured']} lossy cuts measured on {gate['inputs']} {data} "
             f"(tolerance rel L2 {tol['rel_l2']:g}, top-1 {tol['top1']:g}); kept: {', '.join(gate['kept']) or 'none'}"]
    for d in gate["dropped"]:
        lines.append(f"  dropped {d['cut']} ({'; '.join(d['violations'])}); the tables were solved again without it")
    return lines


@app.command()
def inspect(
    build_dir: Path = typer.Argument(..., help="A directory written by `nscompile build`."),
    as_json: bool = typer.Option(False, "--json", help="Print layers and the decision map as JSON (with --pareto: the front)."),
    objective: Optional[str] = typer.Option(None, help="Decision map to show (default: the plan's objective)."),
    pareto: bool = typer.Option(False, "--pareto", help="Show the latency-energy front at --bandwidth/--load instead."),
    bandwidth: Optional[float] = typer.Option(None, "--bandwidth", help="With --pareto: uplink Mbps (e.g. 5.85, LTE)."),
    load: float = typer.Option(1.0, "--load", help="With --pareto: server slowdown factor K (1 = idle)."),
    device_load: float = typer.Option(1.0, "--device-load", help="With --pareto: device slowdown factor Kd (1 = as profiled)."),
    rtt: Optional[float] = typer.Option(None, "--rtt", help="With --pareto: round-trip time in ms (default: the plan's)."),
):
    """Per-layer predicted device/cloud ms and output size (the paper's figure) and the decision map;
    with --pareto, the latency-energy front at one condition."""
    from nscompile.errors import NscompileError
    from nscompile.report import load_build, pareto_points, worst_rel_l2

    plan_doc, layers = load_build(build_dir)
    if pareto:
        points = pareto_points(build_dir, bandwidth, load, device_load, rtt)
        if as_json:
            print(json.dumps(points))
            return
        radio = (plan_doc.get("energy_model") or {}).get("radio", {}).get("name", "?")
        front = Table(title=f"latency-energy front at {bandwidth:g} Mbps, K={load:g}, Kd={device_load:g} "
                            f"(RTT {plan_doc['grid']['rtt_ms'] if rtt is None else rtt:g} ms, {radio} radio), fastest first")
        for column in ("cut", "encoding", "latency ms", "device energy mJ"):
            front.add_column(column, justify="left" if column in ("cut", "encoding") else "right")
        encodings = {c["id"]: c.get("encoding", "fp32") for c in plan_doc["cuts"]}
        for p in points:
            front.add_row(p["cut"], encodings.get(p["cut"], "fp32"), f"{p['latency_ms']:.2f}", f"{p['energy_mj']:.2f}")
        console.print(front)
        return
    objective = objective or plan_doc["grid"]["objective"]
    tables = plan_doc.get("tables", {plan_doc["grid"]["objective"]: plan_doc["table"]})
    if objective not in tables:
        raise NscompileError(f"the plan has no '{objective}' table; choose one of {', '.join(tables)}")
    if as_json:
        print(json.dumps({"layers": layers, "grid": plan_doc["grid"], "table": tables[objective], "cuts": plan_doc["cuts"]}))
        return
    per_layer = Table(title=f"{plan_doc['model']['name']}: per layer")
    for column in ("node", "op", "device ms", "cloud ms", "output KB", "cuts after"):
        per_layer.add_column(column, justify="right" if "ms" in column or "KB" in column else "left")
    for r in layers:
        per_layer.add_row(r["node"], r["op"], f"{r['device_ms']:.3f}", f"{r['cloud_ms']:.3f}", f"{r['output_kb']:.1f}", ", ".join(r["cuts"]))
    console.print(per_layer)
    cuts = Table(title="cuts: upload KB under each encoding (* the cut's own)")
    for column in ("cut", "encoding", "fp32 KB", "fp16 KB", "int8 KB", "rel L2 error"):
        cuts.add_column(column, justify="left" if column in ("cut", "encoding") else "right")
    for c in plan_doc["cuts"]:
        sizes = c.get("upload_bytes_by_encoding", {})
        kb = [f"{sizes[e] / 1024:.1f}" + ("*" if e == c.get("encoding", "fp32") else "") if e in sizes else "" for e in ("fp32", "fp16", "int8")]
        acc = c.get("accuracy")
        cuts.add_row(c["id"], c.get("encoding", "fp32"), *kb, "lossless" if acc is None else f"{worst_rel_l2(acc):.2g}")
    console.print(cuts)
    decision = Table(title=f"decision map ({objective}): rows load K, columns uplink bucket start (Mbps)")
    decision.add_column("uplink Mbps")
    for load in plan_doc["grid"]["load"]:
        decision.add_column(f"K={load:g}")
    for b, start in enumerate(plan_doc["grid"]["bandwidth_mbps"]):
        decision.add_row(f"{start:.3g}", *[row[b] for row in tables[objective]])
    console.print(decision)
