// The runner's decision from the command line, for the test that compares it with Python's:
//   node tools/lookup.js DEVICE_DIR/plan.json < conditions.json
// conditions: [{"bandwidth_mbps", "load", "objective", "rtt_ms", "device_load"}, ...];
// prints one JSON list of {"cut", "rtt_device"} (the table's cut, and whether the RTT rule
// moves it to the device) in the same order. It calls Plan.decide, the code the runner's
// choice goes through.

import { readFileSync } from "node:fs";
import { Plan } from "../plan.js";

const [path] = process.argv.slice(2);
const plan = new Plan(JSON.parse(readFileSync(path, "utf8")), path);
const conditions = JSON.parse(readFileSync(0, "utf8"));
const answers = conditions.map(({ bandwidth_mbps: bw, load, objective, rtt_ms: rtt, device_load: kd }) => {
  const deviceLoad = kd ?? 1;
  const { reason } = plan.decide(bw, load, rtt ?? null, objective, deviceLoad);
  return { cut: plan.lookup(bw, load, objective, deviceLoad), rtt_device: reason === "rtt" };
});
process.stdout.write(JSON.stringify(answers));
