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
from nscompile.encoding import ENCODINGS, LOSSLESS, WireTensor, codec_costs, decode_inputs, encode_outputs, wire_layout
from nscompile.errors import InternalError, NscompileError
from nscompile.frontend import LoadedModel
from nscompile.partition import upload_set
from nscompile.planner import CutChoice, Plan, _describe_cuts, cut_graph, prefix_io, tensor_wire_bytes, usable_encodings
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


def _emit_cut(model: LoadedModel, cut: CutChoice, offsets, device_dir: Path, cloud_dir: Path, triton_backend: str,
              link_weights: bool = False) -> dict:
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
        suffix_offsets = {}
        if stored and link_weights:
            suffix_offsets = _link_weights(device_dir / WEIGHTS_FILE, version_dir / "model.onnx.data", offsets)
        if stored and not suffix_offsets:
            suffix_offsets = write_weights(model, version_dir / "model.onnx.data", stored)
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


class CutRejected(NscompileError):
    """A lossy pair that :class:`CutEmitter` measured beyond the accuracy tolerance (its files are removed).

    Attributes:
        cut_id: the pair's id.
        accuracy: the gate's figures (``cuts[].accuracy``), ``violations`` among them.
    """

    def __init__(self, cut_id: str, accuracy: dict):
        super().__init__(f"cut '{cut_id}' is beyond the accuracy tolerance ({'; '.join(accuracy['violations'])}); "
                         "emit it lossless (fp32) or pass a looser tolerance")
        self.cut_id, self.accuracy = cut_id, accuracy


class CutEmitter:
    """Emits any closed device set of a model, under any encoding the model allows, into a build directory.

    :func:`emit` writes the cuts the planner selects; this writes any other (device set,
    encoding) pair the same way (the same prefix, suffix, Triton config and ``plan.json``
    cut entry), for example every layer boundary that a benchmark's oracle times. Each
    pair is checked as the build checks its own before it is returned: a lossless pair
    against the whole model with :class:`nscompile.verify.Verifier` (tight tolerance), a
    lossy one with :class:`nscompile.accuracy.AccuracyGate`. A pair that fails leaves no
    file behind. ``plan.json`` is not touched: the caller adds the entries it keeps
    (see :func:`write_plan`).

    Args:
        model: the loaded model.
        annotation: its annotation (the entries' ``predicted`` figures come from it).
        build_dir: a build directory (its ``device/weights.bin`` is reused; ids and
            artifact names of its ``plan.json`` are taken), or an empty or missing one
            (``device/``, ``cloud/`` and the weights file are made).
        input_bytes: upload size of the raw model input, as the build's ``--input-bytes``.
        triton_backend: how Triton runs the suffixes, one of :data:`TRITON_BACKENDS`.
        tolerance: what a lossy pair may change (default: the build's, relative L2 1e-2, top-1 0.99).
        calibration: real inputs for the accuracy gate (:func:`nscompile.accuracy.load_calibration`);
            None: the verification's random inputs.
        link_weights: each suffix's weights file is a hard link to ``device/weights.bin``
            instead of a copy of what it uses (a hundred suffixes of VGG-19 would copy
            50 GB); only onnxruntime-based servers read such a repository.

    Use it as a context manager: leaving waits for the verification's runs.
    """

    def __init__(self, model: LoadedModel, annotation, build_dir: Path, *, input_bytes: int | None = None,
                 triton_backend: str = "onnxruntime", tolerance=None, calibration=None, link_weights: bool = False):
        from nscompile.accuracy import AccuracyGate, Tolerance
        from nscompile.verify import Verifier

        check_triton_backend(triton_backend)
        self.model, self.annotation, self.build_dir = model, annotation, Path(build_dir)
        self.triton_backend, self.link_weights = triton_backend, link_weights
        self.graph, self.names = cut_graph(model)
        self.wire = tensor_wire_bytes(model, self.names, input_bytes)
        self.encodings, _ = usable_encodings(model, ENCODINGS)
        self._codecs: dict = {}
        self.device_dir, self.cloud_dir = self.build_dir / "device", self.build_dir / "cloud"
        weights = self.device_dir / WEIGHTS_FILE
        if weights.is_file():
            self.offsets = weights_layout(model)
        else:
            self.device_dir.mkdir(parents=True, exist_ok=True)
            self.offsets = write_weights(model, weights)
        self.cloud_dir.mkdir(exist_ok=True)
        plan_path = self.build_dir / "plan.json"
        existing = json.loads(plan_path.read_text())["cuts"] if plan_path.is_file() else []
        self.taken = {c["id"] for c in existing}
        self._set_names: dict[bytes, str] = {}  # device set -> its id's base, shared by its encodings
        self._verifier = Verifier(model)
        self._gate = AccuracyGate(model, tolerance or Tolerance(), calibration)

    def emit(self, device_mask, encoding: str = LOSSLESS, cut_id: str | None = None) -> dict:
        """Write and check the pair running ``device_mask`` on the device, its upload under ``encoding``.

        Args:
            device_mask: bool per node of ``model.nodes`` (topological order): the device set.
            encoding: ``fp32``, ``fp16`` or ``int8`` (:mod:`nscompile.encoding`).
            cut_id: the id to give it; default: named after the layer it cuts behind, as
                the planner names cuts (``pool5``, ``pool5@int8``), made unique.

        Returns:
            The cut's ``plan.json`` entry (paths relative to ``build_dir``); a lossy one
            with its ``accuracy`` figures.

        Raises:
            NscompileError: a mask of the wrong length or not closed under producers, an
                encoding the model cannot use or that changes nothing for this set, an id
                already taken, a lossless pair that differs from the whole model.
            CutRejected: a lossy pair beyond the accuracy tolerance.
        """
        entry = self._write(device_mask, encoding, cut_id)
        return self._checked(entry)

    def emit_all(self, pairs) -> list:
        """:meth:`emit` for many (device mask, encoding) pairs, their checks run side by side.

        Every pair is written first; the checks then share the verifier's two workers (a
        lossless pair) or a pool of two (a lossy pair's accuracy gate), which on two cores
        takes about half the time of one after the other.

        Returns:
            Per pair, in order, its entry or the :class:`NscompileError` it raised (a
            :class:`CutRejected` for a lossy pair beyond the tolerance); files of a failed
            pair are removed.
        """
        from concurrent.futures import ThreadPoolExecutor

        written = []
        for mask, encoding in pairs:
            try:
                written.append(self._write(mask, encoding, None))
            except NscompileError as exc:
                written.append(exc)
        if any(isinstance(e, dict) and e["encoding"] != LOSSLESS for e in written):
            self._gate.reference()  # the whole model's outputs once, before the workers share them
        with ThreadPoolExecutor(2, thread_name_prefix="nscompile-emit") as pool:
            checks = [pool.submit(self._checked, e) if isinstance(e, dict) else None for e in written]
            out = []
            for e, check in zip(written, checks):
                if check is None:
                    out.append(e)
                    continue
                try:
                    out.append(check.result())
                except NscompileError as exc:
                    out.append(exc)
        return out

    def _write(self, device_mask, encoding: str, cut_id: str | None) -> dict:
        """Check the request, name the pair and write its files; its entry (not yet verified)."""
        mask = self._checked_mask(device_mask)
        if encoding not in self.encodings:
            raise NscompileError(f"encoding '{encoding}' is not usable for {self.model.name}; use one of {', '.join(self.encodings)}")
        codecs = {}
        if encoding != LOSSLESS:
            codec = self._codecs.get(encoding) or codec_costs(self.model, self.annotation, self.names, self.wire, encoding)
            self._codecs[encoding] = codecs[encoding] = codec
            if not codec.encodable[upload_set(self.graph, mask)].any():
                raise NscompileError(f"this device set uploads no float32 tensor computed on the device, so {encoding} "
                                     "changes nothing on the wire; emit it as fp32")
        cut = _describe_cuts(self.model, self.annotation, self.graph, self.names, self.wire, [mask], [encoding], codecs)[0]
        cut.id = self._name(mask, cut.id, encoding, cut_id)
        entry = _emit_cut(self.model, cut, self.offsets, self.device_dir, self.cloud_dir, self.triton_backend, self.link_weights)
        self.taken.add(cut.id)
        return entry

    def _checked(self, entry: dict) -> dict:
        """Verify a written pair (lossless) or measure it (lossy); remove its files if it fails."""
        try:
            if entry["encoding"] == LOSSLESS:
                self._verifier.check(self.build_dir, {"cuts": [entry]})
            else:
                entry["accuracy"] = self._gate.measure(self.build_dir, entry)
                if not entry["accuracy"]["passed"]:
                    raise CutRejected(entry["id"], entry["accuracy"])
        except BaseException:
            _remove_cut(self.build_dir, entry)
            self.taken.discard(entry["id"])
            raise
        return entry

    def _checked_mask(self, device_mask) -> np.ndarray:
        mask = np.asarray(device_mask)
        n = len(self.model.nodes)
        if mask.shape != (n,):
            raise NscompileError(f"device set has shape {mask.shape}, but {self.model.name} has {n} nodes; "
                                 "pass one bool per node of model.nodes")
        mask = mask.astype(bool)
        nodes = self.model.nodes
        for i in np.flatnonzero(mask):
            for t in nodes[i].input:
                info = self.model.tensors.get(t)
                if info is not None and info.producer >= 0 and not mask[info.producer]:
                    raise NscompileError(
                        f"device set is not closed under producers: node '{nodes[i].name}' is in it but "
                        f"'{nodes[info.producer].name}', which makes its input '{t}', is not; add "
                        f"'{nodes[info.producer].name}' to the set or leave '{nodes[i].name}' out")
        return mask

    def _name(self, mask: np.ndarray, described: str, encoding: str, cut_id: str | None) -> str:
        """The pair's id: ``cut_id``, or the described name made unique, sharing one base per device set."""
        suffix = "" if encoding == LOSSLESS else f"@{encoding}"
        if cut_id is not None:
            ident = cut_id
        else:
            key = mask.tobytes()
            base = self._set_names.get(key)
            if base is None:
                stem = described.removesuffix(suffix)
                base, k = stem, 2
                while any(b == base for b in self._set_names.values()) or base in self.taken or f"{base}{suffix}" in self.taken:
                    base, k = f"{stem}_{k}", k + 1
                self._set_names[key] = base
            ident = base + suffix
        taken_names = {artifact_name(t) for t in self.taken}
        if ident in self.taken or artifact_name(ident) in taken_names:
            why = ("this device set was emitted under this encoding already" if cut_id is None
                   else f"it is taken in {self.build_dir / 'plan.json'} or by an earlier pair")
            raise NscompileError(f"cut id '{ident}' cannot be used: {why}; pass another cut_id")
        return ident

    def close(self) -> None:
        """Wait for the verification's runs in flight."""
        self._verifier.__exit__(None, None, None)

    def __enter__(self) -> CutEmitter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def emit_cut(model: LoadedModel, annotation, device_mask, encoding: str, out_dir: Path, **options) -> dict:
    """Emit one closed device set as a verified prefix/suffix pair into ``out_dir`` (see :class:`CutEmitter`).

    Args:
        model: the loaded model.
        annotation: its annotation.
        device_mask: bool per node: the device set.
        encoding: how its upload travels (``fp32``, ``fp16``, ``int8``).
        out_dir: a build directory, or an empty or missing one.
        **options: :class:`CutEmitter`'s keyword arguments (``cut_id`` too).

    Returns:
        The cut's ``plan.json`` entry.

    Raises:
        NscompileError: see :meth:`CutEmitter.emit`.
    """
    cut_id = options.pop("cut_id", None)
    with CutEmitter(model, annotation, out_dir, **options) as emitter:
        return emitter.emit(device_mask, encoding, cut_id)


def _link_weights(shared: Path, target: Path, offsets: dict) -> dict:
    """Make ``target`` a hard link to the shared weights file; its offsets, or {} where links cannot be made.

    onnxruntime (and so Triton's onnxruntime backend and ``nscompile serve``) reads linked
    external data; the onnx package refuses to (a guard against link attacks), which is
    why the build's own suffixes get copies.
    """
    try:
        target.hardlink_to(shared)
    except OSError:
        return {}
    return offsets


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

