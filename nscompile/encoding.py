"""Cut-tensor encodings: how the tensors a cut uploads travel, written as plain ONNX ops.

A cut's encoding applies to every float32 tensor the device computed and uploads:

* ``fp32``: as computed (lossless).
* ``fp16``: the prefix ends with ``Cast`` to float16 and the suffix starts with ``Cast``
  back: half the bytes, about three significant digits.
* ``int8``: the prefix ends with ``DynamicQuantizeLinear`` (uint8 values, the scale and
  zero point computed per request on the device from the tensor's range) and the suffix
  starts with ``DequantizeLinear``: a quarter of the bytes plus five. Scale (float32) and
  zero point (uint8) travel as one-element tensors, because Triton serves no scalar
  inputs; ``Reshape`` nodes on both sides convert them.

Integer, bool and other float tensors travel as they are, and so do graph inputs: the
raw input (the all-cloud cut's upload, which ``--input-bytes`` describes) is never
re-encoded. On the wire an encoded tensor ``t`` is ``t@fp16``, or ``t@int8`` with
``t@int8.scale`` and ``t@int8.zero_point``: plain KServe v2 tensors of datatype FP16,
UINT8 and FP32, which ``nscompile serve``, tritonclient and Triton carry unchanged.

This module holds what the planner (bytes and codec times per tensor) and the backend
(the codec nodes) must agree on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from nscompile.errors import NscompileError

ENCODINGS = ("fp32", "fp16", "int8")
DEFAULT_ENCODINGS = ("fp32", "fp16")
LOSSLESS = "fp32"
#: DynamicQuantizeLinear exists from ONNX opset 11 on.
INT8_MIN_OPSET = 11


def parse_encodings(text: str | Iterable[str]) -> tuple[str, ...]:
    """The encodings of ``--encodings fp32,fp16,int8``, in canonical order.

    Args:
        text: a comma list, or names.

    Returns:
        The names, ``fp32`` first (it breaks ties: the lossless pair wins).

    Raises:
        NscompileError: an unknown name, or a list without ``fp32``.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = {str(item).strip().lower() for item in items if str(item).strip()}
    unknown = sorted(names - set(ENCODINGS))
    if unknown:
        raise NscompileError(f"unknown encoding '{unknown[0]}' in --encodings; use a comma list of {', '.join(ENCODINGS)}")
    if LOSSLESS not in names:
        raise NscompileError("--encodings must include fp32, the lossless encoding every lossy cut is checked against "
                             "and falls back to (e.g. --encodings fp32,fp16,int8)")
    return tuple(e for e in ENCODINGS if e in names)


def is_encodable(info) -> bool:
    """Whether a tensor (a :class:`~nscompile.frontend.TensorInfo`) changes form under a lossy encoding."""
    return info.dtype == np.float32 and not info.is_input and not info.is_constant


@dataclass(frozen=True)
class WireTensor:
    """One tensor on the wire: ``source`` (a model tensor) or part of its encoded form."""

    name: str
    source: str
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]
    role: str = "values"  # "values", "scale" or "zero_point"

    @property
    def nbytes(self) -> int:
        """Bytes of the payload."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def wire_layout(model, upload: Sequence[str], encoding: str) -> list[WireTensor]:
    """The tensors a cut sends for its ``upload`` (model tensor names) under ``encoding``.

    Args:
        model: the :class:`~nscompile.frontend.LoadedModel`.
        upload: the model tensors the cut sends, in order.
        encoding: one of :data:`ENCODINGS`.

    Returns:
        The wire tensors in order: each uploaded tensor as it is, or its encoded parts.
    """
    out = []
    for name in upload:
        info = model.tensors[name]
        if encoding == LOSSLESS or not is_encodable(info):
            out.append(WireTensor(name, name, info.dtype.name, tuple(info.shape)))
            continue
        base = _unique_base(model, f"{name}@{encoding}", encoding)
        if encoding == "fp16":
            out.append(WireTensor(base, name, "float16", tuple(info.shape)))
        else:
            out += [WireTensor(base, name, "uint8", tuple(info.shape)),
                    WireTensor(f"{base}.scale", name, "float32", (1,), "scale"),
                    WireTensor(f"{base}.zero_point", name, "uint8", (1,), "zero_point")]
    return out


def _unique_base(model, base: str, encoding: str) -> str:
    # Every name the codec nodes use derives from the base; none may clash with the model's.
    while any(n in model.tensors for n in _derived_names(base, encoding)):
        base += "_"
    return base


def _derived_names(base: str, encoding: str) -> list[str]:
    if encoding == "fp16":
        return [base]
    return [base] + [f"{base}.{part}" for part in ("scale", "zero_point", "scale_scalar", "zero_point_scalar",
                                                    "shape_1", "shape_scalar")]


def encoded_parts(wire: Sequence[WireTensor]) -> dict[str, list[WireTensor]]:
    """The encoded tensors of a wire layout: source name -> its wire parts (unencoded ones left out)."""
    out: dict[str, list[WireTensor]] = {}
    for w in wire:
        if w.name != w.source:
            out.setdefault(w.source, []).append(w)
    return out


# --------------------------------------------------------------------------- ONNX nodes


def encoder(parts: Sequence[WireTensor]):
    """The prefix's nodes that turn ``parts[0].source`` into its wire ``parts``.

    Returns:
        (nodes, initializers) to append to the prefix graph.
    """
    from onnx import TensorProto, helper

    values = parts[0]
    if values.dtype == "float16":
        return [helper.make_node("Cast", [values.source], [values.name], name=f"encode {values.name}",
                                 to=TensorProto.FLOAT16)], []
    base = values.name
    nodes = [helper.make_node("DynamicQuantizeLinear", [values.source],
                              [base, f"{base}.scale_scalar", f"{base}.zero_point_scalar"], name=f"encode {base}"),
             helper.make_node("Reshape", [f"{base}.scale_scalar", f"{base}.shape_1"], [f"{base}.scale"],
                              name=f"encode {base}.scale"),
             helper.make_node("Reshape", [f"{base}.zero_point_scalar", f"{base}.shape_1"], [f"{base}.zero_point"],
                              name=f"encode {base}.zero_point")]
    return nodes, [helper.make_tensor(f"{base}.shape_1", TensorProto.INT64, [1], [1])]


def decoder(parts: Sequence[WireTensor]):
    """The suffix's nodes that rebuild ``parts[0].source`` (float32) from its wire ``parts``.

    Returns:
        (nodes, initializers) to put in front of the suffix graph.
    """
    from onnx import TensorProto, helper

    values = parts[0]
    if values.dtype == "float16":
        return [helper.make_node("Cast", [values.name], [values.source], name=f"decode {values.name}",
                                 to=TensorProto.FLOAT)], []
    base = values.name
    nodes = [helper.make_node("Reshape", [f"{base}.scale", f"{base}.shape_scalar"], [f"{base}.scale_scalar"],
                              name=f"decode {base}.scale"),
             helper.make_node("Reshape", [f"{base}.zero_point", f"{base}.shape_scalar"], [f"{base}.zero_point_scalar"],
                              name=f"decode {base}.zero_point"),
             helper.make_node("DequantizeLinear", [base, f"{base}.scale_scalar", f"{base}.zero_point_scalar"],
                              [values.source], name=f"decode {base}")]
    return nodes, [helper.make_tensor(f"{base}.shape_scalar", TensorProto.INT64, [0], [])]


def _value_info(w: WireTensor):
    from onnx import helper

    return helper.make_tensor_value_info(w.name, helper.np_dtype_to_tensor_dtype(np.dtype(w.dtype)), list(w.shape))


def encode_outputs(graph, wire: Sequence[WireTensor], keep: set[str]) -> None:
    """Make a prefix graph send its cut tensors encoded, in place.

    The codec nodes go after the prefix's nodes; each encoded source among the graph's
    outputs is replaced by its wire tensors (and stays an output too if it is in ``keep``,
    a graph output the device returns itself).
    """
    encoded = encoded_parts(wire)
    outputs = []
    for out in graph.output:
        parts = encoded.get(out.name)
        if parts is None or out.name in keep:
            outputs.append(out)
        if parts is not None:
            nodes, inits = encoder(parts)
            graph.node.extend(nodes)
            graph.initializer.extend(inits)
            outputs += [_value_info(w) for w in parts]
    del graph.output[:]
    graph.output.extend(outputs)


def decode_inputs(graph, wire: Sequence[WireTensor]) -> None:
    """Make a suffix graph take the wire tensors and decode them first, in place."""
    encoded = encoded_parts(wire)
    inputs, first, inits = [], [], []
    for inp in graph.input:
        parts = encoded.get(inp.name)
        if parts is None:
            inputs.append(inp)
            continue
        nodes, consts = decoder(parts)
        first += nodes
        inits += consts
        inputs += [_value_info(w) for w in parts]
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(first + rest)
    graph.initializer.extend(inits)
    del graph.input[:]
    graph.input.extend(inputs)


# --------------------------------------------------------------------------- costs


@dataclass(frozen=True)
class Codec:
    """What an encoding costs per tensor of a cut graph (see :func:`codec_costs`).

    Attributes:
        encoding: the encoding.
        encodable: bool[T], the tensor changes form.
        wire_bytes: float[T], bytes on the wire (the plain size where not encodable).
        device_ms: float[T], encoding it on the device, binding the extra outputs included.
        cloud_ms: float[T], decoding it on the idle server, binding the extra inputs included.
    """

    encoding: str
    encodable: np.ndarray
    wire_bytes: np.ndarray
    device_ms: np.ndarray
    cloud_ms: np.ndarray


def codec_costs(model, ann, names: Sequence[str], wire: np.ndarray, encoding: str) -> Codec:
    """Bytes and predicted codec times of every tensor of a cut graph under a lossy encoding.

    The times come from the profiles' regressions for the codec ops (``Cast``,
    ``DynamicQuantizeLinear``, ``DequantizeLinear``, ``Reshape``) evaluated on the very
    nodes the backend emits; a profile measured before those ops were in the sweep
    predicts them with its fallback regression (bytes moved).

    Args:
        model: the loaded model.
        ann: its :class:`~nscompile.annotate.Annotation` (carries both profiles).
        names: the cut graph's tensor names (:func:`nscompile.planner.cut_graph`).
        wire: bytes per tensor as the plain cut sends them (``--input-bytes`` applied).
        encoding: "fp16" or "int8".

    Returns:
        The :class:`Codec`.
    """
    from onnx import helper

    from nscompile.features import graph_features

    n = len(names)
    encodable = np.array([is_encodable(model.tensors[t]) for t in names], dtype=bool)
    wire_bytes = np.asarray(wire, dtype=np.float64).copy()
    device_ms, cloud_ms = np.zeros(n), np.zeros(n)
    if not encodable.any():
        return Codec(encoding, encodable, wire_bytes, device_ms, cloud_ms)
    index = np.flatnonzero(encodable)
    layouts = [wire_layout(model, [names[i]], encoding) for i in index]
    for i, parts in zip(index, layouts):
        wire_bytes[i] = sum(w.nbytes for w in parts)
    extra = len(layouts[0]) - 1  # tensors bound beyond the one a plain cut sends
    for side, build, out, profile in (("device", encoder, device_ms, ann.device), ("cloud", decoder, cloud_ms, ann.cloud)):
        nodes, owner, consts, shapes = [], [], set(), {}
        for i, parts in zip(index, layouts):
            made, inits = build(parts)
            nodes += made
            owner += [i] * len(made)
            consts.update(t.name for t in inits)
            shapes.update(_codec_shapes(model, parts, inits))
        graph = helper.make_graph(nodes, f"codec_{encoding}_{side}", [], [])
        for i, f in zip(owner, graph_features(graph, shapes, consts, profile.nchwc_block)):
            out[i] += profile.predict_ms(f)
        binding = profile.fixed_ms(1, 1 + extra) if side == "device" else profile.fixed_ms(1 + extra, 1)
        out[index] += binding - profile.fixed_ms(1, 1)
    return Codec(encoding, encodable, wire_bytes, device_ms, cloud_ms)


def _codec_shapes(model, parts: Sequence[WireTensor], inits) -> dict:
    src = model.tensors[parts[0].source]
    shapes = {src.name: (tuple(src.shape), src.dtype)}
    for w in parts:
        shapes[w.name] = (w.shape, np.dtype(w.dtype))
        if w.role != "values":
            shapes[f"{parts[0].name}.{w.role}_scalar"] = ((), np.dtype(w.dtype))
    for t in inits:
        shapes[t.name] = (tuple(t.dims), np.dtype(np.int64))
    return shapes
