// Timing ONNX models with onnxruntime-web the way the browser runtime runs them, for
// `nscompile profile --web` (nscompile/profiler/web.py).
//
// window.nscompileProfile.time(request) times one model as nscompile/profiler/timing.py's
// time_session does natively: two warm-up runs, one run to size the batches, then batches
// of at least min_batch_s seconds; the answer is the median or minimum batch mean, in ms.
// On the "cpu" clock the batches are timed in CPU time of the page's main thread (where
// the WASM runs), which tools/browser.js reads for the page (window.nscompileCpuMs):
// other processes' time slices on a shared machine do not count. Each reading costs the
// page a few tenths of a millisecond, so batches last at least 50 ms there and the
// reading's own cost, measured on empty pairs, is taken off. On the "wall" clock:
// performance.now(). Sessions are made with full graph optimisation, sequential
// execution, one thread; the last few stay cached by key (the reference models come back
// every second).

import * as ort from "/ort/ort.wasm.min.mjs";
import { TYPES } from "../protocol.js";

ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = "/ort/";
const CACHED = 4;
const cache = new Map(); // key -> {session, feeds}

async function load({ key, model, feeds }) {
  let entry = cache.get(key);
  if (entry) {
    cache.delete(key);
    cache.set(key, entry); // most recently used last
    return entry;
  }
  const bytes = new Uint8Array(await (await fetch(model)).arrayBuffer());
  const session = await ort.InferenceSession.create(bytes, {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
    executionMode: "sequential",
    logSeverityLevel: 3,
  });
  const tensors = {};
  for (const { name, type, dims, url } of feeds) {
    const data = await (await fetch(url)).arrayBuffer();
    tensors[name] = new ort.Tensor(type, new TYPES[type][1](data), dims);
  }
  entry = { session, feeds: tensors };
  cache.set(key, entry);
  while (cache.size > CACHED) {
    const [oldKey, old] = cache.entries().next().value;
    cache.delete(oldKey);
    await old.session.release();
  }
  return entry;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

const CPU_MIN_BATCH_S = 0.05;

async function cpuClockWorks() {
  return typeof window.nscompileCpuMs === "function" && (await window.nscompileCpuMs()) !== null;
}

/** [now() in ms, what one reading costs in ms] for the clock. */
async function clockFor(clock) {
  if (clock !== "cpu") return [async () => performance.now(), 0];
  const now = window.nscompileCpuMs;
  const pairs = [];
  for (let i = 0; i < 5; i++) pairs.push(-(await now()) + (await now()));
  return [now, median(pairs)];
}

/**
 * A CPU-clock interval checked against the wall clock's: a CPU clock that stopped (a lost
 * renderer) must not pass. Short intervals are left alone: a reading's round trip alone
 * takes a few ms of wall time, while the page waits.
 */
function checked(cpuMs, wallMs) {
  if (wallMs > 20 && !(cpuMs > 0.02 * wallMs)) {
    throw new Error(`the page's CPU clock advanced ${cpuMs} ms in ${wallMs} ms of wall time: it is not this page's; `
      + "find the renderer again");
  }
  return cpuMs;
}

async function timeSession({ session, feeds }, { budget_s = 0.25, min_batch_s = 0.004, max_repeats = 15, min_repeats = 5,
  stat = "min", clock = "wall" }) {
  const [now, reading] = await clockFor(clock);
  const cpu = clock === "cpu";
  if (cpu) min_batch_s = Math.max(min_batch_s, CPU_MIN_BATCH_S);
  const run = () => session.run(feeds);
  const elapsed = async (t0, w0) => {
    const dt = (await now()) - t0 - reading;
    return cpu ? checked(dt, performance.now() - w0) : dt;
  };
  for (let i = 0; i < 2; i++) await run(); // warm-up: first runs allocate and pick kernels
  let [t0, w0] = [await now(), performance.now()];
  await run();
  const one = Math.max((await elapsed(t0, w0)) / 1e3, 1e-6);
  const batch = Math.max(1, Math.floor(min_batch_s / one + 0.5));
  const repeats = Math.trunc(Math.min(Math.max(budget_s / (batch * one), min_repeats), max_repeats));
  const means = [];
  for (let r = 0; r < repeats; r++) {
    [t0, w0] = [await now(), performance.now()];
    for (let b = 0; b < batch; b++) await run();
    means.push(Math.max(await elapsed(t0, w0), 1e-6) / batch);
  }
  return stat === "min" ? Math.min(...means) : median(means);
}

window.nscompileProfile = {
  /** {key, model: URL, feeds: [{name, type, dims, url}], budget_s, ...} -> ms per run. */
  async time(request) {
    return timeSession(await load(request), request);
  },
  /** What the page runs on, and whether the "cpu" clock can be read here. */
  async versions() {
    return {
      ort: ort.env.versions.web ?? ort.env.versions.common,
      crossOriginIsolated: globalThis.crossOriginIsolated,
      cpuClock: await cpuClockWorks(),
    };
  },
};
document.getElementById("status").textContent = "ready";
window.nscompileReady = true;
