// The harness in a page (page.html): window.nscompile holds its calls, as harness.js
// describes them. Served with the runner under /runner/ and onnxruntime-web's dist/ under /ort/.

import * as ort from "/ort/ort.wasm.min.mjs";
import { makeHarness } from "./harness.js";

ort.env.wasm.numThreads = 1; // one thread, as the browser profile was measured
ort.env.wasm.wasmPaths = "/ort/";
window.nscompile = makeHarness(ort);
document.getElementById("status").textContent = "ready";
window.nscompileReady = true;
