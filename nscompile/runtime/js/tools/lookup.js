// The plan look-up from the command line, for the test that compares it with Python's:
//   node tools/lookup.js DEVICE_DIR/plan.json < conditions.json
// conditions: [{"bandwidth_mbps", "load", "objective", "rtt_ms"}, ...]; prints one JSON
// list of {"cut", "rtt_device"} (the table's cut, and whether the RTT rule moves it to
// the device) in the same order.

import { readFileSync } from "node:fs";
import { Plan } from "../plan.js";

const [path] = process.argv.slice(2);
const plan = new Plan(JSON.parse(readFileSync(path, "utf8")), path);
const conditions = JSON.parse(readFileSync(0, "utf8"));
const answers = conditions.map(({ bandwidth_mbps: bw, load, objective, rtt_ms: rtt }) => {
  const cut = plan.lookup(bw, load, objective);
  return { cut, rtt_device: plan.rttSaysDevice(cut, bw, load, rtt ?? null, objective) };
});
process.stdout.write(JSON.stringify(answers));
