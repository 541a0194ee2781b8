"""The testbed: user-space link emulation, energy, cleanup, CPU pinning, the device's rounds, and
`nscompile bench --quick` end to end."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from nscompile.cgroups import CGROUP_CPU
from nscompile.cost_model import default_profile_path, load_profile
from nscompile.testbed import cleanup
from nscompile.testbed.device import MAX_ROUNDS, _out_of_the_running
from nscompile.testbed.energy import request_energy_mj
from nscompile.testbed.link import Rates, parse_cpus
from nscompile.testbed.shaping import LinkState, make_client, transfer_s
from nscompile.testbed.testbed import (
    Testbed as Bed,  # not Test*: pytest would try to collect it
)


class _Echo(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        n = int(self.headers["Content-Length"])
        self.rfile.read(n)
        body = b"x" * 1000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def echo_url():
    server = HTTPServer(("127.0.0.1", 0), _Echo)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_userspace_link_adds_rtt_and_transfer_time(echo_url):
    state = LinkState()
    with make_client(state, 10) as client:
        client.post(echo_url, content=b"warm")
        t = time.perf_counter()
        client.post(echo_url, content=bytes(10_000))
        base = time.perf_counter() - t
        state.set(rtt_ms=50, up_mbps=2.0, down_mbps=4.0)
        t = time.perf_counter()
        r = client.post(echo_url, content=bytes(25_000))
        shaped = time.perf_counter() - t
    assert r.content == b"x" * 1000
    expected = 0.050 + transfer_s(25_200, 2.0) + transfer_s(1_200, 4.0)  # ~0.153 s
    assert expected - 0.002 <= shaped <= expected + base + 0.2  # the sleeps are a floor; the machine may add to them


def test_energy_model_uses_measured_phases():
    prof = load_profile(default_profile_path("device"))
    device_only = {"total_ms": 100.0, "prefix_ms": 100.0, "fallback_ms": 0.0, "upload_bytes": 0, "download_bytes": 0}
    assert request_energy_mj(device_only, prof, 5.85, 12.0, "lte") == pytest.approx(100.0 * prof.compute_power_w)
    cloud = {"total_ms": 300.0, "prefix_ms": 0.0, "fallback_ms": 0.0, "upload_bytes": 73125, "download_bytes": 0}
    radio = prof.radio("lte")
    tx_ms = 73125 * 8e-3 / 5.85  # 100 ms
    want = tx_ms * radio.up_power_w(5.85) + (300.0 - tx_ms) * prof.idle_power_w
    assert request_energy_mj(cloud, prof, 5.85, 12.0, "lte") == pytest.approx(want)


def test_cleanup_runs_registered_actions_once():
    done = []
    h = cleanup.register("test action", lambda: done.append(1))
    assert "test action" in cleanup.pending()
    cleanup.run_one(h)
    cleanup.run_one(h)
    assert done == [1] and "test action" not in cleanup.pending()


def _leftovers(pid: int) -> list[str]:
    found = []
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
        found += [line.split()[0] for line in out.splitlines() if line.startswith(f"{cleanup.PREFIX}-{pid}-")]
    except OSError:
        pass
    for hierarchy in (CGROUP_CPU, cleanup.CGROUP_CPUSET):
        if hierarchy.is_dir():
            found += [str(p) for p in hierarchy.glob(f"{cleanup.PREFIX}-{pid}-*")]
    return found


def test_interrupted_testbed_leaves_nothing_behind(tmp_path):
    """SIGTERM while the link is up: namespaces, the CPU quota group and the cpusets are gone afterwards."""
    script = (
        "import time, sys\n"
        "from nscompile.testbed import Testbed\n"
        "from nscompile.testbed.link import CpuQuota\n"
        f"tb = Testbed({str(tmp_path)!r})\n"
        "if tb.link.kernel: CpuQuota('dev', 0.5)\n"
        "print(tb.mode, bool(tb.cpusets), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        mode, pinned = proc.stdout.readline().split()
        made = _leftovers(proc.pid)
        if mode == "kernel":
            assert any("/cpu/" in p for p in made), made
        if pinned == "True":
            assert len([p for p in made if "/cpuset/" in p]) == 2, made
        proc.terminate()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _leftovers(proc.pid) == []


def test_stale_cpuset_of_a_dead_run_is_swept():
    """A cpuset left by a run killed with SIGKILL (its pid in the name) is removed by the next testbed."""
    if not os.access(cleanup.CGROUP_CPUSET, os.W_OK):
        pytest.skip(f"{cleanup.CGROUP_CPUSET} not writable")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    group = cleanup.CGROUP_CPUSET / f"{cleanup.PREFIX}-{dead.pid}-dev"
    group.mkdir()
    try:
        assert f"cgroup {group}" in cleanup.sweep_stale()
        assert not group.exists()
    finally:
        if group.exists():
            group.rmdir()


def test_pruning_drops_only_forced_cuts_far_slower_than_the_best():
    cuts = [None, "fast", "close", "hopeless"]
    recs = [[{"total_ms": ms} for ms in row]
            for row in ([1.0, 50.0], [10.0, 11.0, 12.0, 400.0], [20.0, 30.0], [25.0, 40.0])]
    # 25 > 2 x 11.5 (the best median; its one slow request changes nothing); 20 is not;
    # nscompile's own (None) never drops out.
    assert [i for i, _, _ in _out_of_the_running(cuts, recs, 2.0)] == [3]
    assert _out_of_the_running(cuts, recs, 0.0) == []


def test_bounds_come_from_measurements_of_nested_sets_and_the_fastest_goodput():
    """A bigger device set runs at least a smaller set's prefix; a smaller one at least a bigger one's
    suffix; an upload goes no faster than the fastest measured goodput. Encoded cuts bound nothing."""
    from nscompile.testbed.device import COMPUTE_SLACK, GOODPUT_SLACK, Bounds

    sets = {"cloud": "0", "a": "1", "b": "3", "b@int8": "3", "c": "7", "device": "f"}
    lossless = {c: "@" not in c for c in sets}
    up = {"cloud": 1 << 20, "a": 4 << 20, "b": 2 << 20, "b@int8": 1 << 19, "c": 1000, "device": 0}
    bounds = Bounds(list(sets), sets, lossless, up)
    assert all(bounds.lower_ms(c) == 0.0 for c in sets)  # nothing measured yet: nothing bounded
    # all-cloud: 1 MiB in 1000 ms of transfer, 200 of them the RTT -> 10.49 Mbps
    bounds.add("cloud", {"prefix_ms": 0.0, "server_ms": 40.0, "upload_bytes": 1 << 20, "transfer_ms": 1000.0, "rtt_ms": 200.0})
    bounds.add("b@int8", {"prefix_ms": 3.0, "server_ms": 30.0, "upload_bytes": 1 << 19, "transfer_ms": 300.0, "rtt_ms": 200.0})
    bounds.add("b", {"prefix_ms": 5.0, "server_ms": 20.0, "upload_bytes": 2 << 20, "transfer_ms": 2000.0, "rtt_ms": 200.0})
    goodput = (1 << 20) * 8e-3 / 800.0  # the int8 upload's 4.19 Mbps (net of the RTT) is no help: the fastest counts
    assert bounds.goodput_mbps == pytest.approx(max(goodput, (2 << 20) * 8e-3 / 1800.0, (1 << 19) * 8e-3 / 100.0))
    g = bounds.goodput_mbps
    # 'c' holds 'b' (prefix >= 5 ms) and is held by the full set (no server time measured):
    assert bounds.lower_ms("c") == pytest.approx(COMPUTE_SLACK * 5.0 + 1000 * 8e-3 / (GOODPUT_SLACK * g))
    # 'a' sits inside 'b' (suffix >= 20 ms) and holds all-cloud (prefix 0); the int8 cut's 30 ms says nothing:
    assert bounds.lower_ms("a") == pytest.approx(COMPUTE_SLACK * 20.0 + (4 << 20) * 8e-3 / (GOODPUT_SLACK * g))
    bounds.add("device", {"prefix_ms": 80.0, "upload_bytes": 0})
    assert bounds.lower_ms("c") < COMPUTE_SLACK * 80.0  # the full set holds 'c', not the other way round
    bounds.add("a", {"prefix_ms": 1.0, "server_ms": 1.0, "fell_back": True, "upload_bytes": 4 << 20, "transfer_ms": 1.0})
    assert "a" not in bounds.prefix_ms  # a request that fell back measured nothing of its cut


def test_forced_requests_neither_start_nor_end_nscompiles_backoff():
    """Among the rounds, a forced request that fails (or succeeds) leaves the back-off of nscompile's own alone."""
    from types import SimpleNamespace

    from nscompile.runtime.netstate import NetState
    from nscompile.testbed.device import Device

    class Runner:
        def __init__(self):
            self.net, self.force_cut = NetState(), None

        def wait_for_probe(self):
            pass

        def run(self, feeds, with_record):  # every request fails on the server
            self.net.failed(time.monotonic())
            return None, SimpleNamespace(as_dict=lambda: {"cut": self.force_cut})

    dev = Device.__new__(Device)
    dev.runner, dev.feeds = Runner(), {}
    dev.one_of_many("some_cut")
    assert dev.runner.net.failures == 0 and not dev.runner.net.in_backoff(time.monotonic())
    dev.one_of_many(None)
    assert dev.runner.net.failures == 1 and dev.runner.net.in_backoff(time.monotonic())


def test_userspace_testbed_pins_nothing_and_says_so(tmp_path):
    with Bed(tmp_path, userspace=True) as tb:
        assert tb.cpusets == {} and tb.server_cpus is None and tb.server_threads is None
        assert "no CPU pinning" in tb.describe()


@pytest.fixture(scope="module")
def lenet_build(tmp_path_factory):
    """A build of the small LeNet (device profile and this CPU's one-thread profile as the server's)."""
    from nscompile.testbed.experiments import (
        single_core_cloud_profile,
        _build,
        _prepare_model,
    )

    root = tmp_path_factory.mktemp("lenet")
    _build(_prepare_model("lenet", "small", root / "models"), root / "build", default_profile_path("device"),
           single_core_cloud_profile())
    return root / "build"


def _cpus_allowed(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        return parse_cpus(next(line.split()[1] for line in f if line.startswith("Cpus_allowed_list:")))


@pytest.mark.slow
def test_rounds_measure_every_mode_side_by_side_in_random_order(tmp_path, lenet_build):
    """The device's rounds op: per-mode records, one per round, in shuffled orders; pinned processes."""
    with Bed(tmp_path / "logs") as tb, tb.session(lenet_build, tag="rounds") as s:
        if tb.cpusets:  # kernel mode on a machine with two CPUs or more
            assert _cpus_allowed(s.device.proc.pid) == tb.cpusets["device"].cpus
            for w in (s.server, s.loadgen):
                assert _cpus_allowed(w.proc.pid) == tb.server_cpus
            assert "cpuset" in tb.describe()
        s.set_network(Rates(18.88, 54.0, 1.0))
        modes = [None, *s.cuts]
        got = s.rounds(modes, 6, warmup=1, max_s=60.0, fresh=True)
        assert list(got) == modes
        firsts, before_own = set(), set()
        for r in range(6):
            slots = {m: next(rec["slot"] for rec in got[m] if rec["round"] == r) for m in modes}
            assert sorted(slots.values()) == list(range(len(modes)))  # each mode once per round
            order = sorted(modes, key=slots.get)
            firsts.add(order[0])
            if order.index(None):
                before_own.add(order[order.index(None) - 1])
        # Neither the same mode first every round, nor the same mode always right before nscompile's own.
        assert len(firsts) > 1 and len(before_own) > 1, (firsts, before_own)
        for m, recs in got.items():
            assert [rec["round"] for rec in recs] == [0, 1, 2, 3, 4, 5]
            if m is None:
                assert all(rec["reason"] != "forced" for rec in recs)
            else:
                assert all(rec["reason"] == "forced" and rec["cut"] == m for rec in recs)
        # The time limit ends the rounds early, but never before the third.
        short = s.rounds(modes, 9, warmup=0, max_s=0.0)
        assert all(len(recs) == 3 for recs in short.values())
        # While under min_s, the rounds go on past the number asked for (sharper medians of fast
        # models), and stop at the first round that ends past min_s, or at the cap, whichever
        # comes first. Records carry the device's monotonic clock (shared with this process).
        t = time.monotonic()
        longer = s.rounds([None], 3, warmup=0, max_s=60.0, min_s=0.05)[None]
        assert len(longer) > 3
        if len(longer) < MAX_ROUNDS:  # stopped by min_s: the last round ended past it, the one before did not
            assert time.monotonic() - t >= 0.05
            assert longer[-2]["t"] - longer[0]["t"] < 0.05
        # A min_s that the cap reaches first: exactly MAX_ROUNDS rounds, never more.
        capped = s.rounds([None], 3, warmup=0, max_s=600.0, min_s=600.0)[None]
        assert len(capped) == MAX_ROUNDS
    assert _leftovers(os.getpid()) == []


@pytest.mark.slow
def test_bench_quick_end_to_end(tmp_path):
    """`nscompile bench --quick` writes the output contract (part of CI: kept under 3 minutes)."""
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "-m", "nscompile", "bench", "--quick", "-o", str(out)],
                       capture_output=True, text=True, timeout=400, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "testbed:" in r.stdout and ("kernel" in r.stdout or "fallback" in r.stdout)
    testbed = (out / "testbed.txt").read_text()
    assert "cpuset" in testbed or "no CPU pinning" in testbed  # what ran where, or why nothing was pinned
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    # LeNet and AlexNet x two networks x idle/loaded, and the LSTM on 5G idle (one device profile)
    assert sorted((r["model"], r["network"], r["load"]) for r in rows if r["model"] == "speech_lstm") == [("speech_lstm", "5G", "idle")]
    assert len(rows) == 2 * 2 * 2 + 1
    assert {r["model"] for r in rows} == {"lenet", "alexnet", "speech_lstm"} and {r["network"] for r in rows} == {"3G", "5G"}
    need = ["model", "network", "device_profile", "load", "chosen_cut", "chosen_ms", "oracle_cut", "oracle_ms",
            "all_device_ms", "all_cloud_ms", "chosen_mj", "all_device_mj", "all_cloud_mj"]
    for row in rows:
        for col in need:
            assert row[col] not in ("", "nan"), (col, row)
        assert float(row["oracle_ms"]) <= min(float(row["all_device_ms"]), float(row["all_cloud_ms"])) + 1e-9
        assert float(row["all_cloud_ms"]) > 0 and float(row["chosen_mj"]) > 0
        assert int(row["n"]) >= 3  # nscompile's own requests: at least three rounds
        assert float(row["chosen_q1_ms"]) <= float(row["chosen_ms"]) <= float(row["chosen_q3_ms"])
        assert row["iqr_overlap"] in ("True", "False")
        # The oracle is the best of every candidate: far more than the build's own cuts, timed or bounded out.
        assert int(row["n_candidates"]) >= int(row["n_timed"]) >= 2 and int(row["n_candidates"]) > 20
        assert row["oracle_is_split"] in ("True", "False")
        if row["oracle_is_split"] == "False":  # the oracle is one of the extremes
            assert row["oracle_ms"] in (row["all_device_ms"], row["all_cloud_ms"])
        assert row["contested"] in ("True", "False")
        if row["oracle_is_split"] == "True":
            assert row["contested"] == "True"
        elif row["contested"] == "True":
            assert float(row["runner_up_ms"]) <= 1.25 * float(row["oracle_ms"])
    # Whether a case is contested is measured (two candidates within 25% of each other can
    # drift apart on a shared machine): the bench reports how many --quick kept, the test
    # checks each row's flag against its own figures above, not a count.
    with open(out / "cuts.csv") as f:
        cut_rows = list(csv.DictReader(f))
    for row in cut_rows:  # every candidate either has requests or says which measured bound left it out
        assert int(row["n"]) > 0 or row["pruned"] in ("bound", "fastest request"), row
    assert {r["encoding"] for r in cut_rows} == {"fp32", "fp16", "int8"}
    loaded = [r for r in rows if r["load"] == "loaded"]
    assert all(float(r["server_load_k"]) > 1.0 for r in loaded)  # the load is measured, not assumed
    for name in ("report.html", "trace.csv", "load.csv", "trace.png", "load.png", "cuts.csv", "summary.json",
                 "device_load.csv", "device_load.png"):
        assert (out / name).is_file(), name
    with open(out / "device_load.csv") as f:
        trace = list(csv.DictReader(f))
    assert {r["mode"] for r in trace} == {"nscompile", "pinned Kd=1"}
    assert all(float(r["device_load"]) == 1.0 for r in trace if r["mode"] == "pinned Kd=1")

    def kd(phase):
        return statistics.median(float(r["device_load"]) for r in trace if r["mode"] == "nscompile" and r["phase"] == phase)

    if "cpuset" in testbed:  # the hog shares the device's one CPU: the runner sees it slow down, then recover
        assert kd("1") > 1.3 * kd("0") and kd("2") < kd("1"), (kd("0"), kd("1"), kd("2"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device_load"]["requests_loaded"] > 0
    assert summary["cases"] == len(rows) and 0.0 <= summary["within_10pct_or_iqr"] <= 1.0
    assert summary["contested_cases"] == summary["contested"]["cases"] == sum(r["contested"] == "True" for r in rows)
    out_ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout if _has_ip() else ""
    assert not [n for n in out_ns.split() if n.startswith(f"{cleanup.PREFIX}-{r.args and ''}")
                and cleanup._owner(n) is not None and not cleanup._alive(cleanup._owner(n))]


def _has_ip() -> bool:
    import shutil

    return shutil.which("ip") is not None


_SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 5599)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
n = int.from_bytes(c.recv(8, socket.MSG_WAITALL), "big"); got = 0
while got < n:
    got += len(c.recv(1 << 20))
c.sendall(b"k")
"""
_SEND = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 5599)); n = 400_000
t = time.perf_counter(); c.sendall(n.to_bytes(8, "big") + bytes(n)); c.recv(1)
print(n * 8 / (time.perf_counter() - t) / 1e6)
"""


def test_kernel_link_shapes_goodput_to_the_preset():
    """tbf on the veth makes the uplink's TCP goodput the preset's Mbps (headers accounted for)."""
    from nscompile.testbed.link import SERVER_IP, KernelLink, Rates, kernel_mode_problem

    if kernel_mode_problem():
        pytest.skip(f"kernel mode unavailable: {kernel_mode_problem()}")
    link = KernelLink()
    sink = None
    try:
        link.set(Rates(5.85, 12.0, 0.0))
        sink = subprocess.Popen(link.wrap([sys.executable, "-c", _SINK, SERVER_IP], "server"), stdout=subprocess.PIPE, text=True)
        assert sink.stdout.readline().strip() == "ready"
        out = subprocess.run(link.wrap([sys.executable, "-c", _SEND, SERVER_IP], "device"), capture_output=True, text=True, timeout=30)
        mbps = float(out.stdout)
        assert 5.85 * 0.9 <= mbps <= 5.85 * 1.1, mbps
    finally:
        if sink is not None:
            sink.kill()
            sink.wait()
        link.close()
    assert not _leftovers(os.getpid())


@pytest.mark.slow
def test_bench_userspace_fallback_says_so(tmp_path):
    """Without kernel mode (forced here) it shapes in user space and says so in its output."""
    out = tmp_path / "u"
    r = subprocess.run([sys.executable, "-m", "nscompile", "bench", "--quick", "--userspace", "--models", "lenet", "--networks", "LTE",
                        "--trace-model", "", "--load-model", "", "-o", str(out)],
                       capture_output=True, text=True, timeout=200, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "user space" in r.stdout and "fallback" in r.stdout
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["testbed"] for row in rows] == ["user", "user"]
    assert float(rows[0]["all_cloud_ms"]) >= 50.0  # LTE's 50 ms RTT is added in user space


def test_bench_rejects_unknown_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nscompile", "bench", "--quick", "--models", "nosuchnet", "-o", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown zoo model 'nosuchnet'" in r.stderr and "Traceback" not in r.stderr
