"""Backend: write the chosen cuts as ONNX prefix/suffix models, plan.json and a Triton repository.

``device/weights.bin`` holds every stored initializer once and all prefixes point into it
(ONNX external data with offsets), so a device keeps each weight once. Each suffix gets
its own ``1/model.onnx.data`` with only the weights it uses, so every Triton model
directory is self-contained. (Hard links to one file would save the copies, but onnx
refuses to load external data with several links, a guard against link attacks.)
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from nscompile import __version__
from nscompile.encoding import ENCODINGS, WireTensor, decode_inputs, encode_outputs, wire_layout
from nscompile.errors import InternalError, NscompileError
from nscompile.frontend import LoadedModel
from nscompile.planner import CutChoice, Plan, prefix_io
from nscompile.runtime.contract import MODEL_SHA_METADATA, MODEL_SHA_PARAMETER, PLAN_SCHEMA, WEIGHTS_FILE

#: How Triton runs a suffix: its onnxruntime backend, or the Python backend running
#: nscompile/serve/triton_python_model.py (copied to 1/model.py) with onnxruntime.
TRITON_BACKENDS = ("onnxruntime", "python")
_PYTHON_MODEL = resources.files("nscompile.serve") / "triton_python_model.py"
_ALIGN = 64  # keeps every tensor SIMD-aligned when a runtime maps the file

_TRITON_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
    "int32": "TYPE_INT32", "int16": "TYPE_INT16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64", "bool": "TYPE_BOOL",
}


def weights_layout(model: LoadedModel, names: set[str] | None = None) -> dict[str, tuple[int, int]]:
    """Where :func:`write_weights` puts each stored initializer (all, or those in ``names``): name -> (offset, length)."""
    offsets, position = {}, 0
    for tensor in model.model.graph.initializer:
        array = model.weights.arrays.get(tensor.name)
        if array is None or (names is not None and tensor.name not in names):
            continue
        position += -position % _ALIGN
        offsets[tensor.name] = (position, array.nbytes)
        position += array.nbytes
    return offsets


def write_weights(model: LoadedModel, path: Path, names: set[str] | None = None) -> dict[str, tuple[int, int]]:
    """Write the stored initializers (all, or those in ``names``) aligned; return name -> (offset, length)."""
    offsets = weights_layout(model, names)
    with open(path, "wb") as out:
        for name, (offset, _) in offsets.items():
            out.write(b"\0" * (offset - out.tell()))
            array = model.weights.arrays[name]
            data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
            out.write(memoryview(data).cast("B"))
    return offsets


def _initializer(tensor: TensorProto, offsets: dict[str, tuple[int, int]], location: str) -> TensorProto:
    if tensor.name not in offsets:
        return tensor  # small: stays inline
    ref = TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                      data_location=TensorProto.EXTERNAL)
    offset, length = offsets[tensor.name]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = ref.external_data.add()
        entry.key, entry.value = key, value
    return ref


def submodel(model: LoadedModel, node_mask: np.ndarray, inputs: list[str], outputs: list[str],
             offsets: dict[str, tuple[int, int]], location: str, name: str, cut_id: str, role: str) -> onnx.ModelProto:
    """The subgraph of ``model`` made of the masked nodes, with the given boundary tensors.

    Initializers point into the shared weights file ``location`` (relative to the model file).
    """
    graph = model.model.graph
    nodes = [n for n, keep in zip(graph.node, node_mask) if keep]
    used = {i for n in nodes for i in n.input}
    produced = {o for n in nodes for o in n.output}
    initializers = [_initializer(t, offsets, location) for t in graph.initializer if t.name in used]
    value_info = [v for v in graph.value_info if v.name in produced and v.name not in outputs]
    sub = helper.make_graph(nodes, name, [_value(model, i) for i in inputs], [_value(model, o) for o in outputs],
                            initializer=initializers, value_info=value_info)
    out = helper.make_model(sub, opset_imports=model.model.opset_import, ir_version=model.model.ir_version,
                            producer_name="nscompile", producer_version=__version__)
    helper.set_model_props(out, {MODEL_SHA_METADATA: model.sha256, "nscompile.cut": cut_id, "nscompile.role": role})
    return out


def _value(model: LoadedModel, name: str) -> onnx.ValueInfoProto:
    info = model.tensors[name]
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(info.dtype), list(info.shape))


def check_triton_backend(backend: str) -> None:
    """Refuse a Triton backend nscompile cannot emit.

    Raises:
        NscompileError: ``backend`` is not one of :data:`TRITON_BACKENDS`.
    """
    if backend not in TRITON_BACKENDS:
        raise NscompileError(f"--triton-backend {backend!r} is not known; use one of {', '.join(TRITON_BACKENDS)}")


def triton_config(model: LoadedModel, name: str, inputs: list[str], outputs: list[str],
                  wire: list[WireTensor] | None = None, backend: str = "onnxruntime") -> str:
    """A Triton ``config.pbtxt`` for a suffix: names, dtypes and dims match its ONNX file.

    Args:
        model: the loaded model (tensor dtypes and shapes).
        name: the Triton model name (its directory's name).
        inputs: the suffix's input tensor names, in order.
        outputs: its output tensor names, in order.
        wire: the inputs that are encoded forms of model tensors (their names are not the model's).
        backend: "onnxruntime" (``platform: "onnxruntime_onnx"``) or "python" (``backend:
            "python"``, running ``1/model.py``).

    Returns:
        The config in protobuf text format.
    """
    specs = {w.name: (w.dtype, w.shape) for w in wire or []}

    def block(kind: str, names: list[str]) -> str:
        items = []
        for n in names:
            dtype, shape = specs[n] if n in specs else (model.tensors[n].dtype.name, model.tensors[n].shape)
            items.append(f'  {{\n    name: "{n}"\n    data_type: {_TRITON_TYPES.get(dtype, "TYPE_STRING")}\n'
                         f'    dims: [ {", ".join(str(d) for d in shape)} ]\n  }}')
        return f"{kind} [\n" + ",\n".join(items) + "\n]\n"

    engine = 'platform: "onnxruntime_onnx"' if backend == "onnxruntime" else f'backend: "{backend}"'
    return (f'name: "{name}"\n{engine}\nmax_batch_size: 0\n' + block("input", inputs) + block("output", outputs)
            + f'parameters {{\n  key: "{MODEL_SHA_PARAMETER}"\n  value {{ string_value: "{model.sha256}" }}\n}}\n')


def emit(model: LoadedModel, plan: Plan, out_dir: Path, profiles: dict, triton_backend: str = "onnxruntime",
         previous: tuple[Plan, dict] | None = None) -> dict:
    """Write prefixes, suffixes, the Triton repository and plan.json into ``out_dir``.

    Args:
        model: the loaded model.
        plan: the solved plan whose cuts are emitted (all-device included).
        out_dir: an empty directory (the caller renames it into place when all is well).
        profiles: ``{"device": {"name", "sha256"}, "cloud": {...}}`` for plan.json.
        triton_backend: how Triton runs the suffixes, one of :data:`TRITON_BACKENDS`.
        previous: a plan and its document already emitted into ``out_dir`` (the accuracy
            gate solved again without some lossy cuts): the cuts both plans have, same id,
            device set and encoding, stay as written; the others are written or deleted.

    Returns:
        The plan document as written to ``plan.json``.
    """
    device_dir, cloud_dir = out_dir / "device", out_dir / "cloud"
    names = [artifact_name(c.id) for c in plan.cuts]
    if len(set(names)) != len(names):
        raise InternalError(f"two cuts share an artifact name among {names}; this is a compiler bug, please report it")
    kept: dict[tuple, dict] = {}
    if previous is None:
        device_dir.mkdir(parents=True)
        cloud_dir.mkdir()
        offsets = write_weights(model, device_dir / WEIGHTS_FILE)
    else:
        offsets = weights_layout(model)
        wanted = {_identity(c) for c in plan.cuts}
        for cut, entry in zip(previous[0].cuts, previous[1]["cuts"]):
            if _identity(cut) in wanted:
                kept[_identity(cut)] = entry
            else:
                _remove_cut(out_dir, entry)
    cut_docs = [kept.get(_identity(cut)) or _emit_cut(model, cut, offsets, device_dir, cloud_dir, triton_backend)
                for cut in plan.cuts]
    doc = plan_document(model, plan, cut_docs, profiles)
    write_plan(out_dir, doc)
    return doc


def _identity(cut: CutChoice) -> tuple:
    return cut.id, cut.device.tobytes(), cut.encoding


def _remove_cut(out_dir: Path, entry: dict) -> None:
    if entry["prefix"]:
        (out_dir / entry["prefix"]).unlink()
    if entry["cloud_model"]:
        shutil.rmtree(out_dir / "cloud" / entry["cloud_model"])


def write_plan(out_dir: Path, doc: dict) -> None:
    """Write ``doc`` as the build's ``plan.json`` and the device's copy (again after the accuracy gate added to it)."""
    text = json.dumps(doc, indent=1)
    (out_dir / "plan.json").write_text(text)
    (out_dir / "device" / "plan.json").write_text(text)


def artifact_name(cut_id: str) -> str:
    """A cut id as it appears in file and Triton model names: ``pool5@int8`` -> ``pool5-int8``.

    Triton cannot serve a model whose name holds '@': tritonclient sends it percent-encoded
    in the URL and Triton does not decode it (404). Cut ids are made of [A-Za-z0-9_.-] and '@'.
    """
    return cut_id.replace("@", "-")


def _emit_cut(model: LoadedModel, cut: CutChoice, offsets, device_dir: Path, cloud_dir: Path, triton_backend: str) -> dict:
    prefix = suffix = cloud_model = None
    name = artifact_name(cut.id)
    sent = cut.upload
    if not cut.is_all_cloud:
        inputs, outputs = prefix_io(model, cut.device, sent, cut.device_outputs)
        sub = submodel(model, cut.device, inputs, outputs, offsets, WEIGHTS_FILE, f"{model.name}_prefix_{name}", cut.id, "prefix")
        if cut.is_lossy:
            encode_outputs(sub.graph, cut.wire, keep=set(cut.device_outputs))
        prefix = f"device/prefix_{name}.onnx"
        onnx.save(sub, device_dir / f"prefix_{name}.onnx")
    if not cut.is_all_device:
        cloud_model = f"{model.name}_suffix_{name}"
        version_dir = cloud_dir / cloud_model / "1"
        version_dir.mkdir(parents=True)
        used = {i for node, on_device in zip(model.nodes, cut.device) if not on_device for i in node.input}
        stored = used & model.weights.arrays.keys()
        suffix_offsets = write_weights(model, version_dir / "model.onnx.data", stored) if stored else {}
        sub = submodel(model, ~cut.device, sent, cut.download, suffix_offsets, "model.onnx.data", cloud_model, cut.id, "suffix")
        if cut.is_lossy:
            decode_inputs(sub.graph, cut.wire)
        onnx.save(sub, version_dir / "model.onnx")
        config = triton_config(model, cloud_model, [w.name for w in cut.wire], cut.download, cut.wire, triton_backend)
        (cloud_dir / cloud_model / "config.pbtxt").write_text(config)
        if triton_backend == "python":
            (version_dir / "model.py").write_text(_PYTHON_MODEL.read_text())
        suffix = f"cloud/{cloud_model}/1/model.onnx"
    return {
        "id": cut.id,
        "device_nodes": int(cut.device.sum()),
        "encoding": cut.encoding,
        "tensors": [{"name": w.name, "shape": list(w.shape), "dtype": w.dtype, "bytes": w.nbytes, "source": w.source}
                    for w in cut.wire],
        # What the same tensors take under every encoding (graph inputs always travel as they are).
        "upload_bytes_by_encoding": {e: sum(w.nbytes for w in wire_layout(model, sent, e)) for e in ENCODINGS},
        "device_outputs": cut.device_outputs,
        "prefix": prefix,
        "suffix": suffix,
        "cloud_model": cloud_model,
        "accuracy": None,  # a lossy cut's accuracy-gate figures (nscompile.accuracy), filled in after emission
        "predicted": {"device_ms": round(cut.device_ms, 4), "cloud_ms": round(cut.cloud_ms, 4),
                      "upload_bytes": cut.upload_bytes, "download_bytes": cut.download_bytes,
                      "device_compute_mj": round(cut.device_compute_mj, 4)},
    }


def _tensor_doc(model: LoadedModel, name: str) -> dict:
    info = model.tensors[name]
    return {"name": name, "shape": list(info.shape), "dtype": info.dtype.name, "bytes": info.nbytes}


def plan_document(model: LoadedModel, plan: Plan, cut_docs: list[dict], profiles: dict) -> dict:
    """The ``plan.json`` document (schema ``nscompile.plan/1``, see DESIGN.md)."""
    grid = plan.grid
    return {
        "schema": PLAN_SCHEMA,
        "generator": f"nscompile {__version__}",
        "model": {"name": model.name, "sha256": model.sha256,
                  "inputs": [_tensor_doc(model, i) for i in model.inputs],
                  "outputs": [_tensor_doc(model, o) for o in model.outputs]},
        "profiles": profiles,
        "weights": f"device/{WEIGHTS_FILE}",
        "cuts": cut_docs,
        "fallback": plan.fallback,
        "grid": {"objective": plan.objective, "bandwidth_mbps": [round(b, 6) for b in grid.bandwidth_mbps],
                 "load": list(grid.load), "device_load": list(grid.device_load), "rtt_ms": grid.rtt_ms,
                 "downlink_mbps": grid.downlink_mbps,
                 "radio": grid.radio, "input_bytes": grid.input_bytes},
        "table": plan.tables[plan.objective],
        "tables": plan.tables,
        "mixed": plan.mixed,
        "breakpoints": {o: [[{"from_mbps": b, "cut": c} for b, c in row] for row in rows]
                        for o, rows in plan.breakpoints.items()},
        # Every device level, outermost (grid.device_load); the keys above are the slice at device load 1.
        "device_tables": plan.device_tables,
        "device_breakpoints": {o: [[[{"from_mbps": b, "cut": c} for b, c in row] for row in rows] for rows in levels]
                               for o, levels in plan.device_breakpoints.items()},
        # What the runtime needs to predict a cut's device energy where it is (Cut.energy_mj).
        "energy_model": plan.energy_model,
        # The latency-energy fronts: each distinct one once (cut ids, fastest first), and per
        # [device level][load][bucket] the number of that condition's front.
        "pareto": {"fronts": plan.pareto_fronts, "index": plan.pareto_index},
    }

