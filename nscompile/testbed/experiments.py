"""The paper's experiments on the testbed: decisions, latency/energy vs the oracle, network and load variation.

:func:`run_bench` is what ``nscompile bench`` calls. For every zoo model and device
profile it builds the model once (a bandwidth grid spanning every preset, RTT 0: the
runtime adds the measured RTT exactly, see SplitRunner's "rtt" rule; cut tensors in
every encoding of ``BUILD_ENCODINGS``), adds the oracle's candidates to the build
(:mod:`nscompile.testbed.candidates`: every layer boundary of a chain, thinned
topological prefixes of a DAG, each under every encoding, chosen from the graph alone),
starts a testbed session, and for every server load and network preset measures

- nscompile: the device's SplitRunner chooses the cut itself, from the bandwidth, RTT
  and server load it measures (after forgetting the previous network);
- every candidate forced, the build's own cuts (all-device and all-cloud among them)
  included: the oracle is the fastest of these medians.

Both are measured side by side, in rounds of one request per mode in random order
(the device's ``rounds`` op), so that a slow minute of the shared machine falls on
every mode alike instead of on whichever was measured then. A candidate leaves the
rounds only by measurement, never by prediction: once a lower bound on its latency made
of the case's own measurements (its fastest request; before it has one, the prefix
times of smaller device sets, the server times of bigger ones and the fastest goodput
seen, see :class:`nscompile.testbed.device.Bounds`) is over ``PRUNE`` times the best
median measured. All-device and all-cloud are measured first. A case is *contested*
when its oracle is a split or its two best measured candidates are within
``CONTESTED_WITHIN`` of each other: there, choosing matters.

Then it varies the network over time and the server load, and writes CSVs, PNGs and a
report (:mod:`nscompile.testbed.report`).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nscompile.cost_model import COST_MODELS_DIR, Profile, default_profile_path, load_profile, shipped_for_this_cpu
from nscompile.errors import NscompileError
from nscompile.planner import NETWORK_PRESETS, GridSpec
from nscompile.backend import write_plan
from nscompile.runtime.plan import Cut
from nscompile.testbed.candidates import ORACLE_KEY, ORACLE_VERSION, add_oracle_candidates
from nscompile.testbed.energy import RADIO_OF_PRESET, request_energy_mj
from nscompile.testbed.link import Rates
from nscompile.testbed.report import summary, write_report
from nscompile.testbed.testbed import Session, Testbed

#: Build grid: log-spaced, spanning all presets with room above, so that all-cloud is
#: emitted whenever a fast link makes it the best choice; the runtime bisects breakpoints.
BUILD_BANDWIDTH = "0.1:100000:40"
BUILD_LOAD = "1,2,4,8"
#: Cut-tensor encodings of the bench builds (and so of the oracle's candidates).
BUILD_ENCODINGS = ("fp32", "fp16", "int8")
WITHIN = 1.10  # "within 10% of the oracle"
#: Two best measured candidates within this ratio make a case contested.
CONTESTED_WITHIN = 1.25
#: Below this difference two medians are timer and scheduling jitter on a shared machine, not a choice.
NOISE_FLOOR_MS = 1.0
#: A forced cut whose latency is bounded below, by the case's measurements, by over this
#: many times the best forced cut's median sits the later rounds out: it cannot be the
#: oracle, and a cut meant for gigabit links would spend minutes per round uploading
#: megabytes over 3G.
PRUNE = 2.0


#: The phone-class device where this CPU has no shipped one: the AMD EPYC profile at 25% of a core.
PHONE_PROFILE = COST_MODELS_DIR / "epyc-ort-cpu-1thread-quota25.json"


def single_core_cloud_profile() -> Path:
    """The server profile when the testbed pins the server to one CPU: this machine's CPU,
    one thread, no quota (the shipped AMD EPYC one where this CPU has none)."""
    for p in shipped_for_this_cpu("device"):
        d = json.loads(p.read_text())
        if d.get("threads") == 1 and not d.get("cpu_quota_cores"):
            return p
    return COST_MODELS_DIR / "epyc-ort-cpu-1thread.json"


RESULT_COLUMNS = [
    "model", "network", "device_profile", "load", "clients", "server_load_k",
    "chosen_cut", "chosen_ms", "oracle_cut", "oracle_ms", "all_device_ms", "all_cloud_ms",
    "chosen_mj", "oracle_mj", "all_device_mj", "all_cloud_mj",
    "speedup_vs_cloud", "speedup_vs_device", "energy_saving_vs_cloud", "regret", "within_10pct", "within_tolerance",
    "predicted_cut", "predicted_chosen_ms", "predicted_oracle_ms", "forced_chosen_ms",
    "measured_uplink_mbps", "uplink_mbps", "rtt_ms", "cuts", "n",
    "chosen_q1_ms", "chosen_q3_ms", "oracle_q1_ms", "oracle_q3_ms", "iqr_overlap", "miss_reason", "testbed",
    "n_candidates", "n_timed", "oracle_is_split", "runner_up_cut", "runner_up_ms", "contested",
]


@dataclass
class BenchConfig:
    """What to run. ``quick()`` and ``full()`` give the two standard sweeps."""

    models: list[str]
    size: str = "full"
    #: Models among ``models`` built at full size whatever ``size`` says.
    full_size: list[str] = field(default_factory=list)
    #: Per model, the (load name, network) cases to run instead of every load x network.
    model_cases: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    networks: list[str] = field(default_factory=lambda: ["3G", "LTE", "WIFI", "5G"])
    device_profiles: list[Path] = field(default_factory=list)
    cloud_profile: Path | None = None
    loads: dict[str, int] = field(default_factory=lambda: {"idle": 0, "loaded": 4})
    #: Rounds per case at most: one request of nscompile's own and of every cut forced per round.
    repeats: int = 9
    #: No new round after this many seconds of a case, once 3 rounds are done: fast models
    #: get all ``repeats`` rounds, slow ones 3.
    max_s: float = 12.0
    #: More rounds than ``repeats`` while a case has run under this many seconds: a model
    #: of 0.1 ms gets thousands of rounds, so that a 10% criterion is not decided by the
    #: spread of nine samples.
    min_s: float = 2.0
    trace_model: str | None = "alexnet"
    trace_phase_s: float = 20.0
    load_model: str | None = "alexnet"
    load_levels: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 6, 8])
    load_window_s: float = 10.0
    load_network: str = "WIFI"
    #: Model and network of the device-load experiment (the device slowed in the middle phase).
    device_load_model: str | None = "alexnet"
    device_load_network: str = "WIFI"
    device_load_phase_s: float = 15.0
    userspace: bool = False
    deadline_min: float | None = None  # stop starting new models after this many minutes

    def networks_for(self, model: str, load_name: str) -> list[str]:
        """The networks ``model`` is measured on under the load ``load_name`` (``model_cases`` or every one)."""
        if model not in self.model_cases:
            return self.networks
        return [n for n in self.networks if (load_name, n) in self.model_cases[model]]

    @staticmethod
    def quick(**kw) -> BenchConfig:
        """LeNet and AlexNet (small) on 3G and 5G, idle and loaded, and the LSTM acoustic model
        (full size: a chain whose best cut is contested on 5G) on 5G, idle; the phone-class
        device; short trace, load sweep and device-load phases (< 3 min)."""
        base = dict(models=["lenet", "alexnet", "speech_lstm"], size="small", full_size=["speech_lstm"],
                    networks=["3G", "5G"], loads={"idle": 0, "loaded": 3},
                    model_cases={"speech_lstm": [("idle", "5G")]},
                    repeats=5, max_s=2.0, min_s=0.5, trace_model="alexnet",
                    trace_phase_s=1.5, load_model="alexnet", load_levels=[0, 3], load_window_s=2.0, load_network="WIFI",
                    device_load_model="alexnet", device_load_phase_s=2.0,
                    device_profiles=[quota_profile(0.25) or PHONE_PROFILE])
        if kw.get("models") or kw.get("networks"):  # the user's own models or networks: every case of them
            del base["model_cases"]
        base.update({k: v for k, v in kw.items() if v is not None})
        return BenchConfig(**base)

    @staticmethod
    def full(**kw) -> BenchConfig:
        """The whole zoo at full size, three networks, every device profile, idle and loaded."""
        from nscompile import zoo

        base = dict(models=[m.name for m in zoo.list_models()])
        base.update({k: v for k, v in kw.items() if v is not None})
        return BenchConfig(**base)


def quota_profile(most_cores: float) -> Path | None:
    """The shipped device profile of this machine's kind of CPU measured under the largest CPU
    quota of at most ``most_cores`` (None: there is none).

    The device classes of the testbed: 25% of a core is the phone-class device, 12.5% (8x
    slower than the server core) the paper-like gap of a Tegra K1 CPU against a K40 GPU.
    """
    best = None
    for p in shipped_for_this_cpu("device"):
        cores = json.loads(p.read_text()).get("cpu_quota_cores")
        if cores and cores <= most_cores + 1e-9 and (best is None or cores > best[0]):
            best = (cores, p)
    return best[1] if best else None


def device_profiles_default() -> list[Path]:
    """The shipped device profiles made on this machine's kind of CPU (the testbed measures
    on it), the default first; where none was, every shipped device profile."""
    paths = shipped_for_this_cpu("device")
    if paths:
        return paths
    default = default_profile_path("device")
    if default.is_file():
        paths.append(default)
    for p in sorted(COST_MODELS_DIR.glob("*.json")):
        try:
            kind = json.loads(p.read_text()).get("kind")
        except (OSError, ValueError):
            continue
        if kind == "device" and p not in paths:
            paths.append(p)
    if not paths:
        raise NscompileError(f"no device profile in {COST_MODELS_DIR}; run `nscompile profile` or pass --device-profile")
    return paths


def cloud_profile_default(testbed: Testbed) -> Path:
    """The server profile to build with when the user gives none.

    A server pinned to a single CPU runs one onnxruntime thread: the one-thread profile
    of this CPU describes it (a profile of kind "device" serves as the cloud side too);
    otherwise the shipped server profile.
    """
    if testbed.server_cpus and len(testbed.server_cpus) == 1:
        return single_core_cloud_profile()
    return default_profile_path("server")


def rates_of(network: str) -> Rates:
    """The link conditions of a network preset."""
    p = NETWORK_PRESETS[network]
    return Rates(p["uplink_mbps"], p["downlink_mbps"], p["rtt_ms"])


def _median(xs) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def predicted_ms(cut: dict, rates: Rates, load: float) -> float:
    """The plan's latency prediction for ``cut`` (its ``plan.json`` entry) under ``rates`` and server slowdown ``load``."""
    down = rates.down_mbps if rates.down_mbps is not None else math.inf  # an unshaped downlink
    return Cut.from_doc(cut).latency_ms(rates.up_mbps, load, rates.rtt_ms, down)


@dataclass
class Progress:
    """Callbacks the CLI uses to show progress; all optional."""

    stage: Callable[[str], None] = lambda text: None
    case: Callable[[dict], None] = lambda row: None


def _prepare_model(name: str, size: str, models_dir: Path) -> Path:
    from nscompile import zoo

    stem = name if size == "full" else f"{name}_small"
    path = models_dir / f"{stem}.onnx"
    if not path.is_file():
        zoo.write_models([name], models_dir, size=size)
    return path


def _build(model_path: Path, build_dir: Path, device: Path, cloud: Path, encodings: tuple[str, ...] = BUILD_ENCODINGS) -> dict:
    """Build once and add the oracle's candidates; a build with the same model, profiles and encodings is reused.

    The all-cloud cut is always emitted (the oracle must time "everything on the server"),
    though only tables that select it make the runtime use it unforced.
    """
    from nscompile.compiler import build

    plan_path = build_dir / "plan.json"
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        want = {"device": load_profile(device).sha256, "cloud": load_profile(cloud).sha256}
        has_all_cloud = any(c.get("cloud_model") and not c.get("prefix") for c in plan["cuts"])
        oracle = plan.get(ORACLE_KEY) or {}
        if (has_all_cloud and all(plan["profiles"][k]["sha256"] == v for k, v in want.items()) and plan["grid"]["rtt_ms"] == 0
                and oracle.get("version") == ORACLE_VERSION and oracle.get("requested") == list(encodings)):
            return plan
    grid = GridSpec.parse(BUILD_BANDWIDTH, BUILD_LOAD)
    plan = build(model_path, build_dir, device_profile=device, cloud_profile=cloud, grid=grid, report=False,
                 include_all_cloud=True, encodings=encodings).plan
    plan = add_oracle_candidates(model_path, build_dir, plan, device, cloud, encodings)
    plan[ORACLE_KEY]["requested"] = list(encodings)
    write_plan(build_dir, plan)
    return plan


def _candidate_ids(plan: dict) -> set[str]:
    """The cuts the testbed added for the oracle (no table of the build names them)."""
    return {c["id"] for c in plan["cuts"] if c.get("oracle_candidate")}


def _quartiles(xs: list[float]) -> tuple[float, float]:
    """(first, third) quartile; with one sample both are that sample."""
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (math.nan, math.nan)
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q3


def _summarise(records: list[dict], profile: Profile, rates: Rates, radio: str) -> dict:
    cuts = Counter(r["cut"] for r in records)
    q1, q3 = _quartiles([r["total_ms"] for r in records])
    return {
        "ms": _median(r["total_ms"] for r in records),
        "q1": q1,
        "q3": q3,
        "probe_ms": _median(r.get("probe_ms") for r in records),
        "mj": _median(request_energy_mj(r, profile, rates.up_mbps, rates.down_mbps, radio) for r in records),
        "cut": cuts.most_common(1)[0][0],
        "cuts": dict(cuts),
        "n": len(records),
        "bw": _median(r.get("bandwidth_mbps") for r in records),
        "load": _median(r.get("load") for r in records),
        "fell_back": sum(bool(r.get("fell_back")) for r in records),
    }


def measure_case(session: Session, plan: dict, profile: Profile, profile_name: str, model: str, network: str,
                 load_name: str, clients: int, cfg: BenchConfig, mode: str) -> tuple[dict, list[dict]]:
    """One case: nscompile's choice and every cut forced, side by side; the result row and per-cut rows.

    ``chosen_ms`` is the median of nscompile's own requests, ``oracle_ms`` the fastest
    median of the forced cuts (every emitted cut, all-device and all-cloud included).
    """
    rates = rates_of(network)
    radio = RADIO_OF_PRESET[network]
    special = _special_cuts(plan)
    oracle_info = plan.get(ORACLE_KEY) or {}
    before = session.load_stats()
    modes = session.rounds([None, *session.cuts], cfg.repeats, warmup=1, max_s=cfg.max_s, min_s=cfg.min_s,
                           fresh=True, prune=PRUNE, sets=oracle_info.get("sets"),
                           first=[c for c in (special["all_device"], special["all_cloud"]) if c],
                           managed=sorted(_candidate_ids(plan)), weights=oracle_info.get("weights"))
    pruned = session.last_pruned
    after = session.load_stats()
    auto = _summarise(modes[None], profile, rates, radio)
    forced = {c: _summarise(modes[c], profile, rates, radio) for c in session.cuts if modes[c]}
    ks = [s.get("server", {}).get("load") for s in (before, after)] + [auto["load"]]
    k = _median(ks) if clients else 1.0
    cuts_by_id = {c["id"]: c for c in plan["cuts"]}
    all_device, all_cloud = special["all_device"], special["all_cloud"]
    ranked = sorted(forced, key=lambda c: forced[c]["ms"])
    oracle = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    pred = {c: predicted_ms(cuts_by_id[c], rates, max(k, 1.0)) for c in session.cuts}
    predicted_cut = min((c for c in pred if c not in _candidate_ids(plan)), key=pred.get)
    chosen = auto["cut"]
    row = {
        "model": model, "network": network, "device_profile": profile_name, "load": load_name, "clients": clients,
        "server_load_k": round(k, 3),
        "chosen_cut": chosen, "chosen_ms": auto["ms"], "oracle_cut": oracle, "oracle_ms": forced[oracle]["ms"],
        "all_device_ms": forced[all_device]["ms"], "all_cloud_ms": forced[all_cloud]["ms"] if all_cloud else math.nan,
        "chosen_mj": auto["mj"], "oracle_mj": forced[oracle]["mj"], "all_device_mj": forced[all_device]["mj"],
        "all_cloud_mj": forced[all_cloud]["mj"] if all_cloud else math.nan,
        "predicted_cut": predicted_cut, "predicted_chosen_ms": pred.get(chosen, math.nan),
        "predicted_oracle_ms": pred[oracle], "forced_chosen_ms": forced.get(chosen, {}).get("ms", math.nan),
        "measured_uplink_mbps": auto["bw"], "uplink_mbps": rates.up_mbps, "rtt_ms": rates.rtt_ms,
        "cuts": ";".join(f"{c}={forced[c]['ms']:.1f}" for c in ranked), "n": auto["n"], "testbed": mode,
        "chosen_q1_ms": auto["q1"], "chosen_q3_ms": auto["q3"],
        "oracle_q1_ms": forced[oracle]["q1"], "oracle_q3_ms": forced[oracle]["q3"],
        # Interquartile boxes that overlap: the two medians differ by less than the requests' own spread.
        "iqr_overlap": bool(auto["q1"] <= forced[oracle]["q3"] and forced[oracle]["q1"] <= auto["q3"]),
        # Every candidate of the case: timed, or left out by a bound made of the case's measurements.
        "n_candidates": len(session.cuts), "n_timed": len(forced),
        "oracle_is_split": oracle not in (all_device, all_cloud),
        "runner_up_cut": runner_up or "", "runner_up_ms": forced[runner_up]["ms"] if runner_up else math.nan,
    }
    row["contested"] = bool(row["oracle_is_split"] or (runner_up is not None
                                                       and forced[runner_up]["ms"] <= CONTESTED_WITHIN * forced[oracle]["ms"]))
    row["speedup_vs_cloud"] = row["all_cloud_ms"] / row["chosen_ms"]
    row["speedup_vs_device"] = row["all_device_ms"] / row["chosen_ms"]
    row["energy_saving_vs_cloud"] = 1.0 - row["chosen_mj"] / row["all_cloud_mj"] if all_cloud else math.nan
    row["regret"] = row["chosen_ms"] / row["oracle_ms"]
    row["within_10pct"] = bool(row["regret"] <= WITHIN)
    row["within_tolerance"] = bool(row["within_10pct"] or row["chosen_ms"] - row["oracle_ms"] <= NOISE_FLOOR_MS)
    row["miss_reason"] = "" if row["within_10pct"] else miss_reason(row, auto)
    nan = {"ms": math.nan, "q1": math.nan, "q3": math.nan, "mj": math.nan, "n": 0, "fell_back": 0}
    candidates = _candidate_ids(plan)
    per_cut = []
    for c in session.cuts:
        s, why = forced.get(c, nan), pruned.get(c, {})
        per_cut.append({"model": model, "network": network, "device_profile": profile_name, "load": load_name, "cut": c,
                        "encoding": cuts_by_id[c].get("encoding", "fp32"), "device_nodes": cuts_by_id[c]["device_nodes"],
                        "candidate_only": c in candidates,
                        "measured_ms": s["ms"], "q1_ms": s["q1"], "q3_ms": s["q3"], "measured_mj": s["mj"], "predicted_ms": pred[c],
                        "n": s["n"], "fell_back": s["fell_back"], "pruned": why.get("rule", ""),
                        "pruned_round": why.get("round", ""), "bound_ms": why.get("bound_ms", math.nan)})
    return row, per_cut


def miss_reason(row: dict, auto: dict) -> str:
    """Why nscompile's measured latency is over 110% of the oracle's, with the numbers.

    Every reason ends with the spread of the requests (interquartile ranges of nscompile's
    and the oracle cut's), so that a miss inside the noise can be told from a real one.
    """
    chosen, oracle = row["chosen_cut"], row["oracle_cut"]
    spread = (f"IQR chosen {row['chosen_q1_ms']:.1f}-{row['chosen_q3_ms']:.1f} ms, oracle "
              f"{row['oracle_q1_ms']:.1f}-{row['oracle_q3_ms']:.1f} ms ({'' if row['iqr_overlap'] else 'no '}overlap)")
    if chosen == oracle:
        kind = "noise" if row["iqr_overlap"] else "overhead"
        return (f"{kind}: same cut as the oracle, {row['chosen_ms']:.1f} ms chosen vs {row['oracle_ms']:.1f} ms forced "
                f"side by side; {spread}; probe {auto['probe_ms']:.1f} ms median, cuts used {auto['cuts']}")
    if chosen != row["predicted_cut"]:
        return (f"estimate: the runner measured {row['measured_uplink_mbps']:.2f} Mbps / K={auto['load']:.2f} "
                f"(true {row['uplink_mbps']} Mbps, K={row['server_load_k']}) and chose {chosen}; with the true "
                f"conditions the plan picks {row['predicted_cut']}; {spread}")
    pc, po = row["predicted_chosen_ms"], row["predicted_oracle_ms"]
    if pc > 0 and abs(po - pc) / pc <= 0.10:
        return f"close candidates: predicted {chosen} {pc:.1f} ms vs {oracle} {po:.1f} ms (within 10%); {spread}"
    return (f"prediction error: {chosen} predicted {pc:.1f} ms, measured {row['forced_chosen_ms']:.1f} ms; "
            f"{oracle} predicted {po:.1f} ms, measured {row['oracle_ms']:.1f} ms; {spread}")


def run_trace(session: Session, cfg: BenchConfig, cuts: dict) -> list[dict]:
    """Latency per request while the link goes Wi-Fi -> LTE -> 3G -> Wi-Fi, per mode."""
    names = ["WIFI", "LTE", "3G", "WIFI"]
    phases = [(cfg.trace_phase_s, rates_of(n)) for n in names]
    rows = []
    for mode, cut in (("nscompile", None), ("all-cloud", cuts.get("all_cloud")), ("all-device", cuts["all_device"])):
        if mode != "nscompile" and cut is None:
            continue
        session.set_clients(0)
        for r in session.trace(cut, phases):
            rows.append({"mode": mode, "t_s": round(r["t"], 3), "latency_ms": r["total_ms"], "cut": r["cut"],
                         "network": names[r["phase"]], "phase": r["phase"]})
    return rows


def run_load(session: Session, cfg: BenchConfig, cuts: dict) -> list[dict]:
    """Device latency and queries/s as the number of other clients on the server rises."""
    rows = []
    session.set_network(rates_of(cfg.load_network))
    for clients in cfg.load_levels:
        for mode, cut in (("nscompile", None), ("all-cloud", cuts.get("all_cloud"))):
            if mode != "nscompile" and cut is None:
                continue
            session.set_clients(clients)
            time.sleep(1.0 if clients else 0.0)  # let the queue reach its steady state
            before = session.load_stats()
            recs = session.run(cut, 10_000, warmup=1, max_s=cfg.load_window_s, fresh=True, stale_s=2.0)
            after = session.load_stats()
            dt = after["t"] - before["t"]
            others = (after["completed"] - before["completed"]) / dt
            offloaded = sum(1 for r in recs if r["cut"] != cuts["all_device"] and not r.get("fell_back"))
            rows.append({
                "mode": mode, "clients": clients, "server_load_k": _median([before["server"].get("load"), after["server"].get("load")]),
                "latency_ms": _median(r["total_ms"] for r in recs), "device_qps": len(recs) / dt,
                "others_qps": others, "server_qps": others + offloaded / dt, "total_qps": others + len(recs) / dt,
                "cuts": ";".join(f"{c}:{n}" for c, n in Counter(r["cut"] for r in recs).items()), "n": len(recs),
            })
    session.set_clients(0)
    return rows


def run_device_load(session: Session, cfg: BenchConfig, cuts: dict) -> list[dict]:
    """The paper's variation experiment for the device: idle, then the device at 40% of its CPU
    device, then idle again; nscompile learning its slowdown against one pinned at Kd = 1."""
    session.set_clients(0)
    session.set_network(rates_of(cfg.device_load_network))
    phases = [(cfg.device_load_phase_s, False), (cfg.device_load_phase_s, True), (cfg.device_load_phase_s, False)]
    rows = []
    for mode, pin in (("nscompile", None), ("pinned Kd=1", 1.0)):
        for r in session.device_load_trace(None, phases, device_load=pin):
            rows.append({"mode": mode, "t_s": round(r["t"], 3), "latency_ms": r["total_ms"], "cut": r["cut"],
                         "device_load": r["device_load"], "phase": r["phase"], "loaded": phases[r["phase"]][1]})
    return rows


def device_load_summary(rows: list[dict]) -> dict:
    """How fast nscompile adapted to the loaded device, and what it saved against Kd pinned at 1.

    ``adapt_requests``: requests of the loaded phase until the first one whose cut is the
    one nscompile then kept choosing most (0: no change was needed or made).
    """
    def loaded(mode):
        return [r for r in rows if r["mode"] == mode and r["loaded"]]

    learnt, pinned = loaded("nscompile"), loaded("pinned Kd=1")
    if not learnt or not pinned:
        return {}
    settled = Counter(r["cut"] for r in learnt[len(learnt) // 2:]).most_common(1)[0][0]
    adapt = next((i for i, r in enumerate(learnt) if r["cut"] == settled), len(learnt))
    before = [r for r in rows if r["mode"] == "nscompile" and r["phase"] == 0]
    usual = Counter(r["cut"] for r in before).most_common(1)[0][0] if before else settled
    return {
        "cut_idle": usual, "cut_loaded": settled, "adapt_requests": adapt if settled != usual else 0,
        "kd_loaded": _median(r["device_load"] for r in learnt[len(learnt) // 2:]),
        "latency_loaded_ms": _median(r["latency_ms"] for r in learnt),
        "latency_loaded_pinned_ms": _median(r["latency_ms"] for r in pinned),
        "requests_loaded": len(learnt), "requests_loaded_pinned": len(pinned),
    }


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Write ``rows`` (dicts) as CSV, floats rounded to 4 decimals."""
    columns = columns or (list(rows[0]) if rows else [])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in r.items()})


@dataclass
class BenchResult:
    """What :func:`run_bench` produced."""

    out_dir: Path
    rows: list[dict]
    cut_rows: list[dict]
    trace_rows: list[dict]
    load_rows: list[dict]
    summary: dict
    testbed: str
    skipped: list[str]
    seconds: float
    device_load_rows: list[dict] = field(default_factory=list)
    device_load_summary: dict = field(default_factory=dict)


def run_bench(cfg: BenchConfig, out_dir: Path, progress: Progress | None = None) -> BenchResult:
    """Run the experiments of ``cfg``; write CSVs, PNGs and the report under ``out_dir``.

    Args:
        cfg: models, networks, profiles, loads, repeats.
        out_dir: output directory (created; builds and models are cached under it).
        progress: callbacks for the CLI.

    Returns:
        The results.

    Raises:
        NscompileError: unknown model or network, no device profile, a testbed failure.
    """
    from nscompile import zoo

    t_start = time.monotonic()
    progress = progress or Progress()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    known = {m.name for m in zoo.list_models()}
    for m in cfg.models + cfg.full_size:
        if m not in known:
            raise NscompileError(f"unknown zoo model '{m}'; see `nscompile zoo --list`")
    for n in cfg.networks + [cfg.load_network]:
        if n not in NETWORK_PRESETS:
            raise NscompileError(f"unknown network '{n}'; use one of {', '.join(NETWORK_PRESETS)}")
    for m, cases in cfg.model_cases.items():
        for load_name, n in cases:
            if m not in cfg.models or load_name not in cfg.loads or n not in cfg.networks:
                raise NscompileError(f"model case ({m}, {load_name}, {n}) is not in the sweep's models, loads and networks")
    profiles = [Path(p) for p in (cfg.device_profiles or device_profiles_default())]
    rows, cut_rows, trace_rows, load_rows, device_load_rows, skipped = [], [], [], [], [], []
    with Testbed(out_dir / "logs", userspace=cfg.userspace) as tb:
        cloud = Path(cfg.cloud_profile or cloud_profile_default(tb))
        # Pinned, the server gets one onnxruntime thread per CPU it has, whatever the profile says.
        server_threads = tb.server_threads or load_profile(cloud).threads or None
        progress.stage(f"testbed: {tb.describe()}")
        progress.stage(f"cloud profile: {cloud.name}")
        (out_dir / "testbed.txt").write_text(tb.describe() + "\n")
        for mi, model in enumerate(cfg.models):
            for pi, ppath in enumerate(profiles):
                if cfg.deadline_min is not None and time.monotonic() - t_start > cfg.deadline_min * 60:
                    skipped.append(f"{model} on {ppath.stem}: time limit")
                    continue
                profile = load_profile(ppath)
                progress.stage(f"[{model} / {profile.name}] build")
                size = "full" if model in cfg.full_size else cfg.size
                plan = _build(_prepare_model(model, size, out_dir / "models"), out_dir / "builds" / f"{model}-{ppath.stem}",
                              ppath, cloud)
                cores = profile.meta.get("cpu_quota_cores") if isinstance(profile.meta, dict) else None
                cuts = _special_cuts(plan)
                candidates = _candidate_ids(plan)
                progress.stage(f"[{model} / {profile.name}] testbed session ({len(plan['cuts'])} cuts to time, "
                               f"{len(candidates)} of them added for the oracle"
                               + (f", device quota {cores} cores" if cores else "") + ")")
                own = [c["cloud_model"] for c in plan["cuts"] if c.get("cloud_model") and c["id"] not in candidates]
                with tb.session(out_dir / "builds" / f"{model}-{ppath.stem}", device_threads=max(profile.threads, 1),
                                device_cores=cores, server_threads=server_threads, tag=f"{model}-{ppath.stem}",
                                preload=own) as s:
                    s.set_network(Rates(None, None, 0.0))
                    for c in s.cuts:  # load the build's prefixes and the connection before anything is timed
                        if c not in candidates:  # the candidates load when first measured (see Session.rounds)
                            s.run(c, 1)
                    for load_name, clients in cfg.loads.items():
                        networks = cfg.networks_for(model, load_name)
                        if not networks:
                            continue
                        s.set_clients(clients)
                        if clients:
                            time.sleep(1.0)
                        for network in networks:
                            s.set_network(rates_of(network))
                            row, per_cut = measure_case(s, plan, profile, profile.name, model, network, load_name, clients, cfg, tb.mode)
                            rows.append(row)
                            cut_rows.extend(per_cut)
                            progress.case(row)
                    s.set_clients(0)
                    if pi == 0 and model == cfg.trace_model:
                        progress.stage(f"[{model} / {profile.name}] network variation trace")
                        trace_rows = run_trace(s, cfg, cuts)
                    if pi == 0 and model == cfg.load_model:
                        progress.stage(f"[{model} / {profile.name}] server load sweep")
                        load_rows = run_load(s, cfg, cuts)
                    if pi == 0 and model == cfg.device_load_model:
                        progress.stage(f"[{model} / {profile.name}] device load variation")
                        device_load_rows = run_device_load(s, cfg, cuts)
                write_csv(out_dir / "results.csv", rows, RESULT_COLUMNS)  # after each model: partial results survive
    write_csv(out_dir / "results.csv", rows, RESULT_COLUMNS)
    write_csv(out_dir / "cuts.csv", cut_rows)
    if trace_rows:
        write_csv(out_dir / "trace.csv", trace_rows)
    if load_rows:
        write_csv(out_dir / "load.csv", load_rows)
    if device_load_rows:
        write_csv(out_dir / "device_load.csv", device_load_rows)
    result = BenchResult(out_dir, rows, cut_rows, trace_rows, load_rows, summary(rows), tb.mode, skipped,
                         time.monotonic() - t_start, device_load_rows, device_load_summary(device_load_rows))
    (out_dir / "summary.json").write_text(json.dumps({**result.summary, "device_load": result.device_load_summary,
                                                       "testbed": tb.describe(), "cloud_profile": cloud.name,
                                                       "skipped": skipped, "seconds": round(result.seconds, 1)}, indent=1) + "\n")

    progress.stage("plots and report")
    write_report(result, tb.describe())
    return result


def _special_cuts(plan: dict) -> dict:
    all_device = next(c["id"] for c in plan["cuts"] if not c.get("cloud_model"))
    all_cloud = next((c["id"] for c in plan["cuts"] if c.get("cloud_model") and not c.get("prefix")), None)
    return {"all_device": all_device, "all_cloud": all_cloud}
