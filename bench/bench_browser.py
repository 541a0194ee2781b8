"""The browser as the device, end to end on the testbed: the chosen split against all-device and all-cloud.

Headless Chromium runs the JavaScript runtime (onnxruntime-web, WASM, one thread) inside
the testbed's device network namespace, pinned to the device's CPU; ``nscompile serve``
runs in the server namespace behind the tc-shaped veth link, pinned to the other CPU.
The models are built with the browser's own profile (cost_models/browser-wasm-1thread.json)
on the testbed's grid. Per model and link preset, measured from the page, side by side in
rounds of one request per mode in a seeded random order (as ``nscompile bench`` does):
the runner choosing the cut itself (after forgetting the previous network), and every
emitted cut forced, all-device and all-cloud among them.

This kernel has no netem, so the preset's round-trip time is added by a relay in the
device namespace (the page's server URL): every chunk is held RTT/2 in each direction,
while tbf shapes the bytes on the link. The page and the device files come from a static
server in the device namespace (loopback), so the one-off download of weights.bin does
not cross the shaped link.

    python bench/bench_browser.py -o bench/out/browser                  # AlexNet + ResNet-50, WIFI + 5G
    python bench/bench_browser.py --models alexnet --networks 3G --rounds 5 -o /tmp/b

The defaults are a chain and a DAG on the two presets where the decision differs for the
browser of this machine: onnxruntime-web runs AlexNet in about 65 ms and ResNet-50 in about
270 ms, so over LTE and slower links nothing beats all-device, and ResNet-50 goes to the
server only from about 5G's uplink on.

Needs root (namespaces, tc, cgroup-v1 cpusets), ``npm ci`` in nscompile/runtime/js and
Chromium. Writes results.json and results.md (the table in bench/RESULTS.md) to -o.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE_PORT, RELAY_PORT, SERVER_PORT = 8600, 8601, 8000
PRUNE = 2.0  # as nscompile bench: a forced cut whose fastest request is over 2x the best median sits out


# ---------------------------------------------------------------------------------------
# Device side (in the device namespace): static files and the RTT relay
# ---------------------------------------------------------------------------------------


class DelayRelay:
    """A TCP relay that holds every chunk ``rtt_ms / 2`` in each direction (a link's propagation delay)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target, self.rtt_ms = target, 0.0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(asyncio.start_server(self._client, *listen))
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)

    async def _client(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    async def _pipe(self, src, dst):
        queue: asyncio.Queue = asyncio.Queue()

        async def pump():
            while True:
                data = await src.read(1 << 16)
                queue.put_nowait((self.loop.time() + self.rtt_ms / 2000.0, data))
                if not data:
                    return

        async def deliver():
            while True:
                due, data = await queue.get()
                if due > self.loop.time():
                    await asyncio.sleep(due - self.loop.time())
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()

        await asyncio.gather(pump(), deliver())


def device_side(args) -> None:
    """The device namespace's helper: serve the page and device files, relay to the server with an RTT."""
    import httpx

    sys.path.insert(0, str(ROOT))
    from nscompile.browser import StaticSite, runtime_routes

    site = StaticSite({**runtime_routes(), "/device/": Path(args.device_dir), "/feeds/": Path(args.feeds_dir)},
                      port=SITE_PORT)
    relay = DelayRelay(("127.0.0.1", RELAY_PORT), (args.server_host, SERVER_PORT))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{RELAY_PORT}/v2/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    print("@@" + json.dumps({"ok": True, "site": site.url}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        relay.rtt_ms = float(cmd["rtt_ms"])
        print("@@" + json.dumps({"ok": True}), flush=True)
    site.close()


# ---------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------


def build_model(name: str, size: str, out: Path, device: Path, cloud: Path) -> Path:
    """The zoo model built for the browser's profile on the testbed's grid (default device-load
    levels); a build of an earlier run is reused only if it was made from the same profiles."""
    from nscompile import zoo
    from nscompile.compiler import build
    from nscompile.cost_model import load_profile
    from nscompile.planner import GridSpec
    from nscompile.testbed.experiments import BUILD_BANDWIDTH, BUILD_LOAD

    (path,) = zoo.write_models([name], out / "models", size=size)
    build_dir = out / "builds" / name
    want = {"device": load_profile(device).sha256, "cloud": load_profile(cloud).sha256}
    if (build_dir / "plan.json").is_file():
        made = json.loads((build_dir / "plan.json").read_text()).get("profiles", {})
        if all(made.get(side, {}).get("sha256") == sha for side, sha in want.items()):
            return build_dir
    build(path, build_dir, device_profile=device, cloud_profile=cloud,
          grid=GridSpec.parse(BUILD_BANDWIDTH, BUILD_LOAD), report=False, include_all_cloud=True)
    return build_dir


def feeds_for(plan: dict, feeds_dir: Path, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    spec = {}
    feeds_dir.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(plan["model"]["inputs"]):
        shape = [d if d > 0 else 1 for d in t["shape"]]
        a = rng.standard_normal(shape).astype(t["dtype"]) if t["dtype"].startswith("float") else np.zeros(shape, t["dtype"])
        (feeds_dir / f"in{i}.bin").write_bytes(a.tobytes())
        spec[t["name"]] = {"type": t["dtype"], "dims": shape, "url": f"/feeds/in{i}.bin"}
    return spec


def run_rounds(browser, cuts: list[str], feeds: dict, rounds: int, seed: int) -> dict:
    """Every mode (None: the runner chooses; a cut id: forced) once per round, in a seeded random order."""
    def one(mode):
        browser.call("nscompile.configure.bind(nscompile)", {"forceCut": mode})
        answer = browser.call("nscompile.run.bind(nscompile)", feeds, {"outputs": False}, timeout_s=900)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer["record"]

    modes = [None, *cuts]
    for mode in cuts:  # warm: every prefix session created, the server's sessions loaded
        one(mode)
    browser.call("nscompile.configure.bind(nscompile)", {"forceCut": None, "fresh": True})
    one(None)  # the new network's probe
    records = {m: [] for m in modes}
    out: set = set()
    shuffler = random.Random(seed)
    for r in range(rounds):
        for mode in shuffler.sample(modes, len(modes)):
            if mode in out:
                continue
            rec = one(mode)
            rec["round"] = r
            records[mode].append(rec)
        forced = {m: [x["total_ms"] for x in records[m]] for m in cuts if records[m]}
        best = min(statistics.median(v) for v in forced.values())
        out = {m for m, v in forced.items() if min(v) > PRUNE * best}
    return records


def summarise(model: str, network: str, plan: dict, records: dict, rates) -> dict:
    from nscompile.testbed.experiments import predicted_ms

    cuts = {c["id"]: c for c in plan["cuts"]}
    med = {m: statistics.median(r["total_ms"] for r in recs) for m, recs in records.items() if recs}
    auto = records[None]
    chosen = Counter(r["cut"] for r in auto).most_common(1)[0][0]
    forced = {m: v for m, v in med.items() if m is not None}
    oracle = min(forced, key=forced.get)
    all_device = plan["fallback"]
    all_cloud = next((c["id"] for c in plan["cuts"] if c.get("cloud_model") and not c.get("prefix")), None)
    return {
        "model": model, "network": network, "chosen_cut": chosen, "chosen_ms": med[None],
        "chosen_predicted_ms": predicted_ms(cuts[chosen], rates, 1.0),
        "oracle_cut": oracle, "oracle_ms": forced[oracle],
        "all_device_ms": forced.get(all_device), "all_device_predicted_ms": predicted_ms(cuts[all_device], rates, 1.0),
        "all_cloud_ms": forced.get(all_cloud) if all_cloud else None,
        "all_cloud_predicted_ms": predicted_ms(cuts[all_cloud], rates, 1.0) if all_cloud else None,
        "measured_uplink_mbps": statistics.median(r["bandwidth_mbps"] for r in auto if r["bandwidth_mbps"]),
        "measured_rtt_ms": statistics.median(r["rtt_ms"] for r in auto if r["rtt_ms"] is not None),
        # The browser's slowdown against its profile, as the runner learnt it (1: as profiled).
        "device_load": statistics.median(r["device_load"] for r in auto),
        "cuts_ms": {m: round(v, 1) for m, v in forced.items()},
        "n": len(auto), "fell_back": sum(bool(r["fell_back"]) for r in auto),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "bench" / "out" / "browser")
    ap.add_argument("--models", default="alexnet,resnet50")
    ap.add_argument("--networks", default="WIFI,5G")
    ap.add_argument("--size", choices=["small", "full"], default="full")
    ap.add_argument("--profile", type=Path, default=ROOT / "cost_models" / "browser-wasm-1thread.json",
                    help="the browser device profile the builds plan for (nscompile profile --web)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seed", type=int, default=20170408)
    ap.add_argument("--device-side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device-dir", help=argparse.SUPPRESS)
    ap.add_argument("--feeds-dir", help=argparse.SUPPRESS)
    ap.add_argument("--server-host", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device_side:
        device_side(args)
        return 0

    sys.path.insert(0, str(ROOT))
    from nscompile.browser import Browser, require
    from nscompile.testbed.experiments import cloud_profile_default, rates_of
    from nscompile.testbed.testbed import Testbed, Worker

    require(browser=True)
    if not args.profile.is_file():
        print(f"no browser profile {args.profile}; make one with `nscompile profile --web --name browser-wasm-1thread "
              f"-o {args.profile}` or pass --profile")
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with Testbed(out / "logs") as testbed:
        if not testbed.link.kernel or not testbed.cpusets:
            print(f"needs the kernel testbed with pinning: {testbed.fallback_reason or testbed.pinning_problem}")
            return 2
        print(testbed.describe(), flush=True)
        cloud = cloud_profile_default(testbed)
        for model in args.models.split(","):
            build_dir = build_model(model, args.size, out, args.profile, cloud)
            plan = json.loads((build_dir / "plan.json").read_text())
            feeds_dir = out / "feeds" / model
            feeds = feeds_for(plan, feeds_dir)
            origin = f"http://127.0.0.1:{SITE_PORT}"
            server = Worker(testbed.link.wrap([sys.executable, "-m", "nscompile", "serve", str(build_dir / "cloud"),
                                               "--host", "0.0.0.0", "--port", str(SERVER_PORT), "--threads", "1",
                                               "--concurrency", "1", "--cors-origin", origin], "server"),
                            f"{model}-server", out / "logs", quits=False, groups=(testbed.cpusets["server"],))
            side = Worker(testbed.link.wrap([sys.executable, __file__, "--device-side", "--device-dir",
                                             str(build_dir / "device"), "--feeds-dir", str(feeds_dir),
                                             "--server-host", testbed.link.server_host], "device"),
                          f"{model}-site", out / "logs", groups=(testbed.cpusets["server"],))
            try:
                side.answer(300)
                with Browser(out / "logs", name=f"{model}-browser", wrap=lambda c: testbed.link.wrap(c, "device"),
                             groups=(testbed.cpusets["device"],), timeout_s=900) as browser:
                    browser.goto(f"{origin}/runner/tools/page.html")
                    browser.eval("new Promise(r => { const t = setInterval(() => window.nscompileReady && (clearInterval(t), r(true)), 20); })")
                    opened = browser.call("nscompile.open.bind(nscompile)", "/device/", f"http://127.0.0.1:{RELAY_PORT}",
                                          {"deadlineMs": 180000}, timeout_s=900)
                    if "error" in opened:
                        raise RuntimeError(opened["error"])
                    for network in args.networks.split(","):
                        rates = rates_of(network)
                        testbed.link.set(rates)
                        side.ask(op="rtt", rtt_ms=rates.rtt_ms)
                        t0 = time.monotonic()
                        records = run_rounds(browser, opened["cuts"], feeds, args.rounds, args.seed)
                        row = summarise(model, network, plan, records, rates)
                        row["seconds"] = round(time.monotonic() - t0, 1)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        (out / "records.jsonl").open("a").write(
                            json.dumps({"model": model, "network": network,
                                        "records": {str(k): v for k, v in records.items()}}) + "\n")
            finally:
                side.close()
                server.close()
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "results.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


def markdown(rows: list[dict]) -> str:
    def ms(x):
        return "–" if x is None else f"{x:.0f}"

    lines = ["| model | network | chosen cut | chosen ms (predicted) | all-device ms (predicted) | all-cloud ms (predicted) "
             "| fastest forced cut | x all-device | x all-cloud | uplink Mbps, RTT ms (measured) | Kd (learnt) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['network']} | {r['chosen_cut']} | {ms(r['chosen_ms'])} ({ms(r['chosen_predicted_ms'])}) "
            f"| {ms(r['all_device_ms'])} ({ms(r['all_device_predicted_ms'])}) | {ms(r['all_cloud_ms'])} "
            f"({ms(r['all_cloud_predicted_ms'])}) | {r['oracle_cut']} {ms(r['oracle_ms'])} "
            f"| {r['all_device_ms'] / r['chosen_ms']:.2f} | "
            + (f"{r['all_cloud_ms'] / r['chosen_ms']:.2f} |" if r["all_cloud_ms"] else "– |")
            + f" {r['measured_uplink_mbps']:.1f}, {r['measured_rtt_ms']:.0f} | {r['device_load']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
