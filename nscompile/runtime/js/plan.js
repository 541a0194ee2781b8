// A device's view of plan.json: cuts, fallback and the look-up, as nscompile/runtime/plan.py has them.
//
// Pure JavaScript, no ONNX Runtime: the look-up test runs it in Node next to Python's
// Plan.lookup and checks that both name the same cut. Keep the two in step: the same
// checks, the same look-up sources (the Kd = 1 slice or every device level, buckets or
// breakpoints), the same nearest load and device-load level (on a log scale), the same
// bisection of the exact breakpoints ("from this uplink upwards").

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

/** Index of the level nearest `value` on a log scale (levels are geometric), as Python's _nearest_log. */
function nearestLog(logLevels, value) {
  const x = Math.log(Math.max(value, 1e-9));
  let best = 0;
  let dist = Math.abs(logLevels[0] - x);
  for (let i = 1; i < logLevels.length; i++) {
    const d = Math.abs(logLevels[i] - x);
    if (d < dist) {
      best = i;
      dist = d;
    }
  }
  return best;
}

const ENERGY_FIGURES = ["compute_power_w", "idle_power_w"];
const RADIO_FIGURES = ["up_alpha_w_per_mbps", "up_beta_w", "down_alpha_w_per_mbps", "down_beta_w"];

/**
 * The device's power figures and its radio model (plan.json's energy_model), as Python's
 * EnergyModel: compute_power_w, idle_power_w, radio (its name), up/down alpha and beta
 * (Huang et al.'s alpha * Mbps + beta watts while sending and receiving).
 *
 * @param {object} doc plan.json's energy_model
 * @param {string} where the plan's location, for messages
 * @throws {NscompileError} a figure is missing, negative or not a number
 */
export function energyModel(doc, where = "plan.json") {
  const radio = doc?.radio;
  const values = {};
  for (const [source, keys] of [[doc, ENERGY_FIGURES], [radio, RADIO_FIGURES]]) {
    for (const k of keys) {
      const v = source !== null && typeof source === "object" ? source[k] : undefined;
      const x = v === null || v === undefined || typeof v === "object" ? NaN : Number(v);
      if (Number.isNaN(x)) throw new NscompileError(`${where}: energy_model lacks power or radio figures; rebuild the plan`);
      values[k] = x;
    }
  }
  const bad = Object.entries(values).filter(([, v]) => !(Number.isFinite(v) && v >= 0));
  if (bad.length) throw new NscompileError(`${where}: energy_model.${bad[0][0]} must be a non-negative number; rebuild the plan`);
  return { radio: String(radio.name ?? ""), ...values };
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
  constructor(doc, where, energy = null) {
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
    /** The plan's energy model (see energyModel), or null: a plan built before it had one. */
    this.energy = energy;
  }

  /** True for the cut that needs no server. */
  get allDevice() {
    return this.cloudModel === null;
  }

  /**
   * The plan's predicted latency of one request through this cut, phase by phase (ms).
   *
   * Kd x device + K x cloud + upload / uplink + download / downlink + RTT, from the
   * `predicted` figures the build wrote (DESIGN.md's Latency(S), Python's Cut.latency_ms);
   * all-device costs its device time alone.
   *
   * @param {number} uplinkMbps
   * @param {number} load server slowdown factor K >= 1
   * @param {number} rttMs
   * @param {number|null} downlinkMbps null: equal to the uplink (the planner's symmetric link); Infinity: downloads cost nothing
   * @param {number} deviceLoad device slowdown factor Kd against its profile (1 = as profiled)
   * @returns {{device_ms:number, upload_ms:number, server_ms:number, download_ms:number, rtt_ms:number, total_ms:number}}
   */
  predictedPhases(uplinkMbps, load = 1, rttMs = 0, downlinkMbps = null, deviceLoad = 1) {
    const p = this.predicted;
    const phases = { device_ms: deviceLoad * Number(p.device_ms ?? 0), upload_ms: 0, server_ms: 0, download_ms: 0, rtt_ms: 0 };
    if (!this.allDevice) {
      phases.server_ms = load * Number(p.cloud_ms ?? 0);
      phases.upload_ms = (Number(p.upload_bytes ?? 0) * MS_PER_BYTE_AT_1MBPS) / uplinkMbps;
      phases.download_ms = (Number(p.download_bytes ?? 0) * MS_PER_BYTE_AT_1MBPS) / (Number(downlinkMbps) || uplinkMbps);
      phases.rtt_ms = rttMs;
    }
    phases.total_ms = phases.device_ms + phases.upload_ms + phases.server_ms + phases.download_ms + phases.rtt_ms;
    return phases;
  }

  /**
   * The predicted latency (ms), summed in the order of Python's Cut.latency_ms, so that the
   * RTT rule compares the same floating-point numbers in both languages.
   *
   * @param {number} uplinkMbps
   * @param {number} load
   * @param {number} rttMs
   * @param {number|null} downlinkMbps as in predictedPhases
   * @param {number} deviceLoad
   * @returns {number}
   */
  latencyMs(uplinkMbps, load = 1, rttMs = 0, downlinkMbps = null, deviceLoad = 1) {
    const p = this.predicted;
    if (this.allDevice) return deviceLoad * p.device_ms;
    let ms = deviceLoad * (p.device_ms ?? 0) + load * p.cloud_ms + ((p.upload_bytes ?? 0) * MS_PER_BYTE_AT_1MBPS) / uplinkMbps;
    ms += ((p.download_bytes ?? 0) * MS_PER_BYTE_AT_1MBPS) / (downlinkMbps || uplinkMbps);
    return ms + rttMs;
  }

  /**
   * The plan's predicted device energy of one request through this cut (mJ), Python's
   * Cut.energy_mj term by term and in its order, so both languages give the same number.
   *
   * Kd x the prefix's compute energy (predicted.device_compute_mj), idle power while the
   * server works (K x cloud ms) and during the RTT, and the radio's alpha * Mbps + beta
   * while sending upload_bytes and receiving download_bytes; all-device costs its compute alone.
   *
   * @param {number} uplinkMbps
   * @param {number} load
   * @param {number} rttMs
   * @param {number|null} downlinkMbps null: equal to the uplink; Infinity: receiving takes no time (the per-bit energy remains)
   * @param {number} deviceLoad
   * @returns {number}
   * @throws {NscompileError} the plan has no energy model, or predicts no device_compute_mj (or, a split, cloud_ms)
   */
  energyMj(uplinkMbps, load = 1, rttMs = 0, downlinkMbps = null, deviceLoad = 1) {
    const e = this.energy;
    if (e === null) throw new NscompileError("this plan has no energy_model to predict energy with; rebuild it with this nscompile");
    const p = this.predicted;
    for (const key of this.allDevice ? ["device_compute_mj"] : ["device_compute_mj", "cloud_ms"]) {
      if (!(key in p)) throw new NscompileError(`cut "${this.id}" predicts no ${key}, so no energy; rebuild the plan`);
    }
    let mj = deviceLoad * p.device_compute_mj;
    if (this.allDevice) return mj;
    mj += e.idle_power_w * (load * p.cloud_ms + rttMs);
    // Transfer time (bytes * 8e-3 / Mbps ms) times alpha * Mbps + beta watts: written so
    // that an infinite rate leaves the per-bit term and drops the time-based one.
    mj += (p.upload_bytes ?? 0) * MS_PER_BYTE_AT_1MBPS * (e.up_alpha_w_per_mbps + e.up_beta_w / uplinkMbps);
    const down = downlinkMbps || uplinkMbps;
    mj += (p.download_bytes ?? 0) * MS_PER_BYTE_AT_1MBPS * (e.down_alpha_w_per_mbps + e.down_beta_w / down);
    return mj;
  }
}

/**
 * plan.json, checked, with the look-up structures built once.
 *
 * Fields: raw, modelName, modelSha256, inputs, outputs, cuts (Map id -> Cut), fallback
 * (the all-device cut's id), loads (grid rows, ascending), deviceLoads (the device
 * slowdown levels the plan was solved for, ascending; [1] for a plan without that axis),
 * rttMs, downlinkMbps, weights (file name of the shared weights, or null), objectives.
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
    const hasEnergy = raw.energy_model && (typeof raw.energy_model !== "object" || Object.keys(raw.energy_model).length > 0);
    /** plan.json's energy_model (see energyModel), or null for a plan built before it had one. */
    this.energyModel = hasEnergy ? energyModel(raw.energy_model, where) : null;
    this.cuts = new Map();
    for (const doc of raw.cuts) {
      const cut = new Cut(doc, where, this.energyModel);
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
    this.deviceLoads = (grid.device_load ?? [1]).map(Number);
    this._tables = new Map(); // objective -> [device level] -> [server level] -> [bandwidth starts, cut ids]
    this._buildLookup(grid, where);
    this._logLoads = this.loads.map((x) => Math.log(Math.max(x, 1e-9)));
    this._logDeviceLoads = this.deviceLoads.map((x) => Math.log(Math.max(x, 1e-9)));
    this._bandwidths = (grid.bandwidth_mbps ?? []).map(Number);
    [this._fronts, this._frontIndex] = this._readPareto(raw.pareto, where);
  }

  /** pareto's fronts and index, checked against the grid and the cuts; empty when absent (Python's _read_pareto). */
  _readPareto(doc, where) {
    if (!doc || (typeof doc === "object" && Object.keys(doc).length === 0)) return [[], []];
    const lacks = () => new NscompileError(`${where}: pareto lacks fronts or index; rebuild the plan`);
    if (typeof doc !== "object" || !Array.isArray(doc.fronts) || !Array.isArray(doc.index)) throw lacks();
    if (!doc.fronts.every(Array.isArray)) throw lacks();
    const fronts = doc.fronts.map((front) => front.map(String));
    const isInt = (i) => Number.isInteger(Number(i)) && i !== null && typeof i !== "boolean";
    const shapeOk = doc.index.length === this.deviceLoads.length
      && doc.index.every((rows) => Array.isArray(rows) && rows.length === this.loads.length
        && rows.every((row) => Array.isArray(row) && row.length === this._bandwidths.length));
    if (doc.index.some((rows) => Array.isArray(rows) && rows.some((row) => Array.isArray(row) && !row.every(isInt)))) throw lacks();
    if (!shapeOk) throw new NscompileError(`${where}: pareto.index is not [device level][load][bucket] of the grid; rebuild the plan`);
    const index = doc.index.map((rows) => rows.map((row) => row.map(Number)));
    if (index.some((rows) => rows.some((row) => row.some((i) => !(i >= 0 && i < fronts.length))))) {
      throw new NscompileError(`${where}: pareto.index names a front that pareto.fronts does not have; rebuild the plan`);
    }
    for (const front of fronts) {
      for (const id of front) {
        if (!this.cuts.has(id)) throw new NscompileError(`${where}: a pareto front names cut "${id}" which is not emitted`);
      }
      if (front.length === 0) throw new NscompileError(`${where}: pareto.fronts holds an empty front; rebuild the plan`);
    }
    return [fronts, index];
  }

  /** Whether the plan stores latency-energy fronts (pareto) and an energy model to read them with. */
  get hasPareto() {
    return this._fronts.length > 0 && this.energyModel !== null;
  }

  /**
   * The plan.json fields a policy choosing on the front needs and this plan lacks ([] when it has them).
   * @returns {string[]} among "pareto" and "energy_model"
   */
  get missingParetoFields() {
    const missing = [];
    if (this._fronts.length === 0) missing.push("pareto");
    if (this.energyModel === null) missing.push("energy_model");
    return missing;
  }

  /**
   * The stored front of the condition's bucket: cut ids, fastest first at the bucket's centre
   * (Python's Plan.front_cuts); empty for a plan without pareto.
   */
  frontCuts(bandwidthMbps, load = 1, deviceLoad = 1) {
    if (this._fronts.length === 0) return [];
    const row = this._frontIndex[this.deviceLoadRow(deviceLoad)][this.loadRow(load)];
    const i = lastAtOrBelow(this._bandwidths, bandwidthMbps);
    return this._fronts[row[i >= 0 ? i : 0]];
  }

  /**
   * The latency-energy front at the given conditions, fastest first (Python's Plan.pareto_front).
   *
   * Candidates: the stored front of the condition's bucket, the exact latency and energy
   * optima at this bandwidth (lookup) and the all-device cut, deduplicated in that order;
   * each is evaluated with latencyMs and energyMj at these conditions, sorted by (latency,
   * energy) and kept when its energy is strictly below every point before it.
   *
   * @param {number} bandwidthMbps uplink Mbit/s
   * @param {number} load server slowdown K
   * @param {number|null} rttMs null: the RTT the plan assumed
   * @param {number|null} downlinkMbps null: the plan's (null there: the uplink's)
   * @param {number} deviceLoad device slowdown Kd (the stored front is that of the nearest level)
   * @returns {{cut: string, latency_ms: number, energy_mj: number}[]}
   * @throws {NscompileError} the plan has no energy model
   */
  paretoFront(bandwidthMbps, load = 1, rttMs = null, downlinkMbps = null, deviceLoad = 1) {
    if (this.energyModel === null) {
      throw new NscompileError("this plan has no energy_model, so no latency-energy front; rebuild it with this nscompile");
    }
    const ids = new Set(this.frontCuts(bandwidthMbps, load, deviceLoad));
    for (const objective of ["latency", "energy"]) {
      if (this._tables.has(objective)) ids.add(this.lookup(bandwidthMbps, load, objective, deviceLoad));
    }
    ids.add(this.fallback);
    const rtt = rttMs ?? this.rttMs;
    const down = downlinkMbps ?? (this.downlinkMbps ? Number(this.downlinkMbps) : null);
    const points = [...ids].map((id) => {
      const cut = this.cuts.get(id);
      return { cut: id, latency_ms: cut.latencyMs(bandwidthMbps, load, rtt, down, deviceLoad),
        energy_mj: cut.energyMj(bandwidthMbps, load, rtt, down, deviceLoad) };
    });
    // Stable, as Python's sorted(): points equal in both keep the candidates' order.
    points.sort((a, b) => (a.latency_ms < b.latency_ms ? -1 : a.latency_ms > b.latency_ms ? 1
      : a.energy_mj < b.energy_mj ? -1 : a.energy_mj > b.energy_mj ? 1 : 0));
    const front = [];
    for (const p of points) if (front.length === 0 || p.energy_mj < front[front.length - 1].energy_mj) front.push(p);
    return front;
  }

  _buildLookup(grid, where) {
    // Every source as [device level][server level]. `breakpoints` / `tables` (and `table`)
    // are the slice at device load 1, all a plan without the device axis has;
    // `device_breakpoints` / `device_tables` hold every level. Later sources win: a source
    // with every device level beats a slice, exact breakpoints beat buckets.
    const raw = this.raw;
    const tables = { ...(raw.tables || {}) };
    const objective = grid.objective ?? "latency";
    if ("table" in raw && !(objective in tables)) tables[objective] = raw.table;
    const sources = new Map();
    for (const [kind, key, sliced] of [["table", null, true], ["points", "breakpoints", true],
      ["table", "device_tables", false], ["points", "device_breakpoints", false]]) {
      for (const [obj, value] of Object.entries(key === null ? tables : raw[key] || {})) {
        sources.set(obj, [kind, sliced ? [value] : value]);
      }
    }
    const bandwidths = (grid.bandwidth_mbps ?? []).map(Number);
    for (const [obj, [kind, levels]] of sources) {
      if (!Array.isArray(levels) || levels.length !== this.deviceLoads.length) {
        throw new NscompileError(`${where}: objective "${obj}" has ${Array.isArray(levels) ? levels.length : 0} device-load `
          + `levels but grid.device_load has ${this.deviceLoads.length}; rebuild the plan`);
      }
      this._tables.set(obj, levels.map((rows) => this._rows(kind, rows, bandwidths, obj, where)));
    }
    if (this._tables.size === 0) throw new NscompileError(`${where} has neither breakpoints nor a table; rebuild the plan`);
  }

  /** One device level's server-load rows as [bandwidth starts, cut ids], checked. */
  _rows(kind, rows, bandwidths, obj, where) {
    if (!Array.isArray(rows)) throw new NscompileError(`${where}: objective "${obj}" has a device level that is not a list of load rows; rebuild the plan`);
    const out = rows.map((row) => {
      if (kind === "points") {
        // A stable sort, as Python's sorted(): equal starts keep the plan's order.
        const pts = [...row].sort((a, b) => Number(a.from_mbps) - Number(b.from_mbps));
        return [pts.map((p) => Number(p.from_mbps)), pts.map((p) => String(p.cut))];
      }
      return [bandwidths.slice(), row.map(String)]; // only buckets: the cell starting at bandwidth_mbps[b] holds table[l][b]
    });
    if (out.length !== this.loads.length) {
      throw new NscompileError(`${where}: objective "${obj}" has ${out.length} load rows but the grid has `
        + `${this.loads.length} load levels; rebuild the plan`);
    }
    for (const [, ids] of out) {
      for (const id of ids) {
        if (!this.cuts.has(id)) throw new NscompileError(`${where}: the table names cut "${id}" which is not emitted`);
      }
    }
    return out;
  }

  /** The objectives this plan has tables for, sorted. */
  get objectives() {
    return [...this._tables.keys()].sort();
  }

  /**
   * The cut every condition of `objective`'s tables selects, if there is one such cut (else null).
   * objective "pareto": the cut every table and every front of the plan names.
   */
  onlyCut(objective = "latency") {
    const ids = new Set();
    const tables = objective === "pareto" ? [...this._tables.values()] : [this._tables.get(objective) ?? []];
    for (const levels of tables) for (const level of levels) for (const [, row] of level) for (const id of row) ids.add(id);
    if (objective === "pareto") for (const front of this._fronts) for (const id of front) ids.add(id);
    return ids.size === 1 ? [...ids][0] : null;
  }

  /** Index of the grid row nearest `load` (nearest on a log scale: loads are geometric). */
  loadRow(load) {
    return nearestLog(this._logLoads, load);
  }

  /** Index of the device-load level nearest `deviceLoad` (on a log scale). */
  deviceLoadRow(deviceLoad) {
    return nearestLog(this._logDeviceLoads, deviceLoad);
  }

  /**
   * The cut id for the given uplink bandwidth, server load and device load.
   *
   * @param {number} bandwidthMbps measured uplink in Mbit/s
   * @param {number} load server slowdown factor (1 = idle)
   * @param {string} objective "latency" or "energy" (what the plan has tables for)
   * @param {number} deviceLoad device slowdown factor against its profile (1 = as profiled); ignored by a plan without that axis
   * @returns {string}
   * @throws {NscompileError} the plan has no table for `objective`
   */
  lookup(bandwidthMbps, load = 1, objective = "latency", deviceLoad = 1) {
    const levels = this._tables.get(objective);
    if (levels === undefined) {
      throw new NscompileError(`the plan has no table for objective "${objective}"; use one of ${JSON.stringify(this.objectives)}`);
    }
    const rows = levels.length > 1 ? levels[this.deviceLoadRow(deviceLoad)] : levels[0];
    const [starts, ids] = rows[this.loadRow(load)];
    const i = lastAtOrBelow(starts, bandwidthMbps);
    return ids[i >= 0 ? i : 0];
  }

  /**
   * The runner's decision for these conditions: the table's cut, or all-device where the
   * measured RTT makes that faster (Python's CutPolicy.choose, after the estimates).
   *
   * The device load enters the RTT rule as the plan level it was looked up at, as in Python.
   *
   * @returns {{cut: string, reason: "table"|"rtt", level: number}} level: the device-load level used
   */
  decide(bandwidthMbps, load, rttMs, objective = "latency", deviceLoad = 1) {
    const level = this.deviceLoadRow(deviceLoad);
    const cut = this.lookup(bandwidthMbps, load, objective, deviceLoad);
    if (this.rttSaysDevice(cut, bandwidthMbps, load, rttMs, objective, this.deviceLoads[level])) {
      return { cut: this.fallback, reason: "rtt", level };
    }
    return { cut, reason: "table", level };
  }

  /**
   * True when a measured RTT above what the plan assumed makes all-device faster than `cutId`.
   *
   * RTT adds the same time to every cut but all-device, so the table's choice stays the
   * best of the split cuts; only the comparison with all-device can flip (the Python
   * runner's "rtt" rule).
   */
  rttSaysDevice(cutId, bandwidthMbps, load, rttMs, objective = "latency", deviceLoad = 1) {
    const cut = this.cuts.get(cutId);
    if (objective !== "latency" || cut.allDevice || rttMs === null || rttMs === undefined || rttMs <= this.rttMs) return false;
    const fallback = this.cuts.get(this.fallback);
    if (!("device_ms" in fallback.predicted) || !("cloud_ms" in cut.predicted)) return false;
    const down = this.downlinkMbps ? Number(this.downlinkMbps) : null;
    return cut.latencyMs(bandwidthMbps, load, rttMs, down, deviceLoad) > fallback.latencyMs(bandwidthMbps, load, rttMs, down, deviceLoad);
  }
}
