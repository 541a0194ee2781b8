// A device's view of plan.json: cuts, fallback and the look-up, as nscompile/runtime/plan.py has them.
//
// Pure JavaScript, no ONNX Runtime: the look-up test runs it in Node next to Python's
// Plan.lookup and checks that both name the same cut. Keep the two in step: the same
// checks, the same nearest load row (on a log scale), the same bisection of the exact
// breakpoints ("from this uplink upwards").

import { NscompileError } from "./errors.js";

/** plan.json's "schema"; nscompile/runtime/plan.py checks the same string. */
export const PLAN_SCHEMA = "nscompile.plan/1";

/** Transfer milliseconds per byte at 1 Mbit/s (8 bits / 1e6 bit/s). */
export const MS_PER_BYTE_AT_1MBPS = 8e-3;

/** The last component of a "/"-separated path (plan paths are relative to the build directory). */
export function baseName(path) {
  const parts = String(path).split("/");
  return parts[parts.length - 1];
}

function tensorSpec(raw, where) {
  if (raw === null || typeof raw !== "object" || typeof raw.name !== "string" || !Array.isArray(raw.shape)
      || typeof raw.dtype !== "string" || !raw.shape.every(Number.isInteger)) {
    throw new NscompileError(`${where}: a tensor entry lacks name/shape/dtype; rebuild the plan`);
  }
  return { name: raw.name, shape: raw.shape.slice(), dtype: raw.dtype, bytes: Number(raw.bytes ?? 0) };
}

/** Index of the last element of ascending `starts` that is <= x, or -1 (Python's bisect_right - 1). */
function lastAtOrBelow(starts, x) {
  let lo = 0;
  let hi = starts.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (x < starts[mid]) hi = mid;
    else lo = mid + 1;
  }
  return lo - 1;
}

/**
 * One emitted cut: what the device runs, what it uploads, which server model finishes it.
 *
 * Fields: id, tensors (the cut tensors, as the plan lists them), deviceOutputs (graph
 * outputs computed on the device), prefix (file name inside the device directory, or
 * null), cloudModel (the server model's name, or null for all-device), encoding (how the
 * cut tensors travel: "fp32", "fp16", "int8"; the plan's cuts[].encoding where the build
 * wrote one), predicted (the plan's figures).
 */
export class Cut {
  constructor(doc, where) {
    if (doc === null || typeof doc !== "object" || doc.id === undefined) {
      throw new NscompileError(`${where}: a cuts[] entry lacks 'id'; rebuild the plan`);
    }
    this.id = String(doc.id);
    this.tensors = (doc.tensors ?? []).map((t) => tensorSpec(t, where));
    this.deviceOutputs = (doc.device_outputs ?? []).map(String);
    this.prefix = doc.prefix ? baseName(doc.prefix) : null;
    let cloud = doc.cloud_model ?? null;
    if (cloud === null && doc.suffix) cloud = String(doc.suffix).split("/")[1]; // cloud/<name>/1/model.onnx
    this.cloudModel = cloud;
    this.predicted = { ...(doc.predicted ?? {}) };
    this.encoding = this.cloudModel === null ? null : String(doc.encoding ?? "fp32");
  }

  /** True for the cut that needs no server. */
  get allDevice() {
    return this.cloudModel === null;
  }

  /**
   * The plan's predicted latency of one request through this cut, phase by phase (ms).
   *
   * device + K x cloud + upload / uplink + download / downlink + RTT, from the
   * `predicted` figures the build wrote (DESIGN.md's Latency(S)); all-device costs its
   * device time alone.
   *
   * @param {number} uplinkMbps
   * @param {number} load server slowdown factor K >= 1
   * @param {number} rttMs
   * @param {number|null} downlinkMbps null or 0 leaves the download out
   * @returns {{device_ms:number, upload_ms:number, server_ms:number, download_ms:number, rtt_ms:number, total_ms:number}}
   */
  predictedPhases(uplinkMbps, load = 1, rttMs = 0, downlinkMbps = null) {
    const p = this.predicted;
    const phases = { device_ms: Number(p.device_ms ?? 0), upload_ms: 0, server_ms: 0, download_ms: 0, rtt_ms: 0 };
    if (!this.allDevice) {
      phases.server_ms = load * Number(p.cloud_ms ?? 0);
      phases.upload_ms = (Number(p.upload_bytes ?? 0) * MS_PER_BYTE_AT_1MBPS) / uplinkMbps;
      if (downlinkMbps) phases.download_ms = (Number(p.download_bytes ?? 0) * MS_PER_BYTE_AT_1MBPS) / downlinkMbps;
      phases.rtt_ms = rttMs;
    }
    phases.total_ms = phases.device_ms + phases.upload_ms + phases.server_ms + phases.download_ms + phases.rtt_ms;
    return phases;
  }
}

/**
 * plan.json, checked, with the look-up structures built once.
 *
 * Fields: raw, modelName, modelSha256, inputs, outputs, cuts (Map id -> Cut), fallback
 * (the all-device cut's id), loads (grid rows, ascending), rttMs, downlinkMbps, weights
 * (file name of the shared weights, or null), objectives.
 */
export class Plan {
  /**
   * @param {object} raw the parsed JSON
   * @param {string} where the plan's location, for messages
   * @throws {NscompileError} unknown schema, missing keys, a table naming a cut that is not emitted
   */
  constructor(raw, where = "plan.json") {
    if (raw === null || typeof raw !== "object") throw new NscompileError(`${where} is not a JSON object; rebuild the plan`);
    this.raw = raw;
    if (raw.schema !== PLAN_SCHEMA) {
      throw new NscompileError(
        `${where} has schema ${JSON.stringify(raw.schema ?? null)}, expected "${PLAN_SCHEMA}"; rebuild with this nscompile version`);
    }
    const model = raw.model;
    const grid = raw.grid;
    if (!model || !grid || !Array.isArray(raw.cuts) || !Array.isArray(model.inputs) || !Array.isArray(model.outputs)) {
      throw new NscompileError(`${where} lacks model/cuts/grid; rebuild the plan`);
    }
    if (model.name === undefined || model.sha256 === undefined) {
      throw new NscompileError(`${where}: model lacks name/sha256; rebuild the plan`);
    }
    this.modelName = String(model.name);
    this.modelSha256 = String(model.sha256);
    this.inputs = model.inputs.map((t) => tensorSpec(t, where));
    this.outputs = model.outputs.map((t) => tensorSpec(t, where));
    this.rttMs = Number(grid.rtt_ms || 0);
    this.downlinkMbps = grid.downlink_mbps ?? null;
    this.weights = raw.weights ? baseName(raw.weights) : null;
    this.cuts = new Map();
    for (const doc of raw.cuts) {
      const cut = new Cut(doc, where);
      this.cuts.set(cut.id, cut);
    }
    this.fallback = String(raw.fallback || "");
    if (!this.cuts.has(this.fallback)) {
      const devices = [...this.cuts.values()].filter((c) => c.allDevice);
      if (devices.length === 0) throw new NscompileError(`${where} has no all-device cut to fall back on; rebuild the plan`);
      this.fallback = devices[0].id;
    }
    const fb = this.cuts.get(this.fallback);
    if (!fb.allDevice || fb.prefix === null) {
      throw new NscompileError(`${where}: fallback cut "${this.fallback}" is not an all-device cut`);
    }
    this.loads = (grid.load ?? [1]).map(Number);
    this._logLoads = this.loads.map((x) => Math.log(Math.max(x, 1e-9)));
    this._tables = new Map();
    this._buildLookup(grid, where);
  }

  _buildLookup(grid, where) {
    const breakpoints = this.raw.breakpoints ?? {};
    const tables = { ...(this.raw.tables ?? {}) };
    const objective = grid.objective ?? "latency";
    if ("table" in this.raw && !(objective in tables)) tables[objective] = this.raw.table;
    const bandwidths = (grid.bandwidth_mbps ?? []).map(Number);
    for (const obj of new Set([...Object.keys(breakpoints), ...Object.keys(tables)])) {
      const rows = [];
      if (obj in breakpoints) {
        for (const row of breakpoints[obj]) {
          // A stable sort, as Python's sorted(): equal starts keep the plan's order.
          const pts = [...row].sort((a, b) => Number(a.from_mbps) - Number(b.from_mbps));
          rows.push([pts.map((p) => Number(p.from_mbps)), pts.map((p) => String(p.cut))]);
        }
      } else {
        // Only buckets: the cell starting at bandwidth_mbps[b] holds table[l][b].
        for (const row of tables[obj]) rows.push([bandwidths.slice(), row.map(String)]);
      }
      if (rows.length !== this.loads.length) {
        throw new NscompileError(`${where}: objective "${obj}" has ${rows.length} load rows but the grid has `
          + `${this.loads.length} load levels; rebuild the plan`);
      }
      for (const [, ids] of rows) {
        for (const id of ids) {
          if (!this.cuts.has(id)) throw new NscompileError(`${where}: the table names cut "${id}" which is not emitted`);
        }
      }
      this._tables.set(obj, rows);
    }
    if (this._tables.size === 0) throw new NscompileError(`${where} has neither breakpoints nor a table; rebuild the plan`);
  }

  /** The objectives this plan has tables for, sorted. */
  get objectives() {
    return [...this._tables.keys()].sort();
  }

  /** The cut every bandwidth and load of `objective`'s table selects, if there is one such cut (else null). */
  onlyCut(objective = "latency") {
    const ids = new Set();
    for (const [, row] of this._tables.get(objective) ?? []) for (const id of row) ids.add(id);
    return ids.size === 1 ? [...ids][0] : null;
  }

  /** Index of the grid row nearest `load` (nearest on a log scale: loads are geometric). */
  loadRow(load) {
    const x = Math.log(Math.max(load, 1e-9));
    let best = 0;
    let dist = Math.abs(this._logLoads[0] - x);
    for (let i = 1; i < this._logLoads.length; i++) {
      const d = Math.abs(this._logLoads[i] - x);
      if (d < dist) {
        best = i;
        dist = d;
      }
    }
    return best;
  }

  /**
   * The cut id for the given uplink bandwidth and server load.
   *
   * @param {number} bandwidthMbps measured uplink in Mbit/s
   * @param {number} load server slowdown factor (1 = idle)
   * @param {string} objective "latency" or "energy" (what the plan has tables for)
   * @returns {string}
   * @throws {NscompileError} the plan has no table for `objective`
   */
  lookup(bandwidthMbps, load = 1, objective = "latency") {
    const rows = this._tables.get(objective);
    if (rows === undefined) {
      throw new NscompileError(`the plan has no table for objective "${objective}"; use one of ${JSON.stringify(this.objectives)}`);
    }
    const [starts, ids] = rows[this.loadRow(load)];
    const i = lastAtOrBelow(starts, bandwidthMbps);
    return ids[i >= 0 ? i : 0];
  }

  /**
   * True when a measured RTT above what the plan assumed makes all-device faster than `cutId`.
   *
   * RTT adds the same time to every cut but all-device, so the table's choice stays the
   * best of the split cuts; only the comparison with all-device can flip (the Python
   * runner's "rtt" rule).
   */
  rttSaysDevice(cutId, bandwidthMbps, load, rttMs, objective = "latency") {
    const cut = this.cuts.get(cutId);
    if (objective !== "latency" || cut.allDevice || rttMs === null || rttMs === undefined || rttMs <= this.rttMs) return false;
    const p = cut.predicted;
    const f = this.cuts.get(this.fallback).predicted;
    if (!("device_ms" in f) || !("cloud_ms" in p)) return false;
    let splitMs = (p.device_ms ?? 0) + p.cloud_ms * load + ((p.upload_bytes ?? 0) * MS_PER_BYTE_AT_1MBPS) / bandwidthMbps + rttMs;
    if (this.downlinkMbps) splitMs += ((p.download_bytes ?? 0) * MS_PER_BYTE_AT_1MBPS) / Number(this.downlinkMbps);
    return splitMs > f.device_ms;
  }
}
