// The runner driven from outside (the Python tests and the browser benchmark), the same
// in a page (page.js) and in Node (node_harness.js): feeds arrive as URLs of raw bytes,
// outputs and records leave as JSON, errors as {error: {name, message}}.

import { SplitRunner } from "../split_runner.js";
import { TYPES } from "../protocol.js";

/** A tensor as JSON: {type, dims, data}, 64-bit integers as numbers (the tests' values are small). */
export function tensorJson(t) {
  return { type: t.type, dims: Array.from(t.dims), data: Array.from(t.data, (v) => (typeof v === "bigint" ? Number(v) : v)) };
}

async function settle(work) {
  try {
    return await work();
  } catch (exc) {
    return { error: { name: exc.name, message: exc.message } };
  }
}

/**
 * The harness's calls, bound to one ONNX Runtime module.
 *
 * open(device, server, options) -> {fallback, cuts}; run(feedSpec, {outputs}) -> {outputs, record};
 * configure({forceCut, fresh, staleS, deviceLoad, policy}); slowDown(cutId, ms); close().
 * feedSpec: {name: {type, dims, url}}.
 */
export function makeHarness(ort) {
  let runner = null;
  const feedCache = new Map();
  const slowed = new Map(); // cut id -> the real session, while slowDown wraps it

  async function fetchFeeds(spec) {
    const feeds = {};
    for (const [name, { type, dims, url }] of Object.entries(spec)) {
      let bytes = feedCache.get(url);
      if (bytes === undefined) {
        const response = await fetch(url);
        if (!response.ok) throw new Error(`feed ${url}: HTTP ${response.status}`);
        bytes = await response.arrayBuffer();
        feedCache.set(url, bytes);
      }
      feeds[name] = new ort.Tensor(type, new TYPES[type][1](bytes.slice(0)), dims);
    }
    return feeds;
  }

  return {
    get runner() {
      return runner;
    },
    open(device, server, options = {}) {
      return settle(async () => {
        if (runner) await runner.close();
        runner = null;
        slowed.clear();
        runner = await SplitRunner.open(device, server, { ort, ...options });
        return { fallback: runner.plan.fallback, cuts: [...runner.plan.cuts.keys()] };
      });
    },
    run(feedSpec, { outputs: withOutputs = true } = {}) {
      return settle(async () => {
        const { outputs, record } = await runner.run(await fetchFeeds(feedSpec));
        const json = withOutputs ? Object.fromEntries(Object.entries(outputs).map(([n, t]) => [n, tensorJson(t)])) : null;
        return { outputs: json, record: record.asDict() };
      });
    },
    configure({ forceCut = null, fresh = false, staleS, deviceLoad, policy } = {}) {
      return settle(async () => {
        if (policy !== undefined) runner.policy = policy; // first: a policy the plan cannot follow changes nothing
        runner.forceCut = forceCut;
        if (fresh) runner.resetEstimates();
        if (staleS !== undefined) runner.net.staleS = staleS;
        if (deviceLoad !== undefined) runner.fixedDeviceLoad = deviceLoad;
        return null;
      });
    },
    // Tests: make the device slow for one cut's prefix (another app on the CPU), by `ms`
    // more per run; 0 restores the real session.
    slowDown(cutId, ms) {
      return settle(async () => {
        const real = slowed.get(cutId) ?? await runner._session(runner.plan.cuts.get(cutId));
        slowed.set(cutId, real);
        const session = ms > 0 ? {
          inputNames: real.inputNames,
          outputNames: real.outputNames,
          run: async (...args) => {
            await new Promise((r) => setTimeout(r, ms));
            return real.run(...args);
          },
          release: () => real.release(),
        } : real;
        runner._sessions.set(cutId, Promise.resolve(session));
        return null;
      });
    },
    async waitForProbe() {
      await runner.waitForProbe();
      return null;
    },
    async close() {
      if (runner) await runner.close();
      runner = null;
      return null;
    },
  };
}
