// The demo page: one input through the split in this browser, and what the runner decided.
//
// Served by `nscompile demo BUILD_DIR` with the device directory under /device/, the
// runner under /runner/, onnxruntime-web under /ort/ and /demo/config.json (the server's
// URL, the build's per-layer rows and each cut's device nodes). Shows the chosen cut on
// the layer chart, the time split predicted against measured, the bytes sent and the
// decision map. window.nscompileDemo holds the last record (the browser test compares
// the page's numbers with it); window.nscompileDemoDone resolves after the first run.

import * as ort from "/ort/ort.wasm.min.mjs";
import { SplitRunner } from "/runner/split_runner.js";
import { TYPES } from "/runner/protocol.js";

ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = "/ort/";

const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 2) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits));

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function status(text, state = "ok") {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

/** A seeded input for every graph input: normal floats (mulberry32 + Box-Muller), zero indices. */
function makeFeeds(plan, seed = 1) {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const feeds = {};
  for (const spec of plan.inputs) {
    const dims = spec.shape.map((d) => (d > 0 ? d : 1));
    const n = dims.reduce((a, b) => a * b, 1);
    const data = new TYPES[spec.dtype][1](n);
    if (spec.dtype.startsWith("float") && spec.dtype !== "float16") {
      for (let i = 0; i < n; i++) data[i] = Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
    }
    feeds[spec.name] = new ort.Tensor(spec.dtype, data, dims);
  }
  return feeds;
}

function drawLayers(config, plan, cutId) {
  const cut = plan.cuts.get(cutId);
  const onDevice = cut.allDevice ? null : new Set(config.cut_nodes[cutId] ?? []);
  const rows = config.layers;
  const max = Math.max(...rows.map((r) => r.device_ms), 1e-9);
  const box = $("layers");
  box.replaceChildren();
  let last = -1;
  rows.forEach((r, i) => {
    const device = onDevice === null || onDevice.has(r.node);
    if (device) last = i;
    const bar = el("div", {
      class: `layer ${device ? "device" : "server"}`,
      title: `${r.node} (${r.op}): ${fmt(r.device_ms, 3)} ms on the device, ${fmt(r.cloud_ms, 3)} ms on the server, output ${fmt(r.output_kb, 1)} KB`,
      "data-node": r.node,
      "data-side": device ? "device" : "server",
    });
    bar.style.height = `${Math.max(2, 100 * Math.sqrt(r.device_ms / max))}%`;
    box.append(bar);
  });
  // The cut line after the last layer on the device (none: all on the server; all: all on the device).
  if (last >= 0 && last < rows.length - 1) box.children[last].classList.add("cut");
}

function drawTimes(rec) {
  const p = rec.predicted ?? {};
  const rows = [
    ["device", p.device_ms, rec.prefix_ms + rec.fallback_ms],
    ["upload", p.upload_ms, rec.upload_ms],
    ["server", p.server_ms, rec.server_ms],
    ["download", p.download_ms, rec.download_ms],
    ["rtt", p.rtt_ms, rec.server_ms > 0 ? rec.rtt_ms : 0], // measured inside upload + download; shown: the estimate
    ["total", p.total_ms, rec.total_ms],
  ];
  const scale = Math.max(...rows.map(([, a, b]) => Math.max(a ?? 0, b ?? 0)), 1e-9);
  const body = $("times").querySelector("tbody");
  body.replaceChildren();
  for (const [phase, predicted, measured] of rows) {
    const tr = el("tr", { "data-phase": phase });
    tr.append(el("td", {}, phase === "rtt" ? "round trip (runner's estimate)" : phase));
    tr.append(el("td", { "data-kind": "predicted" }, fmt(predicted)));
    tr.append(el("td", { "data-kind": "measured" }, fmt(measured)));
    const bars = el("td", { class: "bars" });
    for (const [cls, v] of [["p", predicted], ["m", measured]]) {
      const b = el("div", { class: cls });
      b.style.width = `${Math.round(240 * (v ?? 0) / scale)}px`;
      bars.append(b);
    }
    tr.append(bars);
    body.append(tr);
  }
  $("upload-bytes").textContent = `${rec.upload_bytes} B`;
  $("download-bytes").textContent = `${rec.download_bytes} B`;
  $("encoding").textContent = rec.encoding ?? "none (nothing sent)";
}

function drawMap(plan, objective, rec, colours) {
  const grid = plan.raw.grid;
  // The map of the device-load level the runner decided at, where the plan has that axis.
  const level = plan.deviceLoadRow(rec.device_load ?? 1);
  const byLevel = (plan.raw.device_tables ?? {})[objective];
  const table = byLevel ? byLevel[level] : (plan.raw.tables ?? {})[objective] ?? plan.raw.table;
  $("map-objective").textContent = byLevel ? `${objective}, device load Kd=${plan.deviceLoads[level]}` : objective;
  const starts = grid.bandwidth_mbps;
  const bw = rec.bandwidth_mbps;
  const row = plan.loadRow(rec.load ?? 1);
  let col = -1;
  if (bw !== null && bw !== undefined) starts.forEach((b, i) => { if (b <= bw) col = i; });
  if (col < 0 && bw !== null && bw !== undefined) col = 0;
  const t = el("table");
  table.forEach((cells, l) => {
    const tr = el("tr");
    tr.append(el("th", {}, `K=${grid.load[l]}`));
    cells.forEach((cutId, b) => {
      const td = el("td", { title: `${cutId} @ ${starts[b]} Mbps, K=${grid.load[l]}`, "data-cut": cutId });
      td.style.background = colours.get(cutId);
      if (l === row && b === col) {
        td.textContent = "◉";
        td.id = "map-here";
      }
      tr.append(td);
    });
    t.append(tr);
  });
  const ticks = el("tr");
  ticks.append(el("th"));
  starts.forEach((b, i) => ticks.append(el("th", {}, i % 4 === 0 ? String(Number(b.toPrecision(3))) : "")));
  t.append(ticks);
  $("map").replaceChildren(t);
  const legend = $("map-legend");
  legend.replaceChildren();
  for (const [id, c] of colours) {
    const sw = el("span", { class: "sw" });
    sw.style.background = c;
    legend.append(sw, document.createTextNode(id));
  }
}

function show(config, runner, rec) {
  const plan = runner.plan;
  const colours = new Map([...plan.cuts.keys()].map((id, i) => [id, PALETTE[i % PALETTE.length]]));
  $("chosen").textContent = rec.cut;
  $("reason").textContent = `(${rec.reason})`;
  $("conditions").textContent = rec.bandwidth_mbps === null
    ? "forced: the runner decided nothing (predictions at its last estimates)"
    : `decided for uplink ${fmt(rec.bandwidth_mbps)} Mbps, server load K=${fmt(rec.load)}, RTT ${fmt(rec.rtt_ms)} ms, `
      + `device load Kd=${fmt(rec.device_load)}`;
  const notice = $("notice");
  if (rec.reason === "backoff" || rec.reason === "fallback") {
    notice.hidden = false;
    notice.textContent = `No answer from the server ${runner.serverUrl} (${rec.error ?? "it failed recently"}): `
      + `this input ran entirely on this device (the all-device cut "${plan.fallback}").`;
  } else {
    notice.hidden = true;
  }
  drawLayers(config, plan, rec.fell_back || rec.reason === "backoff" ? plan.fallback : rec.cut);
  drawTimes(rec);
  drawMap(plan, runner.objective, rec, colours);
  $("record").textContent = JSON.stringify(rec, null, 1);
}

async function main() {
  const config = await (await fetch("/demo/config.json")).json();
  $("server").textContent = config.server;
  const params = new URLSearchParams(location.search);
  const runner = await SplitRunner.open("/device/", config.server, { ort, objective: params.get("objective") ?? "latency" });
  const plan = runner.plan;
  $("model").textContent = plan.modelName;
  $("profiles").textContent = `device profile ${plan.raw.profiles?.device?.name ?? "?"} · server profile `
    + `${plan.raw.profiles?.cloud?.name ?? "?"} · ${plan.cuts.size} cuts emitted`;
  for (const o of plan.objectives) $("objective").append(el("option", { value: o }, o));
  $("objective").value = runner.objective;
  for (const id of plan.cuts.keys()) $("cut").append(el("option", { value: id }, id));
  const feeds = makeFeeds(plan);

  async function runOnce() {
    $("run").disabled = true;
    status("running…");
    runner.objective = $("objective").value;
    runner.forceCut = $("cut").value || null;
    const { record } = await runner.run(feeds);
    const rec = record.asDict();
    window.nscompileDemo = { record: rec, plan: plan.raw };
    show(config, runner, rec);
    status(rec.fell_back || rec.reason === "backoff" ? "done, on the device only" : "done");
    $("run").disabled = false;
    return rec;
  }
  $("run").addEventListener("click", () => runOnce().catch(fail));
  status("ready");
  $("run").disabled = false;
  if (params.get("autorun") !== "0") return runOnce();
  return null;
}

function fail(exc) {
  status(`${exc.name}: ${exc.message}`, "error");
  throw exc;
}

window.nscompileDemoDone = main().catch(fail);
