// The harness in Node, on a JSON line protocol (one command per line on stdin, one
// "@@{...}" answer per command on stdout, as tools/browser.js):
//   {"op": "call", "fn": "open" | "run" | "configure" | "waitForProbe" | "close", "args": [...]}
//   {"op": "quit"}
// ONNX Runtime is onnxruntime-web (WASM, one thread) unless --ort names another module
// (e.g. onnxruntime-node).

import { createInterface } from "node:readline";
import { makeHarness } from "./harness.js";

const i = process.argv.indexOf("--ort");
const ort = await import(i >= 0 ? process.argv[i + 1] : "onnxruntime-web");
if (ort.env?.wasm) ort.env.wasm.numThreads = 1;
const harness = makeHarness(ort);
const answer = (obj) => process.stdout.write("@@" + JSON.stringify(obj) + "\n");

answer({ ok: true, value: { ort: ort.env?.versions ?? null } }); // ready
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  if (cmd.op === "quit") break;
  try {
    answer({ ok: true, value: (await harness[cmd.fn](...(cmd.args ?? []))) ?? null });
  } catch (exc) {
    answer({ ok: false, error: String(exc?.message ?? exc) });
  }
}
await harness.close();
