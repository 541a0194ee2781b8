// Collaborative inference on the device, in JavaScript: run the prefix here with ONNX
// Runtime (onnxruntime-web in a browser or Node, onnxruntime-node in Node), the suffix
// on a KServe v2 server, with nscompile/runtime/runner.py's behaviour.
//
// Per call the runner reads its estimates of uplink bandwidth, RTT and server load
// (probing when it has none or they went stale) and of its own slowdown against the
// device profile (learnt from every prefix it runs), looks the cut up in the plan, runs the
// prefix, sends the cut tensors in Triton's binary format and merges the server's outputs
// with the ones computed on the device. A server that is unreachable, slower than the
// deadline or answers 5xx (any error status) is absorbed: the request finishes with the
// all-device model and the server is left alone for a back-off period. A server that
// serves another build, or answers outputs of the wrong name, type or shape, is an Error:
// the runner never returns outputs it cannot vouch for.
//
//   import { SplitRunner } from "./split_runner.js";
//   const runner = await SplitRunner.open("device/", "http://server:8000", { ort });
//   const { outputs, record } = await runner.run({ data: new ort.Tensor("float32", x, [1, 3, 224, 224]) });
//
// No build step: a plain ES module; ONNX Runtime comes from options.ort, else the global
// `ort` (the <script> build), else `import("onnxruntime-web")` (Node, bundlers).

import { NscompileError, ProtocolError } from "./errors.js";
import { DeviceLoad, monotonic, NetState } from "./netstate.js";
import { Plan } from "./plan.js";
import { asPolicy, checkPolicy, decidePolicy, predict } from "./policies.js";
import { decodeResponse, encodeRequest, HEADER_LENGTH } from "./protocol.js";

export { NscompileError, ProtocolError } from "./errors.js";
export { Cut, Plan, PLAN_SCHEMA } from "./plan.js";
export { asPolicy, budget, slo, weighted } from "./policies.js";

/** Headers and endpoints nscompile serve adds (nscompile/runtime/contract.py). */
export const LOAD_HEADER = "nscompile-load";
export const SERVER_MS_HEADER = "nscompile-server-ms";
export const SHA_PARAMETER = "nscompile_model_sha256";
export const LOAD_PATH = "/v2/nscompile/load";
export const PROBE_PATH = "/v2/nscompile/probe";

/** A failure of the server or the link: absorbed by finishing on the device. */
class ServerFailure extends Error {
  constructor(message) {
    super(message);
    this.name = "ServerFailure";
  }
}

const isNode = typeof process !== "undefined" && !!process.versions?.node && typeof window === "undefined";

/**
 * Where the device files are: an http(s) URL (fetched), or in Node a file: URL or a path (read).
 * Relative URLs in a page resolve against the page.
 */
class DeviceDir {
  constructor(location, fetchFn) {
    this.fetch = fetchFn;
    let text = String(location);
    if (!text.endsWith("/")) text += "/";
    this.local = isNode && !/^https?:/i.test(text);
    if (this.local) {
      this.path = text.startsWith("file:") ? decodeURIComponent(new URL(text).pathname) : text;
    } else {
      const base = typeof document !== "undefined" ? document.baseURI : undefined;
      this.url = new URL(text, base).href;
    }
  }

  where(name) {
    return this.local ? this.path + name : new URL(name, this.url).href;
  }

  /** The file's bytes; NscompileError naming it when it is missing or unreadable. */
  async read(name) {
    const where = this.where(name);
    if (this.local) {
      const { readFile } = await import("node:fs/promises");
      try {
        return new Uint8Array(await readFile(where));
      } catch (exc) {
        throw new NscompileError(`device file ${where} cannot be read (${exc.code ?? exc.message}); copy the whole device/ directory of the build`);
      }
    }
    let response;
    try {
      response = await this.fetch(where);
    } catch (exc) {
      throw new NscompileError(`device file ${where} cannot be fetched (${exc.message}); check the device directory URL`);
    }
    if (!response.ok) {
      throw new NscompileError(`device file ${where}: HTTP ${response.status}; copy the whole device/ directory of the build`);
    }
    return new Uint8Array(await response.arrayBuffer());
  }

  /** Throw the same error as read() if the file is missing, without reading it. */
  async check(name) {
    const where = this.where(name);
    if (this.local) {
      const { stat } = await import("node:fs/promises");
      try {
        await stat(where);
      } catch (exc) {
        throw new NscompileError(`device file ${where} is missing (${exc.code ?? exc.message}); copy the whole device/ directory of the build`);
      }
      return;
    }
    let response;
    try {
      response = await this.fetch(where, { method: "HEAD" });
    } catch (exc) {
      throw new NscompileError(`device file ${where} cannot be fetched (${exc.message}); check the device directory URL`);
    }
    if (!response.ok) {
      throw new NscompileError(`device file ${where}: HTTP ${response.status}; copy the whole device/ directory of the build`);
    }
  }
}

async function resolveOrt(ort) {
  if (ort) return ort;
  if (globalThis.ort?.InferenceSession) return globalThis.ort;
  try {
    return await import("onnxruntime-web");
  } catch {
    throw new NscompileError("no ONNX Runtime: pass options.ort (import * as ort from \"onnxruntime-web\"), "
      + "or load onnxruntime-web's ort.min.js before the runner");
  }
}

function headerNumber(headers, name) {
  const v = headers.get(name);
  if (v === null) return null;
  const x = Number(v);
  return Number.isFinite(x) ? x : null;
}

function shapeMatches(expected, got) {
  if (expected.length !== got.length) return false;
  return expected.every((d, i) => d <= 0 || d === Number(got[i]));
}

/**
 * What one run() did, with each phase's time; the fields of the Python runner's RunRecord
 * (snake_case, so that both serialise to the same JSON) plus the browser's own measures.
 *
 * reason says why the cut was chosen: "table", "pareto" (the policy's point of the
 * latency-energy front), "unmet" (no cut meets the policy's SLO or budget: its fallback,
 * the fastest or the least energy), "forced", "plan" (everything on the device whatever
 * the conditions), "rtt" (the measured RTT made all-device faster), "backoff" (the server
 * failed recently) or "fallback" (it failed during this call; error says how).
 * objective is "latency" or "energy" for those policies and "pareto" for the others;
 * policy is the policy's text form ("slo(latency_ms=120)"); predicted_latency_ms and
 * predicted_energy_mj are the plan's prediction for the chosen cut at the estimates the
 * choice was made on, as Python's (the all-device cut's needs none; null for a forced
 * split, and the energy for a plan without an energy model).
 * device_load is the device's slowdown Kd the decision used (pinned or learnt).
 * session_ms is the time spent creating a prefix session on first use (not in prefix_ms).
 * upload_ms and download_ms split the measured transfer: until the answer's headers
 * arrived less the server's time, and the answer's body. predicted holds the plan's
 * figures for the chosen cut at the conditions it was chosen for.
 */
export class RunRecord {
  constructor(cut, reason, objective, fields = {}) {
    this.cut = cut;
    this.reason = reason;
    this.objective = objective;
    this.encoding = null;
    this.bandwidth_mbps = null;
    this.load = 1;
    this.rtt_ms = null;
    this.device_load = 1;
    this.lookup_us = 0;
    this.probe_ms = 0;
    this.prefix_ms = 0;
    this.session_ms = 0;
    this.encode_ms = 0;
    this.transfer_ms = 0;
    this.upload_ms = 0;
    this.server_ms = 0;
    this.download_ms = 0;
    this.decode_ms = 0;
    this.fallback_ms = 0;
    this.total_ms = 0;
    this.upload_bytes = 0;
    this.download_bytes = 0;
    this.fell_back = false;
    this.error = null;
    this.predicted = null;
    this.policy = objective;
    this.predicted_latency_ms = null;
    this.predicted_energy_mj = null;
    Object.assign(this, fields);
  }

  /** The record as a plain JSON-ready object. */
  asDict() {
    return { ...this };
  }
}

/**
 * Run a model split between this device and an inference server. Not safe for
 * concurrent run() calls on one runner: await each (make several runners for parallelism).
 */
export class SplitRunner {
  /**
   * Read the plan, fetch the shared weights, load the all-device model (the fallback
   * must always work, so it loads now), and return a runner.
   *
   * @param {string|URL} deviceDirUrl the device/ directory of a build (URL, or a path in Node)
   * @param {string} serverUrl base URL of a KServe v2 server serving the build's cloud/
   * @param {object} [options]
   * @param {object} [options.ort] the ONNX Runtime module (onnxruntime-web or onnxruntime-node)
   * @param {string} [options.objective] "latency" or "energy": which of the plan's tables to use (the
   *   policies of those names; with neither option, "latency")
   * @param {string|object} [options.policy] what to optimise: "latency", "energy", or a point of the
   *   latency-energy front: "slo(latency_ms=X)" or {slo: X}, "budget(energy_mj=Y)" or {budget: Y},
   *   "weighted(LAM)" or {weighted: LAM} (the text Python's as_policy reads); pass this or objective, not both.
   *   runner.policy may be set between calls.
   * @param {number} [options.deadlineMs=5000] a server call slower than this is abandoned, the request finished on the device
   * @param {string} [options.forceCut] always use this cut
   * @param {number} [options.bandwidthMbps] pin the uplink bandwidth instead of measuring it
   * @param {number} [options.load] pin the server load instead of reading what the server reports
   * @param {number} [options.deviceLoad] pin the device's slowdown Kd against its profile instead of
   *   learning it from its own runs (measured over predicted time of each prefix it runs)
   * @param {number} [options.initialBandwidthMbps=10] estimate when the server offers no probe endpoint (Triton)
   * @param {number} [options.staleS=10] re-probe when the estimates are older than this
   * @param {[number, number]} [options.backoffS=[0.5, 30]] (first, max) seconds to leave a failed server alone
   * @param {[number, number]} [options.probeBytes=[4096, 1048576]] (first, max) size of the bandwidth probe
   * @param {object} [options.sessionOptions] ONNX Runtime session options for the prefixes
   * @param {Function} [options.fetch] the fetch to use (default: globalThis.fetch)
   * @returns {Promise<SplitRunner>}
   * @throws {NscompileError} a missing file, an unknown plan schema, an objective, policy or cut the plan
   *   cannot follow (a front policy on a plan without pareto / energy_model), both objective and policy
   */
  static async open(deviceDirUrl, serverUrl, options = {}) {
    const fetchFn = options.fetch ?? globalThis.fetch.bind(globalThis);
    const dir = new DeviceDir(deviceDirUrl, fetchFn);
    const planBytes = await dir.read("plan.json");
    let raw;
    try {
      raw = JSON.parse(new TextDecoder().decode(planBytes));
    } catch (exc) {
      throw new NscompileError(`${dir.where("plan.json")} is not valid JSON (${exc.message}); rebuild the plan`);
    }
    const plan = new Plan(raw, dir.where("plan.json"));
    const ort = await resolveOrt(options.ort);
    const runner = new SplitRunner(plan, dir, serverUrl, ort, fetchFn, options);
    // Every prefix must be there before the first request needs it (as Python's load_plan checks).
    await Promise.all([...plan.cuts.values()].filter((c) => c.prefix).map((c) => dir.check(c.prefix)));
    await runner._session(plan.cuts.get(plan.fallback));
    return runner;
  }

  constructor(plan, dir, serverUrl, ort, fetchFn, options) {
    if (options.objective != null && options.policy != null) {
      throw new NscompileError(`pass policy or objective, not both (got objective ${JSON.stringify(options.objective)}, `
        + `policy ${JSON.stringify(String(options.policy))})`);
    }
    if (options.forceCut != null && !plan.cuts.has(options.forceCut)) {
      throw new NscompileError(`cut "${options.forceCut}" is not in the plan; use one of ${JSON.stringify([...plan.cuts.keys()].sort())}`);
    }
    this.plan = plan;
    this.dir = dir;
    this.ort = ort;
    this.policy = options.policy ?? options.objective ?? "latency";
    this.serverUrl = String(serverUrl ?? "").replace(/\/+$/, "");
    this.deadlineMs = options.deadlineMs ?? 5000;
    this.forceCut = options.forceCut ?? null;
    this.fixedBandwidth = options.bandwidthMbps ?? null;
    this.fixedLoad = options.load ?? null;
    this.fixedDeviceLoad = options.deviceLoad ?? null;
    this.initialBandwidth = options.initialBandwidthMbps ?? 10;
    this.probeBytes = options.probeBytes ?? [4096, 1 << 20];
    this.net = new NetState(0.4, options.staleS ?? 10, options.backoffS ?? [0.5, 30]);
    /** The device's own slowdown, learnt from every prefix it runs (see _learnDevice). */
    this.device = new DeviceLoad();
    this.sessionOptions = options.sessionOptions ?? {};
    this.lastRecord = null;
    this._fetch = fetchFn;
    this._sessions = new Map(); // cut id -> Promise<InferenceSession>
    this._weights = null; // Promise<Uint8Array>: fetched once, shared by every prefix
    this._verified = new Set();
    this._warm = new Set(); // cut ids whose session has run once: later runs are device-load samples
    this._probeSupported = true;
    this._probeDue = false;
    this._probing = null;
    this._decision = { key: null };
    // Objectives whose every table entry is all-device ("pareto": every table and front): no
    // condition can change that (RTT only ever favours the device), so such a runner never
    // probes or calls out.
    this._deviceOnly = Object.fromEntries([...plan.objectives, "pareto"].map((o) => [o, plan.onlyCut(o) === plan.fallback]));
  }

  /** The policy the next decision follows (a Policy of policies.js); assign one, its text form or {slo: X} to change it. */
  get policy() {
    return this._policy;
  }

  set policy(value) {
    const policy = asPolicy(value);
    checkPolicy(this.plan, policy);
    this._policy = policy;
  }

  /** "latency" or "energy" for those policies, "pareto" for the others; assigning sets the policy. */
  get objective() {
    return this._policy.objective;
  }

  set objective(value) {
    this.policy = value;
  }

  // -- public API ----------------------------------------------------------------------

  /**
   * Run the model on `feeds`, split wherever the current conditions say.
   *
   * @param {Object<string, object>} feeds graph input name -> ort.Tensor (type and shape as in the plan)
   * @returns {Promise<{outputs: Object<string, object>, record: RunRecord}>} every graph output, as ort.Tensor
   * @throws {NscompileError} bad inputs, a server serving another build or answering wrong outputs
   */
  async run(feeds) {
    const t0 = performance.now();
    this._checkInputs(feeds);
    const [cut, rec] = await this._choose(monotonic());
    let outputs = null;
    if (!cut.allDevice) outputs = await this._split(cut, feeds, rec);
    if (outputs === null) { // all-device by choice, or the server failed
      outputs = await this._runPrefix(this.plan.cuts.get(this.plan.fallback), feeds, rec, rec.fell_back ? "fallback_ms" : "prefix_ms");
    }
    rec.total_ms = performance.now() - t0;
    if (this._probeDue) {
      // After the answer, not beside the request (as the Python runner does).
      this._probeDue = false;
      this._probeInBackground();
    }
    this.lastRecord = rec;
    const result = {};
    for (const spec of this.plan.outputs) result[spec.name] = outputs[spec.name];
    return { outputs: result, record: rec };
  }

  /**
   * Check now that the server serves this build's suffixes (same model hash).
   *
   * @throws {NscompileError} the server is unreachable, or serves other artifacts
   */
  async checkServer() {
    for (const cut of this.plan.cuts.values()) {
      if (!cut.cloudModel) continue;
      try {
        await this._verify(cut.cloudModel);
      } catch (exc) {
        if (exc instanceof ServerFailure) {
          throw new NscompileError(`server ${this.serverUrl} is not reachable (${exc.message}); start it or fix the URL`);
        }
        throw exc;
      }
    }
  }

  /** Forget bandwidth, RTT, load and back-off: the device moved to another network. */
  resetEstimates() {
    const old = this.net;
    this.net = new NetState(old.bandwidth.alpha, old.staleS, [old.backoffFirst, old.backoffMax]);
    this._decision = { key: null };
  }

  /**
   * Kd as the next decision will use it: pinned, or learnt from the device's runs.
   *
   * An estimate older than the staleness limit is forgotten: the cut it chose may run
   * nothing on the device (all-cloud), so no run would ever show that the device got fast
   * again. The next device run says otherwise if it is still slow.
   */
  get deviceLoad() {
    if (this.fixedDeviceLoad !== null) return this.fixedDeviceLoad;
    const device = this.device;
    if (device.samples && monotonic() - device.updatedAt > this.net.staleS) device.reset();
    return device.value;
  }

  /** Wait until a background probe in progress (if any) has finished. */
  async waitForProbe() {
    if (this._probing) await this._probing;
  }

  /** Release the ONNX Runtime sessions. */
  async close() {
    const sessions = await Promise.allSettled(this._sessions.values());
    this._sessions.clear();
    await Promise.all(sessions.filter((s) => s.status === "fulfilled" && s.value.release).map((s) => s.value.release()));
  }

  // -- choosing the cut ------------------------------------------------------------------

  async _choose(now) {
    const { plan, net } = this;
    const policy = this._policy;
    const pick = (id, reason, fields) => [plan.cuts.get(id), this._record(id, reason, { device_load: this.deviceLoad, ...fields })];
    if (this.forceCut !== null) return pick(this.forceCut, "forced");
    if (this._deviceOnly[policy.objective]) return pick(plan.fallback, "plan");
    if (net.inBackoff(now)) return pick(plan.fallback, "backoff");
    let probeMs = 0;
    if (!net.needsProbe(now, this.fixedBandwidth === null, this.fixedLoad === null)) {
      // fresh estimates
    } else if (this._hasEstimates()) {
      // Stale, not missing: refresh off the request path and decide on the last estimates.
      this._probeDue = true;
    } else {
      const t = performance.now();
      const ok = await this._probe();
      probeMs = performance.now() - t;
      if (!ok) {
        net.failed(monotonic());
        return pick(plan.fallback, "backoff", { probe_ms: probeMs, error: "server unreachable during probe" });
      }
    }
    const bw = this.fixedBandwidth ?? net.bandwidth.value ?? this.initialBandwidth;
    const load = this.fixedLoad ?? net.load;
    const rtt = net.rtt.value;
    const deviceLoad = this.deviceLoad;
    const t = performance.now();
    // The device load enters the key, and the predictions, as its plan level: every run
    // moves the estimate a little (as Python's CutPolicy).
    const level = plan.deviceLoadRow(deviceLoad);
    // The policy by identity: its text form rounds the numbers, so two policies may share one.
    const key = `${bw}|${load}|${rtt}|${level}`;
    if (key !== this._decision.key || policy !== this._decision.policy) {
      this._decision = { key, policy, ...decidePolicy(plan, policy, bw, load, rtt, plan.deviceLoads[level]) };
    }
    const lookupUs = (performance.now() - t) * 1e3;
    const { cut: cutId, reason, latencyMs, energyMj } = this._decision;
    return pick(cutId, reason, { bandwidth_mbps: bw, load, rtt_ms: rtt, device_load: deviceLoad, lookup_us: lookupUs,
      probe_ms: probeMs, predicted_latency_ms: latencyMs, predicted_energy_mj: energyMj });
  }

  _record(cutId, reason, fields = {}) {
    const cut = this.plan.cuts.get(cutId);
    const policy = this._policy;
    const rec = new RunRecord(cutId, reason, policy.objective, { encoding: cut.encoding, policy: String(policy), ...fields });
    if (cutId === this.plan.fallback && !("predicted_latency_ms" in fields)) {
      // Made without the network estimates (forced, plan, backoff): the all-device cut's prediction needs none.
      [rec.predicted_latency_ms, rec.predicted_energy_mj] = predict(this.plan, cutId, 1, 1, null,
        this.plan.deviceLoads[this.plan.deviceLoadRow(rec.device_load)]);
    }
    const bw = rec.bandwidth_mbps ?? this.fixedBandwidth ?? this.net.bandwidth.value ?? this.initialBandwidth;
    rec.predicted = cut.predictedPhases(bw, rec.load, rec.rtt_ms ?? this.plan.rttMs, this.plan.downlinkMbps, rec.device_load);
    return rec;
  }

  _hasEstimates() {
    return this.fixedBandwidth !== null || this.net.bandwidth.value !== null;
  }

  // -- running ---------------------------------------------------------------------------

  _checkInputs(feeds) {
    const want = this.plan.inputs.map((t) => t.name).sort();
    const got = Object.keys(feeds ?? {}).sort();
    if (JSON.stringify(want) !== JSON.stringify(got)) {
      throw new NscompileError(`inputs ${JSON.stringify(got)} do not match the model's ${JSON.stringify(want)}; pass exactly those`);
    }
    for (const spec of this.plan.inputs) {
      const t = feeds[spec.name];
      if (t === null || typeof t !== "object" || !("type" in t) || !("dims" in t)) {
        throw new NscompileError(`input "${spec.name}" is not a tensor; pass an ort.Tensor`);
      }
      if (t.type !== spec.dtype) {
        throw new NscompileError(`input "${spec.name}" is ${t.type}, the model takes ${spec.dtype}; convert it`);
      }
      if (!shapeMatches(spec.shape, t.dims)) {
        throw new NscompileError(`input "${spec.name}" has shape ${JSON.stringify(Array.from(t.dims))}, the model takes ${JSON.stringify(spec.shape)}`);
      }
    }
  }

  _weightsBytes() {
    this._weights ??= this.dir.read(this.plan.weights);
    return this._weights;
  }

  /** The cut's prefix session, created once (the promise is cached, so concurrent callers share it). */
  _session(cut) {
    let session = this._sessions.get(cut.id);
    if (session === undefined) {
      session = this._createSession(cut);
      this._sessions.set(cut.id, session);
      session.catch(() => this._sessions.delete(cut.id));
    }
    return session;
  }

  async _createSession(cut) {
    const where = this.dir.where(cut.prefix);
    const options = { ...this.sessionOptions };
    let source;
    if (this.dir.local && this.ort.env?.versions?.node) {
      source = where; // onnxruntime-node reads the file, and weights.bin next to it
    } else {
      source = await this.dir.read(cut.prefix);
      if (this.plan.weights) options.externalData = [{ path: this.plan.weights, data: await this._weightsBytes() }];
    }
    try {
      return await this.ort.InferenceSession.create(source, options);
    } catch (exc) {
      throw new NscompileError(`cannot load prefix model ${where} of cut "${cut.id}" (${exc.message}); copy the build's device/ again`);
    }
  }

  /**
   * Run `cut`'s prefix: its milliseconds go to rec[field] and to the device-load estimate.
   *
   * A session made for this request is made outside the timing (its milliseconds go to
   * rec.session_ms), and a session's first run is no sample of the device's speed: in
   * onnxruntime-web it pays one-time costs (kernel set-up, WASM memory growth) that made a
   * 0.5 ms model take 20 ms, which alone would read as a device twice slower than profiled.
   */
  async _runPrefix(cut, feeds, rec, field) {
    const t0 = performance.now();
    const session = await this._session(cut);
    const inputs = {};
    for (const name of session.inputNames) inputs[name] = feeds[name];
    const t1 = performance.now();
    rec.session_ms += t1 - t0;
    const outputs = await session.run(inputs);
    const ms = performance.now() - t1;
    rec[field] = ms;
    if (this._warm.has(cut.id)) this._learnDevice(cut, ms);
    else this._warm.add(cut.id);
    return outputs;
  }

  async _split(cut, feeds, rec) {
    let produced = {};
    if (cut.prefix !== null) produced = await this._runPrefix(cut, feeds, rec, "prefix_ms");
    const upload = {};
    for (const spec of cut.tensors) {
      const tensor = produced[spec.name] ?? feeds[spec.name];
      if (tensor === undefined) throw new NscompileError(`cut "${cut.id}": tensor "${spec.name}" is neither a prefix output nor an input; rebuild`);
      upload[spec.name] = tensor;
    }
    rec.upload_bytes = Object.values(upload).reduce((n, t) => n + t.data.byteLength, 0);
    let remote;
    try {
      if (!this._verified.has(cut.cloudModel)) await this._verify(cut.cloudModel);
      remote = await this._infer(cut.cloudModel, upload);
    } catch (exc) {
      if (!(exc instanceof ServerFailure)) throw exc;
      this._verified.clear(); // the server may come back with other artifacts
      const backoff = this.net.failed(monotonic());
      this._markFallback(rec, `${exc.message}`.slice(0, 300) + ` (retry in ${backoff.toFixed(1)}s)`);
      return null;
    }
    this.net.succeeded();
    rec.encode_ms = remote.encodeMs;
    rec.decode_ms = remote.decodeMs;
    rec.server_ms = remote.serverMs ?? 0;
    rec.transfer_ms = remote.postMs - rec.server_ms;
    rec.upload_ms = Math.max(remote.headersMs - rec.server_ms, 0);
    rec.download_ms = remote.bodyMs;
    rec.download_bytes = remote.downloadBytes;
    this._learn(cut, rec, remote);
    const out = {};
    for (const name of cut.deviceOutputs) out[name] = produced[name];
    Object.assign(out, this._checkOutputs(cut, remote.outputs));
    const missing = this.plan.outputs.map((t) => t.name).filter((n) => !(n in out));
    if (missing.length) {
      this.net.failed(monotonic());
      this._markFallback(rec, `server answer lacks outputs ${JSON.stringify(missing)}`);
      return null;
    }
    return out;
  }

  _markFallback(rec, error) {
    rec.fell_back = true;
    rec.reason = "fallback";
    rec.encoding = null; // nothing crossed the link
    rec.error = error;
  }

  /** The server's outputs as ort.Tensor, after checking them against the plan's graph outputs. */
  _checkOutputs(cut, outputs) {
    const specs = new Map(this.plan.outputs.map((t) => [t.name, t]));
    const where = `server ${this.serverUrl} model "${cut.cloudModel}"`;
    const result = {};
    for (const [name, t] of Object.entries(outputs)) {
      const spec = specs.get(name);
      if (spec === undefined || cut.deviceOutputs.includes(name)) {
        throw new NscompileError(`${where} answered output "${name}", which plan.json's model.outputs does not expect from it; `
          + "serve the cloud/ directory of the same build as this device/");
      }
      if (t.type !== spec.dtype || !shapeMatches(spec.shape, t.dims)) {
        throw new NscompileError(`${where} answered output "${name}" as ${t.type} ${JSON.stringify(t.dims)}, `
          + `plan.json's model.outputs says ${spec.dtype} ${JSON.stringify(spec.shape)}; serve the cloud/ directory of the same build`);
      }
      result[name] = new this.ort.Tensor(t.type, t.data, t.dims);
    }
    return result;
  }

  /** fetch with the runner's deadline; network errors, timeouts and error statuses become ServerFailure. */
  async _call(path, init = {}) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.deadlineMs);
    const t0 = performance.now();
    try {
      const response = await this._fetch(this.serverUrl + path, { ...init, signal: controller.signal });
      const headersMs = performance.now() - t0;
      const body = new Uint8Array(await response.arrayBuffer());
      return { response, body, headersMs, totalMs: performance.now() - t0 };
    } catch (exc) {
      const why = exc.name === "AbortError" ? `no answer within the ${this.deadlineMs} ms deadline` : exc.message;
      throw new ServerFailure(`${init.method ?? "GET"} ${this.serverUrl}${path}: ${why}`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Refuse to pair this plan with a server model built from another network. */
  async _verify(model) {
    const { response, body } = await this._call(`/v2/models/${encodeURIComponent(model)}/config`);
    if (response.status === 404) {
      throw new NscompileError(`server ${this.serverUrl} does not serve model "${model}"; serve the cloud/ `
        + "directory of the same build as this device/");
    }
    if (!response.ok) throw new ServerFailure(`server answered ${response.status} to the config of "${model}"`);
    let sha;
    try {
      sha = JSON.parse(new TextDecoder().decode(body)).parameters?.[SHA_PARAMETER]?.string_value;
    } catch {
      throw new ServerFailure(`server's config of "${model}" is not JSON`);
    }
    if (sha !== this.plan.modelSha256) {
      throw new NscompileError(`server model "${model}" was built from model sha256 ${sha || "unknown"}, this device's `
        + `plan from ${this.plan.modelSha256}; deploy device/ and cloud/ of the same build`);
    }
    this._verified.add(model);
  }

  async _infer(model, upload) {
    const t0 = performance.now();
    let message;
    try {
      message = encodeRequest(upload);
    } catch (exc) {
      throw new NscompileError(`cannot send the cut tensors of model "${model}": ${exc.message}`);
    }
    const t1 = performance.now();
    const { response, body, headersMs, totalMs } = await this._call(`/v2/models/${encodeURIComponent(model)}/infer`, {
      method: "POST",
      body: message.body,
      headers: message.headers,
    });
    if (response.status !== 200) {
      const text = new TextDecoder().decode(body.subarray(0, 200));
      throw new ServerFailure(`server answered ${response.status}: ${text}`);
    }
    const t2 = performance.now();
    let outputs;
    try {
      ({ outputs } = decodeResponse(body, response.headers.get(HEADER_LENGTH)));
    } catch (exc) {
      if (!(exc instanceof ProtocolError)) throw exc;
      throw new ServerFailure(`server model "${model}" answered a malformed message: ${exc.message}`);
    }
    return {
      outputs,
      encodeMs: t1 - t0,
      postMs: totalMs,
      headersMs,
      bodyMs: totalMs - headersMs,
      serverMs: headerNumber(response.headers, SERVER_MS_HEADER),
      decodeMs: performance.now() - t2,
      downloadBytes: body.length,
      load: headerNumber(response.headers, LOAD_HEADER),
    };
  }

  // -- measuring -------------------------------------------------------------------------

  /** Note that the device ran `cut`'s prefix (the whole model for all-device) in `measuredMs` (Python's learn_device). */
  _learnDevice(cut, measuredMs) {
    this.device.add(measuredMs, Number(cut.predicted.device_ms ?? 0));
  }

  /** Update the estimates from one completed transfer (as the Python runner's _learn). */
  _learn(cut, rec, remote) {
    const now = monotonic();
    if (remote.load !== null) this.net.setLoad(remote.load, now);
    let serverMs = remote.serverMs;
    if (serverMs === null) serverMs = Number(cut.predicted.cloud_ms ?? 0) * this.net.load; // Triton: the plan's guess
    const wireMs = remote.postMs - serverMs;
    const rtt = this.net.rtt.value;
    if (rec.upload_bytes < 2048) {
      this.net.rtt.add(Math.max(wireMs, 0.01), now);
    } else if (rtt !== null && rec.upload_bytes >= 8192) {
      let transferMs = wireMs - rtt;
      if (this.plan.downlinkMbps) transferMs -= (remote.downloadBytes * 8e-3) / Number(this.plan.downlinkMbps);
      if (transferMs > 0.05) this.net.bandwidth.add((rec.upload_bytes * 8e-3) / transferMs, now);
    }
  }

  _probeInBackground() {
    if (this._probing) return;
    this._probing = this._probe().then((ok) => {
      if (!ok) this.net.failed(monotonic());
    }).finally(() => {
      this._probing = null;
    });
  }

  /** Measure RTT, load and (where the server allows) uplink bandwidth; false if unreachable. */
  async _probe() {
    const net = this.net;
    const now = monotonic();
    // A stale estimate describes a link that may be gone: the probe's sample starts it over.
    const stale = new Set([net.bandwidth, net.rtt].filter((est) => now - est.updatedAt > net.staleS));
    const record = (est, sample) => {
      if (stale.has(est)) est.reset();
      est.add(sample, now);
    };
    try {
      const rtts = [];
      let answer;
      for (let i = 0; i < 2; i++) { // the first may pay for opening the connection
        answer = await this._call(LOAD_PATH);
        rtts.push(answer.totalMs);
        if (answer.response.status !== 200) break;
      }
      if (answer.response.status === 200) {
        let load = null;
        try {
          load = Number(JSON.parse(new TextDecoder().decode(answer.body)).load);
        } catch {
          load = null;
        }
        net.setLoad(Number.isFinite(load) && load > 0 ? load : 1, now);
      } else { // not nscompile serve: check liveness the standard way
        const ready = await this._call("/v2/health/ready");
        if (ready.response.status !== 200) return false;
        rtts.push(ready.totalMs);
        this._probeSupported = false;
      }
      const rtt = Math.min(...rtts);
      record(net.rtt, Math.max(rtt, 0.01));
      if (this.fixedBandwidth !== null) return true;
      if (!this._probeSupported) {
        if (net.bandwidth.value === null || stale.has(net.bandwidth)) record(net.bandwidth, this.initialBandwidth);
        else net.bandwidth.updatedAt = now;
        return true;
      }
      let [size, limit] = this.probeBytes;
      let times = [];
      for (let i = 0; i < 16; i++) { // bounded: sizes grow 4x up to `limit`, then one repeat
        const r = await this._call(PROBE_PATH, { method: "POST", body: new Uint8Array(size) });
        times.push(r.totalMs);
        if (r.response.status !== 200) {
          this._probeSupported = r.response.status !== 404;
          return true;
        }
        if (times[times.length - 1] - rtt < 20 && size < limit) {
          size = Math.min(size * 4, limit);
          times = [];
        } else if (times.length === 2) {
          break;
        }
      }
      // Stalls only ever add time, so the faster of two equal transfers is the better sample.
      record(net.bandwidth, (size * 8e-3) / Math.max(Math.min(...times) - rtt, 0.05));
      return true;
    } catch (exc) {
      if (exc instanceof ServerFailure) return false;
      throw exc;
    }
  }
}
