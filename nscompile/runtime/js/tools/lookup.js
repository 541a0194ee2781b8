// The runner's decision from the command line, for the test that compares it with Python's:
//   node tools/lookup.js DEVICE_DIR/plan.json < conditions.json
// conditions: [{"bandwidth_mbps", "load", "objective", "rtt_ms", "device_load", "policy"?}, ...];
// prints one JSON list in the same order. Without "policy": {"cut", "rtt_device"} (the
// table's cut, and whether the RTT rule moves it to the device), through Plan.decide. With
// a policy's text form: {"cut", "reason", "policy", "predicted_latency_ms",
// "predicted_energy_mj"}, through decidePolicy at the device-load level, the code the
// runner's choice goes through.

import { readFileSync } from "node:fs";
import { Plan } from "../plan.js";
import { asPolicy, decidePolicy } from "../policies.js";

const [path] = process.argv.slice(2);
const plan = new Plan(JSON.parse(readFileSync(path, "utf8")), path);
const conditions = JSON.parse(readFileSync(0, "utf8"));
const policies = new Map();
const answers = conditions.map(({ bandwidth_mbps: bw, load, objective, rtt_ms: rtt, device_load: kd, policy: text }) => {
  const deviceLoad = kd ?? 1;
  if (text !== undefined) {
    if (!policies.has(text)) policies.set(text, asPolicy(text));
    const policy = policies.get(text);
    const level = plan.deviceLoads[plan.deviceLoadRow(deviceLoad)];
    const { cut, reason, latencyMs, energyMj } = decidePolicy(plan, policy, bw, load, rtt ?? null, level);
    return { cut, reason, policy: String(policy), predicted_latency_ms: latencyMs, predicted_energy_mj: energyMj };
  }
  const { reason } = plan.decide(bw, load, rtt ?? null, objective, deviceLoad);
  return { cut: plan.lookup(bw, load, objective, deviceLoad), rtt_device: reason === "rtt" };
});
process.stdout.write(JSON.stringify(answers));
