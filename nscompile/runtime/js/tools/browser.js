// Headless Chromium on a JSON line protocol, for nscompile's Python side (nscompile/browser.py):
//   node tools/browser.js [--chromium PATH]
// reads one command per line on stdin and answers one line "@@{...}" on stdout per command:
//   {"op": "goto", "url"}                  open a page (waits for its load event)
//   {"op": "eval", "expression"}           evaluate in the page, await a promise, answer its JSON value
//   {"op": "screenshot", "path", "full_page"}
//   {"op": "quit"}
// Answers are {"ok": true, "value"} or {"ok": false, "error"}. The page's console messages
// and errors go to stderr, one line each ("console.error: ...", "pageerror: ...").
//
// Chromium comes from the system (Debian's `chromium`), driven by playwright-core: the
// browsers Playwright downloads itself are not needed. --no-sandbox because CI and the
// testbed run this as root, where Chromium's sandbox refuses to start.

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

const handlers = {
  async goto({ url }) {
    const response = await page.goto(url, { waitUntil: "load" });
    return { status: response ? response.status() : null };
  },
  async eval({ expression }) {
    return page.evaluate(expression);
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
