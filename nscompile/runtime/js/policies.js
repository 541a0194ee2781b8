// What a device optimises: one objective, or a point on the latency-energy front, as
// nscompile/runtime/policies.py has them (keep the two in step: the same text forms, the
// same choices, the same fallbacks).
//
// - "latency" and "energy": the plan's tables (exact breakpoints over bandwidth);
// - slo(latency_ms=X): the least energy whose predicted latency is within X; if no cut
//   is predicted to meet it, the fastest (reason "unmet");
// - budget(energy_mj=Y): the fastest whose predicted energy is within Y; if none is, the
//   least energy (reason "unmet");
// - weighted(LAM): the least latency_ms + LAM * energy_mj, ties to the faster.
//
// The last three choose on Plan.paretoFront: the plan's front for the condition,
// evaluated at the conditions the device measures.

import { NscompileError } from "./errors.js";

/** The objectives a plan has tables for; as policies they read those tables. */
export const OBJECTIVE_NAMES = ["latency", "energy"];

/** Python's "%g": six significant digits, trailing zeros dropped, an exponent of two digits at least. */
export function formatG(x) {
  if (x === 0) return Object.is(x, -0) ? "-0" : "0";
  const [mantissa, expText] = x.toExponential(5).split("e");
  const exp = Number(expText);
  const strip = (s) => (s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s);
  if (exp >= -4 && exp < 6) return strip(x.toFixed(5 - exp));
  return `${strip(mantissa)}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
}

function finite(kind, name, value) {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new NscompileError(`${kind}(${name}=${String(value)}): ${name} must be a finite number`);
  }
  return value;
}

function positive(kind, name, value, unit) {
  const x = finite(kind, name, value);
  if (x <= 0) throw new NscompileError(`${kind}(${name}=${String(value)}): ${name} must be a positive number of ${unit}`);
  return x;
}

/**
 * A rule that picks one point of a latency-energy front.
 *
 * objective: what the record reports as its objective (the table's name, or "pareto");
 * usesTables: the policy reads the plan's per-objective tables rather than the front.
 */
export class Policy {
  get objective() {
    return "pareto";
  }

  get usesTables() {
    return false;
  }

  /**
   * The point of `front` (fastest first, energy falling) this policy takes, and whether its
   * target was met (false: a fallback, e.g. an SLO no cut meets).
   * @returns {[object, boolean]}
   */
  pick(front) { // eslint-disable-line no-unused-vars
    throw new Error("Policy.pick is abstract");
  }
}

/** Optimise one objective of the plan's tables: "latency" or "energy". */
export class Objective extends Policy {
  constructor(name) {
    super();
    if (!OBJECTIVE_NAMES.includes(name)) {
      throw new NscompileError(`unknown objective ${JSON.stringify(name)}; use one of ${OBJECTIVE_NAMES.join(", ")}`);
    }
    this.name = name;
    Object.freeze(this);
  }

  get objective() {
    return this.name;
  }

  get usesTables() {
    return true;
  }

  pick(front) {
    return [this.name === "latency" ? front[0] : front[front.length - 1], true];
  }

  toString() {
    return this.name;
  }
}

/** The least energy whose predicted latency is within latencyMs; else the fastest. */
export class SLO extends Policy {
  constructor(latencyMs) {
    super();
    this.latencyMs = positive("slo", "latency_ms", latencyMs, "milliseconds");
    Object.freeze(this);
  }

  pick(front) {
    const within = front.filter((p) => p.latency_ms <= this.latencyMs);
    // Energy falls along the front, so the slowest point within the SLO spends the least.
    return within.length ? [within[within.length - 1], true] : [front[0], false];
  }

  toString() {
    return `slo(latency_ms=${formatG(this.latencyMs)})`;
  }
}

/** The fastest whose predicted energy is within energyMj; else the least energy. */
export class Budget extends Policy {
  constructor(energyMj) {
    super();
    this.energyMj = positive("budget", "energy_mj", energyMj, "millijoules");
    Object.freeze(this);
  }

  pick(front) {
    const within = front.filter((p) => p.energy_mj <= this.energyMj);
    return within.length ? [within[0], true] : [front[front.length - 1], false];
  }

  toString() {
    return `budget(energy_mj=${formatG(this.energyMj)})`;
  }
}

/** The least latency_ms + lam * energy_mj (lam in ms per mJ, >= 0); ties go to the faster. */
export class Weighted extends Policy {
  constructor(lam) {
    super();
    const x = finite("weighted", "lam", lam);
    if (x < 0) throw new NscompileError(`weighted(lam=${String(lam)}): lam must be >= 0 (ms per mJ; 0 is latency only)`);
    this.lam = x;
    Object.freeze(this);
  }

  pick(front) {
    let best = front[0];
    let score = best.latency_ms + this.lam * best.energy_mj;
    for (const p of front.slice(1)) {
      const s = p.latency_ms + this.lam * p.energy_mj;
      if (s < score) { // strictly: the first (faster) of equal scores stays, as Python's min()
        best = p;
        score = s;
      }
    }
    return [best, true];
  }

  toString() {
    return `weighted(${formatG(this.lam)})`;
  }
}

/** slo(latency_ms) etc.: the policies by the names of Python's makers. */
export const slo = (latencyMs) => new SLO(latencyMs);
export const budget = (energyMj) => new Budget(energyMj);
export const weighted = (lam) => new Weighted(lam);

const CALL = /^\s*(slo|budget|weighted)\s*\(\s*(?:([\p{L}\p{N}_]+)\s*=\s*)?([^()=\s]+)\s*\)\s*$/u;
const ARGUMENT = { slo: "latency_ms", budget: "energy_mj", weighted: "lam" };
const MAKERS = { slo, budget, weighted };
// The numbers Python's float() reads: decimals with optional underscores between digits, inf, nan.
const DIGITS = "\\d(?:_?\\d)*";
const FLOAT = new RegExp(`^[+-]?(?:(?:${DIGITS}(?:\\.(?:${DIGITS})?)?|\\.${DIGITS})(?:[eE][+-]?${DIGITS})?|inf(?:inity)?|nan)$`, "i");

function parseFloatLikePython(text) {
  if (!FLOAT.test(text)) return null;
  const body = text.replace(/_/g, "").toLowerCase();
  if (body.includes("nan")) return NaN;
  if (body.includes("inf")) return body.startsWith("-") ? -Infinity : Infinity;
  return Number(body);
}

const UNKNOWN = "use latency, energy, slo(latency_ms=X), budget(energy_mj=Y) or weighted(LAM), "
  + "or the objects {slo: X}, {budget: Y}, {weighted: LAM}";

/**
 * A policy from itself, its text form (Python's as_policy reads the same text) or an object.
 *
 * @param {string|Policy|object} value a Policy; "latency", "energy", "slo(latency_ms=X)",
 *   "budget(energy_mj=Y)", "weighted(LAM)" (the keyword may be left out); or {slo: X},
 *   {budget: Y}, {weighted: LAM}
 * @returns {Policy}
 * @throws {NscompileError} anything else, naming the forms that are understood
 */
export function asPolicy(value) {
  if (value instanceof Policy) return value;
  if (typeof value === "string") {
    const text = value.trim();
    if (OBJECTIVE_NAMES.includes(text)) return new Objective(text);
    const match = CALL.exec(text);
    if (match) {
      const [, kind, keyword, number] = match;
      if (keyword !== undefined && keyword !== ARGUMENT[kind]) {
        throw new NscompileError(`policy ${JSON.stringify(value)}: ${kind}() takes ${ARGUMENT[kind]}=, not ${keyword}=`);
      }
      const parsed = parseFloatLikePython(number);
      if (parsed === null) throw new NscompileError(`policy ${JSON.stringify(value)}: ${JSON.stringify(number)} is not a number`);
      return MAKERS[kind](parsed);
    }
  } else if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] in MAKERS) return MAKERS[keys[0]](value[keys[0]]);
  }
  throw new NscompileError(`unknown policy ${typeof value === "string" ? JSON.stringify(value) : String(JSON.stringify(value))}; ${UNKNOWN}`);
}

/**
 * Check that `plan` can follow `policy`: the objective's table, or the fronts and energy model.
 *
 * @throws {NscompileError} naming what the plan lacks
 */
export function checkPolicy(plan, policy) {
  if (policy.usesTables && !plan.objectives.includes(policy.objective)) {
    throw new NscompileError(`objective "${policy.objective}" is not in the plan; use one of ${JSON.stringify(plan.objectives)}`);
  }
  const missing = policy.usesTables ? [] : plan.missingParetoFields;
  if (missing.length) {
    throw new NscompileError(`policy "${policy}" needs the plan's latency-energy fronts but plan.json lacks `
      + `${missing.map((f) => `'${f}'`).join(" and ")}; rebuild it with this nscompile, or use latency or energy`);
  }
}

/**
 * The plan's latency and energy of `cutId` at these conditions (Python's CutPolicy._predict):
 * null where the plan cannot say (no cloud_ms or device_ms; energy: no energy model).
 * @returns {[number|null, number|null]}
 */
export function predict(plan, cutId, bw, load, rttMs, deviceLoad) {
  const cut = plan.cuts.get(cutId);
  const down = plan.downlinkMbps ? Number(plan.downlinkMbps) : null;
  const rtt = rttMs ?? plan.rttMs;
  if (!((cut.allDevice ? "device_ms" : "cloud_ms") in cut.predicted)) return [null, null];
  const latency = cut.latencyMs(bw, load, rtt, down, deviceLoad);
  let energy = null;
  if (cut.energy !== null) {
    try {
      energy = cut.energyMj(bw, load, rtt, down, deviceLoad);
    } catch (exc) {
      if (!(exc instanceof NscompileError)) throw exc;
    }
  }
  return [latency, energy];
}

/**
 * The runner's decision for these estimates (Python's CutPolicy._decide): the table's cut
 * (all-device where the measured RTT makes that faster) for latency and energy, the
 * policy's point of the front otherwise.
 *
 * @param {Plan} plan
 * @param {Policy} policy
 * @param {number} bw uplink Mbit/s
 * @param {number} load server slowdown K
 * @param {number|null} rttMs the measured RTT (null: none yet)
 * @param {number} deviceLoad Kd as the plan level it falls on (the caller's plan.deviceLoads[row])
 * @returns {{cut: string, reason: string, latencyMs: number|null, energyMj: number|null}}
 */
export function decidePolicy(plan, policy, bw, load, rttMs, deviceLoad) {
  if (policy.usesTables) {
    const { cut, reason } = plan.decide(bw, load, rttMs, policy.objective, deviceLoad);
    const [latencyMs, energyMj] = predict(plan, cut, bw, load, rttMs, deviceLoad);
    return { cut, reason, latencyMs, energyMj };
  }
  const [point, met] = policy.pick(plan.paretoFront(bw, load, rttMs, null, deviceLoad));
  return { cut: point.cut, reason: met ? "pareto" : "unmet", latencyMs: point.latency_ms, energyMj: point.energy_mj };
}
