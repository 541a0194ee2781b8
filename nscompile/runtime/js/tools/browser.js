// Headless Chromium on a JSON line protocol, for nscompile's Python side (nscompile/browser.py):
//   node tools/browser.js [--chromium PATH]
// reads one command per line on stdin and answers one line "@@{...}" on stdout per command:
//   {"op": "goto", "url"}                  open a page (waits for its load event)
//   {"op": "eval", "expression"}           evaluate in the page, await a promise, answer its JSON value
//   {"op": "screenshot", "path", "full_page"}
//   {"op": "find_renderer"}                find the page's renderer process again (for nscompileCpuMs)
//   {"op": "quit"}
// Answers are {"ok": true, "value"} or {"ok": false, "error"}. The page's console messages
// and errors go to stderr, one line each ("console.error: ...", "pageerror: ...").
//
// Pages get window.nscompileCpuMs(): the CPU time (ms) of the page's renderer main thread,
// where onnxruntime-web's WASM runs with one thread, read from Linux's
// /proc/PID/task/PID/schedstat (ns); null where that cannot be read. It is to a page what
// the thread CPU clock is to the native profiler: the work, free of other processes'
// time slices on a shared machine.
//
// Chromium comes from the system (Debian's `chromium`), driven by playwright-core: the
// browsers Playwright downloads itself are not needed. --no-sandbox because CI and the
// testbed run this as root, where Chromium's sandbox refuses to start.

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const MARK = "@@";

function argValue(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

function answer(obj) {
  process.stdout.write(MARK + JSON.stringify(obj) + "\n");
}

const executablePath = argValue("--chromium", process.env.NSCOMPILE_CHROMIUM || "/usr/bin/chromium");
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
page.on("console", (msg) => process.stderr.write(`console.${msg.type()}: ${msg.text()}\n`));
page.on("pageerror", (err) => process.stderr.write(`pageerror: ${err.message}\n`));
page.on("requestfailed", (req) => process.stderr.write(`requestfailed: ${req.url()} ${req.failure()?.errorText ?? ""}\n`));

const cdp = await browser.newBrowserCDPSession();
let rendererPid = null;

function mainThreadCpuNs(pid) {
  try {
    return Number(readFileSync(`/proc/${pid}/task/${pid}/schedstat`, "utf8").split(" ")[0]);
  } catch {
    return NaN;
  }
}

/**
 * The renderer process running the page: the one whose main thread's CPU time grows in
 * each of three spins of the page (another renderer may be busy during one of them).
 */
async function findRenderer() {
  const { processInfo } = await cdp.send("SystemInfo.getProcessInfo");
  const pids = processInfo.filter((p) => p.type === "renderer").map((p) => p.id);
  const least = new Map(pids.map((pid) => [pid, Infinity]));
  for (let spin = 0; spin < 3; spin++) {
    const before = new Map(pids.map((pid) => [pid, mainThreadCpuNs(pid)]));
    await page.evaluate(() => {
      const t = performance.now();
      while (performance.now() - t < 100); // busy for 100 ms
    });
    for (const pid of pids) least.set(pid, Math.min(least.get(pid), mainThreadCpuNs(pid) - before.get(pid)));
  }
  let best = null;
  let grew = 30e6; // at least 30 ms of each 100: that thread ran the page
  for (const [pid, d] of least) if (d > grew) [best, grew] = [pid, d];
  return best;
}

await page.exposeFunction("nscompileCpuMs", () => {
  const ns = rendererPid === null ? NaN : mainThreadCpuNs(rendererPid);
  return Number.isFinite(ns) ? ns / 1e6 : null;
});

const handlers = {
  async goto({ url }) {
    const response = await page.goto(url, { waitUntil: "load" });
    rendererPid = await findRenderer();
    return { status: response ? response.status() : null, renderer_pid: rendererPid };
  },
  async eval({ expression }) {
    return page.evaluate(expression);
  },
  async find_renderer() {
    rendererPid = await findRenderer();
    return { renderer_pid: rendererPid };
  },
  async screenshot({ path, full_page: fullPage = true }) {
    await page.screenshot({ path, fullPage });
    return path;
  },
};

answer({ ok: true, value: { chromium: browser.version() } }); // ready
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (exc) {
    answer({ ok: false, error: `not JSON: ${exc.message}` });
    continue;
  }
  if (cmd.op === "quit") break;
  const handler = handlers[cmd.op];
  if (!handler) {
    answer({ ok: false, error: `unknown op ${JSON.stringify(cmd.op)}` });
    continue;
  }
  try {
    answer({ ok: true, value: (await handler(cmd)) ?? null });
  } catch (exc) {
    answer({ ok: false, error: String(exc?.message ?? exc).split("\n")[0] });
  }
}
await browser.close();
