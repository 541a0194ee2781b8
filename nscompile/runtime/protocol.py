"""KServe v2 / Open Inference Protocol messages with Triton's binary tensor extension.

Both sides of the wire use this module: the device's :class:`~nscompile.runtime.SplitRunner`
and ``nscompile serve``. It needs numpy only.

An infer request or response body is a JSON header followed by the raw little-endian bytes
of each tensor, in the order the header lists them; the HTTP header
``Inference-Header-Content-Length`` gives the JSON header's length and each tensor's
``parameters.binary_data_size`` its byte count. Plain JSON bodies (``"data": [...]``) are
read too, because the protocol allows them, but never written by nscompile.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

from nscompile.errors import NscompileError

HEADER_LENGTH = "Inference-Header-Content-Length"

#: v2 datatype name -> numpy dtype (little-endian). BYTES and BF16 have no fixed-size
#: numpy equivalent and are refused.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
NUMPY_TO_V2: dict[str, str] = {dt.name: name for name, dt in V2_TO_NUMPY.items()}

#: onnxruntime's type strings ("tensor(float)") -> v2 datatype.
ORT_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


class ProtocolError(NscompileError):
    """A message that does not follow the protocol, or does not fit the model.

    ``status`` is the HTTP status the server answers with (always a 4xx).
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def v2_datatype(dtype: np.dtype | str) -> str:
    """Return the v2 datatype name for a numpy dtype or dtype name.

    Args:
        dtype: a numpy dtype, or its name ("float32").

    Returns:
        The v2 name ("FP32").

    Raises:
        ProtocolError: the dtype has no fixed-size v2 equivalent.
    """
    name = np.dtype(dtype).name
    try:
        return NUMPY_TO_V2[name]
    except KeyError:
        raise ProtocolError(
            f"dtype {name!r} cannot travel as a binary tensor; use one of "
            f"{', '.join(sorted(NUMPY_TO_V2))}"
        ) from None


def numpy_dtype(datatype: str) -> np.dtype:
    """Return the numpy dtype for a v2 datatype name.

    Raises:
        ProtocolError: unknown or unsupported datatype (BYTES, BF16).
    """
    try:
        return V2_TO_NUMPY[datatype]
    except (KeyError, TypeError):
        raise ProtocolError(
            f"datatype {datatype!r} is not supported; use one of {', '.join(V2_TO_NUMPY)}"
        ) from None


def _raw(array: np.ndarray) -> memoryview:
    """A byte view of `array` in C order and little-endian, copying only when needed."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    array = np.ascontiguousarray(array)
    return memoryview(array.reshape(-1)).cast("B")


def _encode(header: dict, tensors: Sequence[np.ndarray]) -> tuple[bytes, int]:
    head = json.dumps(header, separators=(",", ":")).encode()
    # One copy: join takes the arrays' buffers directly.
    return b"".join([head, *(_raw(t) for t in tensors)]), len(head)


def encode_request(
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Build a binary infer request.

    Args:
        inputs: tensor name -> array; every array travels as raw bytes.
        outputs: output names to ask for (all outputs when None); all come back binary.
        request_id: optional id echoed by the server.

    Returns:
        (body, extra HTTP headers).

    Raises:
        ProtocolError: a dtype that cannot be sent.
    """
    arrays = [np.asarray(a) for a in inputs.values()]
    header: dict = {
        "inputs": [
            {
                "name": name,
                "shape": list(a.shape),
                "datatype": v2_datatype(a.dtype),
                "parameters": {"binary_data_size": a.nbytes},
            }
            for name, a in zip(inputs, arrays)
        ]
    }
    if request_id is not None:
        header["id"] = request_id
    if outputs is None:
        header["parameters"] = {"binary_data_output": True}
    else:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    body, head_len = _encode(header, arrays)
    return body, {HEADER_LENGTH: str(head_len), "Content-Type": "application/octet-stream"}


def encode_response(
    model_name: str,
    model_version: str,
    outputs: Mapping[str, np.ndarray],
    binary: Mapping[str, bool],
    request_id: str | None = None,
) -> tuple[bytes, int | None]:
    """Build an infer response.

    Args:
        model_name: echoed in the response.
        model_version: echoed in the response.
        outputs: output name -> array, in the order to send them.
        binary: output name -> True to send raw bytes, False for a JSON ``data`` list.
        request_id: echoed when given.

    Returns:
        (body, JSON header length or None when the body is pure JSON).
    """
    entries, raws = [], []
    for name, array in outputs.items():
        array = np.asarray(array)
        entry = {"name": name, "datatype": v2_datatype(array.dtype), "shape": list(array.shape)}
        if binary.get(name, True):
            entry["parameters"] = {"binary_data_size": array.nbytes}
            raws.append(array)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    header: dict = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if request_id is not None:
        header["id"] = request_id
    body, head_len = _encode(header, raws)
    return body, (head_len if raws else None)


def split_body(body: bytes, header_length: str | int | None) -> tuple[dict, memoryview]:
    """Split a message body into its JSON header and the binary part.

    Args:
        body: the whole HTTP body.
        header_length: the ``Inference-Header-Content-Length`` value, or None for pure JSON.

    Returns:
        (header dict, memoryview over the binary data that follows it).

    Raises:
        ProtocolError: bad length or malformed JSON.
    """
    view = memoryview(body)
    if header_length is None:
        n = len(view)
    else:
        try:
            n = int(header_length)
        except (TypeError, ValueError):
            raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} is not an integer") from None
        if not 0 < n <= len(view):
            raise ProtocolError(
                f"{HEADER_LENGTH} is {n} but the body has {len(view)} bytes; "
                "send the JSON header's length"
            )
    try:
        header = json.loads(bytes(view[:n]))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"the JSON header is malformed ({exc}); send a v2 infer request") from None
    except RecursionError:  # json's C parser recurses once per nesting level
        raise ProtocolError("the JSON header is nested too deeply; send a v2 infer request") from None
    if not isinstance(header, dict):
        raise ProtocolError("the JSON header must be an object with an 'inputs' list")
    return header, view[n:]


def _shape(entry: dict, what: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(f"{what} needs 'shape', a list of non-negative integers")
    return tuple(shape)


def read_tensors(
    entries: object, binary: memoryview, what: str = "input"
) -> dict[str, np.ndarray]:
    """Decode the tensors a header lists, from binary data or JSON ``data`` lists.

    Arrays decoded from binary data are read-only views of `binary` (no copy).

    Args:
        entries: the header's ``inputs`` (or ``outputs``) list.
        binary: the bytes after the JSON header.
        what: "input" or "output", for messages.

    Returns:
        name -> array, in the order listed.

    Raises:
        ProtocolError: malformed entries, duplicate names, byte counts that do not match
            shape x datatype, or binary data left over.
    """
    if not isinstance(entries, list):
        raise ProtocolError(f"'{what}s' must be a list of tensors")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ProtocolError(f"every {what} needs a string 'name'")
        name = entry["name"]
        if name in tensors:
            raise ProtocolError(f"{what} {name!r} appears twice; send each tensor once")
        dtype = numpy_dtype(entry.get("datatype"))
        shape = _shape(entry, f"{what} {name!r}")
        count = math.prod(shape)
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(f"{what} {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"{what} {name!r}: binary_data_size must be a non-negative integer")
            if size != count * dtype.itemsize:
                raise ProtocolError(
                    f"{what} {name!r} has shape {list(shape)} of {entry['datatype']} = "
                    f"{count * dtype.itemsize} bytes but binary_data_size says {size}"
                )
            if offset + size > len(binary):
                raise ProtocolError(
                    f"{what} {name!r} needs {size} bytes at offset {offset} but the body has "
                    f"only {len(binary)} bytes of binary data"
                )
            array = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
            offset += size
        elif "data" in entry:
            data = entry["data"]
            try:
                array = np.asarray(data, dtype=dtype).reshape(-1)
            except (TypeError, ValueError):
                raise ProtocolError(f"{what} {name!r}: 'data' is not a list of {entry['datatype']}") from None
            if array.size != count:
                raise ProtocolError(
                    f"{what} {name!r} has shape {list(shape)} ({count} elements) but 'data' "
                    f"holds {array.size}"
                )
            array = array.reshape(shape)
        else:
            raise ProtocolError(f"{what} {name!r} carries neither binary_data_size nor 'data'")
        tensors[name] = array
    if offset != len(binary):
        raise ProtocolError(
            f"the body has {len(binary) - offset} bytes of binary data that no {what} claims"
        )
    return tensors


def decode_response(body: bytes, header_length: str | None) -> tuple[dict, dict[str, np.ndarray]]:
    """Decode an infer response body.

    Args:
        body: the HTTP body.
        header_length: the response's ``Inference-Header-Content-Length`` header, if any.

    Returns:
        (JSON header, output name -> array).

    Raises:
        ProtocolError: the response is malformed.
    """
    header, binary = split_body(body, header_length)
    return header, read_tensors(header.get("outputs"), binary, what="output")
