// KServe v2 / Open Inference Protocol messages with Triton's binary tensor extension,
// as nscompile/runtime/protocol.py writes and reads them.
//
// An infer body is a JSON header followed by the raw little-endian bytes of each tensor,
// in the order the header lists them; the HTTP header Inference-Header-Content-Length
// gives the JSON header's length and each tensor's parameters.binary_data_size its byte
// count. Tensors here are ONNX Runtime-shaped objects: {type, dims, data} with `type`
// ONNX Runtime's name ("float32", "int64", ...) and `data` a typed array. Every
// platform this runs on (x86, ARM browsers and Node) is little-endian, so typed arrays
// are sent and read as they are.

import { ProtocolError } from "./errors.js";

export const HEADER_LENGTH = "Inference-Header-Content-Length";

/** ONNX Runtime (and numpy) type name -> [v2 datatype, typed array constructor]. */
export const TYPES = {
  bool: ["BOOL", Uint8Array],
  uint8: ["UINT8", Uint8Array],
  uint16: ["UINT16", Uint16Array],
  uint32: ["UINT32", Uint32Array],
  uint64: ["UINT64", BigUint64Array],
  int8: ["INT8", Int8Array],
  int16: ["INT16", Int16Array],
  int32: ["INT32", Int32Array],
  int64: ["INT64", BigInt64Array],
  float16: ["FP16", Uint16Array], // raw IEEE half bits, as onnxruntime-web holds them
  float32: ["FP32", Float32Array],
  float64: ["FP64", Float64Array],
};
const FROM_V2 = Object.fromEntries(Object.entries(TYPES).map(([type, [v2]]) => [v2, type]));

/** The v2 datatype of an ONNX Runtime type name; ProtocolError for one that cannot travel as bytes. */
export function v2Datatype(type) {
  const entry = TYPES[type];
  if (entry === undefined) {
    throw new ProtocolError(`tensor type "${type}" cannot travel as a binary tensor; use one of ${Object.keys(TYPES).join(", ")}`);
  }
  return entry[0];
}

function bytesOf(data) {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function count(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * Build a binary infer request asking for every output in binary.
 *
 * @param {Object<string, {type: string, dims: number[], data: ArrayBufferView}>} inputs name -> tensor
 * @returns {{body: Uint8Array, headers: Object<string, string>}}
 * @throws {ProtocolError} a type that cannot be sent
 */
export function encodeRequest(inputs) {
  const entries = Object.entries(inputs);
  const header = {
    inputs: entries.map(([name, t]) => ({
      name,
      shape: Array.from(t.dims, Number),
      datatype: v2Datatype(t.type),
      parameters: { binary_data_size: t.data.byteLength },
    })),
    parameters: { binary_data_output: true },
  };
  const head = new TextEncoder().encode(JSON.stringify(header));
  const body = new Uint8Array(head.length + entries.reduce((n, [, t]) => n + t.data.byteLength, 0));
  body.set(head, 0);
  let offset = head.length;
  for (const [, t] of entries) {
    body.set(bytesOf(t.data), offset);
    offset += t.data.byteLength;
  }
  return { body, headers: { [HEADER_LENGTH]: String(head.length), "Content-Type": "application/octet-stream" } };
}

function shapeOf(entry, what) {
  const shape = entry.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new ProtocolError(`${what} needs 'shape', a list of non-negative integers`);
  }
  return shape;
}

function fromJsonData(data, type, n, what) {
  const Ctor = TYPES[type][1];
  if (!Array.isArray(data)) throw new ProtocolError(`${what}: 'data' is not a list`);
  if (data.length !== n) throw new ProtocolError(`${what} has ${n} elements by its shape but 'data' holds ${data.length}`);
  const big = Ctor === BigInt64Array || Ctor === BigUint64Array;
  try {
    return Ctor.from(data, (v) => (big ? BigInt(v) : type === "bool" ? Number(Boolean(v)) : Number(v)));
  } catch {
    throw new ProtocolError(`${what}: 'data' is not a list of ${type}`);
  }
}

/**
 * Decode an infer response body into its JSON header and output tensors.
 *
 * @param {Uint8Array} body the HTTP body
 * @param {string|null} headerLength the response's Inference-Header-Content-Length (null: pure JSON)
 * @returns {{header: object, outputs: Object<string, {type: string, dims: number[], data: ArrayBufferView}>}}
 * @throws {ProtocolError} a malformed answer: bad length, bad JSON, byte counts that do not match shape x datatype
 */
export function decodeResponse(body, headerLength) {
  let n = body.length;
  if (headerLength !== null && headerLength !== undefined) {
    n = Number(headerLength);
    if (!Number.isInteger(n)) throw new ProtocolError(`${HEADER_LENGTH} "${headerLength}" is not an integer`);
    if (!(n > 0 && n <= body.length)) {
      throw new ProtocolError(`${HEADER_LENGTH} is ${n} but the answer has ${body.length} bytes`);
    }
  }
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(body.subarray(0, n)));
  } catch (exc) {
    throw new ProtocolError(`the answer's JSON header is malformed (${exc.message})`);
  }
  if (header === null || typeof header !== "object" || !Array.isArray(header.outputs)) {
    throw new ProtocolError("the answer's JSON header has no 'outputs' list");
  }
  const binary = body.subarray(n);
  const outputs = {};
  let offset = 0;
  for (const entry of header.outputs) {
    if (entry === null || typeof entry !== "object" || typeof entry.name !== "string") {
      throw new ProtocolError("every output needs a string 'name'");
    }
    const what = `output "${entry.name}"`;
    if (entry.name in outputs) throw new ProtocolError(`${what} appears twice`);
    const type = FROM_V2[entry.datatype];
    if (type === undefined) throw new ProtocolError(`${what}: datatype ${JSON.stringify(entry.datatype)} is not supported`);
    const dims = shapeOf(entry, what);
    const Ctor = TYPES[type][1];
    const size = entry.parameters?.binary_data_size;
    let data;
    if (size !== undefined) {
      if (!Number.isInteger(size) || size < 0) throw new ProtocolError(`${what}: binary_data_size must be a non-negative integer`);
      if (size !== count(dims) * Ctor.BYTES_PER_ELEMENT) {
        throw new ProtocolError(`${what} has shape ${JSON.stringify(dims)} of ${entry.datatype} = `
          + `${count(dims) * Ctor.BYTES_PER_ELEMENT} bytes but binary_data_size says ${size}`);
      }
      if (offset + size > binary.length) {
        throw new ProtocolError(`${what} needs ${size} bytes at offset ${offset} but the answer has only ${binary.length} bytes of binary data`);
      }
      // A copy: typed arrays need aligned offsets, and the outputs outlive the body.
      data = new Ctor(binary.slice(offset, offset + size).buffer);
      offset += size;
    } else if ("data" in entry) {
      data = fromJsonData(entry.data, type, count(dims), what);
    } else {
      throw new ProtocolError(`${what} carries neither binary_data_size nor 'data'`);
    }
    outputs[entry.name] = { type, dims, data };
  }
  if (offset !== binary.length) {
    throw new ProtocolError(`the answer has ${binary.length - offset} bytes of binary data that no output claims`);
  }
  return { header, outputs };
}
