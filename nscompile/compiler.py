"""``build``: the whole pipeline, frontend -> annotate -> plan -> emit -> accuracy gate -> verify.

The output directory appears whole or not at all: everything is written into a hidden
sibling directory that is renamed into place only after verification passed.

With lossy cut-tensor encodings (fp16, int8) the emitted lossy pairs are measured
against the whole model; a pair beyond the tolerance is dropped, the tables are solved
again without it and the cuts that changed are emitted, until every lossy pair left passes.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nscompile.accuracy import AccuracyGate, Tolerance, load_calibration
from nscompile.annotate import annotate, calibration
from nscompile.backend import check_triton_backend, emit, write_plan
from nscompile.cost_model import default_profile_path, load_profile
from nscompile.encoding import DEFAULT_ENCODINGS, LOSSLESS, parse_encodings
from nscompile.errors import NscompileError
from nscompile.frontend import load_model
from nscompile.planner import GridSpec, Plan, plan, replan
from nscompile.report import write_report


@dataclass
class BuildResult:
    """What a build produced and how long each stage took."""

    out_dir: Path
    plan: dict
    timings: dict[str, float] = field(default_factory=dict)
    verification: dict[str, float] | None = None  # lossless cut id -> max |diff|
    accuracy: dict | None = None  # plan.json's accuracy_gate, where lossy encodings were asked for
    notes: list[str] = field(default_factory=list)


def build(model_path, out_dir, *, device_profile=None, cloud_profile=None, objective: str = "latency",
          grid: GridSpec | None = None, input_shapes=None, verify: bool = True, report: bool = True,
          include_all_cloud: bool = False, triton_backend: str = "onnxruntime", encodings=DEFAULT_ENCODINGS,
          calibration_inputs=None, tolerance: Tolerance | None = None,
          on_stage: Callable[[str], None] | None = None) -> BuildResult:
    """Compile ``model_path`` into split artifacts under ``out_dir``.

    Args:
        model_path: the ONNX model.
        out_dir: the build directory to create (an existing nscompile build there is replaced).
        device_profile, cloud_profile: profile JSON paths; default: the shipped ones.
        objective: "latency" or "energy", the table written as plan.json's ``table``.
        grid: buckets and conditions; default ``GridSpec.parse()`` (0.1..1000 Mbps x 32, loads 1,2,4,8).
        input_shapes: ``{input name: shape}`` pinning dynamic dimensions.
        verify: run every emitted pair against the whole model.
        include_all_cloud: emit the all-cloud cut even if no bucket selects it.
        triton_backend: how Triton runs the suffixes in ``cloud/``: "onnxruntime" (its
            onnxruntime backend) or "python" (its Python backend, ``1/model.py`` beside ``model.onnx``).
        report: write ``report.html`` (``layers.json``, which ``inspect`` reads, is always written).
        encodings: cut-tensor encodings to consider (a comma string or names; ``fp32`` among them).
        calibration_inputs: a directory or ``.npz`` of real inputs for the accuracy gate of
            lossy pairs; None: the verification's random inputs (plan.json says so).
        tolerance: what a lossy pair may change (default: relative L2 1e-2, top-1 0.99).
        on_stage: called with each stage's name as it starts (for progress display).

    Returns:
        The build result with the plan document and per-stage timings.

    Raises:
        NscompileError: any problem with the inputs; nothing is left on disk then.
    """
    stage = on_stage or (lambda name: None)
    out_dir = Path(out_dir)
    check_triton_backend(triton_backend)
    _check_target(out_dir)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    stage("load")
    encodings = parse_encodings(encodings)
    tolerance = tolerance or Tolerance()
    device = load_profile(device_profile or default_profile_path("device"))
    cloud = load_profile(cloud_profile or default_profile_path("server"))
    model = load_model(model_path, input_shapes)
    # Read now: a calibration that does not fit the model fails before anything is written.
    gate_inputs = load_calibration(model, calibration_inputs) if calibration_inputs is not None else None
    # The whole model's reference run needs only the loaded model: started here (and
    # counted in "load"), it overlaps annotation, planning and emission.
    with _start_verifier(model) if verify else contextlib.nullcontext() as verifier:
        lap("load")
        stage("annotate")
        annotation = annotate(model, device, cloud)
        lap("annotate")
        stage("partition")
        solved = plan(model, annotation, grid or GridSpec.parse(), objective, include_all_cloud, encodings)
        lap("partition")
        stage("emit")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            profiles = {side: {"name": prof.name, "sha256": prof.sha256, "calibrated": calibration(model, prof) is not None}
                        for side, prof in (("device", device), ("cloud", cloud))}
            doc = emit(model, solved, staging, profiles, triton_backend)
            lap("emit")
            if any(e != LOSSLESS for e in encodings):
                stage("accuracy")
                gate = AccuracyGate(model, tolerance, gate_inputs)
                solved, doc = _accuracy_gate(model, annotation, solved, doc, staging, profiles, gate, triton_backend)
                lap("accuracy")
            verification = None
            if verifier is not None:
                stage("verify")
                verification = verifier.check(staging, doc)
                lap("verify")
            stage("report")
            write_report(staging, model, annotation, doc, html_page=report)
            lap("report")
            _move_into_place(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return BuildResult(out_dir=out_dir, plan=doc, timings=timings, verification=verification,
                       accuracy=doc.get("accuracy_gate"), notes=list(solved.stats.get("notes", [])))


def _accuracy_gate(model, annotation, solved: Plan, doc: dict, staging: Path, profiles: dict,
                   gate: AccuracyGate, triton_backend: str) -> tuple[Plan, dict]:
    """Measure every lossy pair; drop those beyond the tolerance, solve again and emit the changes until all pass.

    Each pair is measured once (results are kept by device set and encoding), and each
    round drops at least one candidate, so this ends.
    """
    measured: dict[tuple[bytes, str], dict] = {}
    dropped = []
    while True:
        failing = []
        for cut, entry in zip(solved.cuts, doc["cuts"]):
            if cut.is_lossy:
                key = (cut.device.tobytes(), cut.encoding)
                if key not in measured:
                    measured[key] = gate.measure(staging, entry)
                if not measured[key]["passed"]:
                    failing.append(cut.id)
                    dropped.append({"cut": cut.id, "violations": measured[key]["violations"]})
        if not failing:
            break
        previous = (solved, doc)
        solved = replan(model, annotation, solved, failing)
        doc = emit(model, solved, staging, profiles, triton_backend, previous)
    for cut, entry in zip(solved.cuts, doc["cuts"]):
        if cut.is_lossy:
            entry["accuracy"] = measured[(cut.device.tobytes(), cut.encoding)]
    inputs = gate.prepared_inputs
    doc["accuracy_gate"] = {
        "encodings": list(solved.encodings), "tolerance": gate.tolerance.to_json(),
        "inputs": len(inputs.feeds) if inputs else 0, "source": inputs.source if inputs else None,
        "real_data": inputs.real_data if inputs else None, "measured": len(measured),
        "kept": [c.id for c in solved.cuts if c.is_lossy], "dropped": dropped,
    }
    write_plan(staging, doc)
    return solved, doc



def _start_verifier(model):
    from nscompile.verify import Verifier  # onnxruntime is imported only for a verified build

    return Verifier(model)


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "plan.json").is_file())):
        raise NscompileError(f"output '{out_dir}' exists and is not an nscompile build; pass another -o or remove it")


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Swap the finished build in; an older build at the same place goes only once the new one is there."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{staging.name.rsplit('.', 1)[-1]}")
        out_dir.rename(old)
    staging.chmod(0o755)  # mkdtemp made it private
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
