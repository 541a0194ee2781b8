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
 * configure({forceCut, fresh}); close(). feedSpec: {name: {type, dims, url}}.
 */
export function makeHarness(ort) {
  let runner = null;
  const feedCache = new Map();

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
    configure({ forceCut = null, fresh = false } = {}) {
      runner.forceCut = forceCut;
      if (fresh) runner.resetEstimates();
      return null;
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
