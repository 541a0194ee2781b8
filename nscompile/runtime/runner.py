"""Collaborative inference on the device: run the prefix here, the suffix on the server.

Per call :class:`SplitRunner` reads its estimates of uplink bandwidth, RTT and server load
(probing actively when it has none or they went stale), looks the cut up in the plan,
runs the prefix with onnxruntime, sends the cut tensors in Triton's binary format and
merges the server's outputs with the ones computed on the device. Any failure of the
server (unreachable, over the deadline, an error answer) is absorbed: the request is
finished with the all-device model and the server is left alone for a back-off period.

Needs numpy, onnxruntime and httpx only.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from nscompile.errors import NscompileError
from nscompile.runtime.netstate import NetState
from nscompile.runtime.plan import Cut, Plan, load_plan
from nscompile.runtime.protocol import HEADER_LENGTH, ProtocolError, decode_response, encode_request
from nscompile.runtime.triton_load import TritonLoad

#: Headers ``nscompile serve`` adds to every answer (see nscompile.serve).
LOAD_HEADER = "nscompile-load"
SERVER_MS_HEADER = "nscompile-server-ms"
SHA_PARAMETER = "nscompile_model_sha256"

_SERVER_ERRORS = (httpx.HTTPError, ProtocolError, OSError, ValueError, KeyError, TypeError)


@dataclass
class RunRecord:
    """What one :meth:`SplitRunner.run` call did, with each phase's time.

    ``reason`` says why the cut was chosen: "table" (looked up), "forced", "plan" (the
    plan runs everything on the device whatever the conditions), "rtt" (the measured
    RTT made all-device faster than the table's cut), "backoff" (server failed recently)
    or "fallback" (the server failed during this call; ``error`` says how).
    """

    cut: str
    reason: str
    objective: str
    bandwidth_mbps: float | None = None
    load: float = 1.0
    rtt_ms: float | None = None
    lookup_us: float = 0.0
    probe_ms: float = 0.0
    prefix_ms: float = 0.0
    encode_ms: float = 0.0
    transfer_ms: float = 0.0
    server_ms: float = 0.0
    decode_ms: float = 0.0
    fallback_ms: float = 0.0
    total_ms: float = 0.0
    upload_bytes: int = 0
    download_bytes: int = 0
    fell_back: bool = False
    error: str | None = None

    def as_dict(self) -> dict:
        """The record as a JSON-ready dict."""
        return asdict(self)


@dataclass
class _Remote:
    outputs: dict[str, np.ndarray]
    encode_ms: float
    post_ms: float
    server_ms: float | None
    decode_ms: float
    download_bytes: int
    load: float | None
    extra: dict = field(default_factory=dict)


class SplitRunner:
    """Run a model split between this device and an inference server.

    Threads: one runner may be shared by several threads, calling :meth:`run` at the same
    time. They share the estimates (bandwidth, RTT, load), the back-off, the onnxruntime
    sessions (whose ``run`` is thread-safe) and the HTTP client's connections; calls in flight
    when the server fails count as one back-off step. ``last_record`` is whichever call
    finished last: pass ``with_record=True`` for each call's own record. (Tested with 16
    threads on one runner through a kill -9 of the server: tests/test_serve_faults.py.)

    Args:
        device_dir: the ``device/`` directory of a build: plan.json and prefix models.
        server_url: base URL of a KServe v2 server serving the build's ``cloud/``
            (``nscompile serve`` or Triton), e.g. "http://10.0.0.2:8000".
        objective: "latency" or "energy": which of the plan's tables to use.
        deadline_ms: a server call slower than this is abandoned and the request finished
            on the device.
        force_cut: always use this cut (benchmarks, tests); None to look it up.
        bandwidth_mbps: pin the uplink bandwidth instead of measuring it.
        load: pin the server load instead of reading what the server reports.
        initial_bandwidth_mbps: the estimate to start from when the server offers no probe
            endpoint (Triton); refined by the transfers that follow.
        stale_s: re-probe when the estimates are older than this (an all-device cut makes
            no transfers to learn from).
        backoff_s: (first, max) seconds to leave a failed server alone; doubles per failure.
        probe_bytes: (first, max) size of the active bandwidth probe; it grows until one
            transfer takes at least ~20 ms.
        providers: onnxruntime execution providers for the prefixes.
        session_options: onnxruntime session options for the prefixes.
        client: an httpx.Client to use (custom transports, proxies, TLS); one is made if None.

    Raises:
        NscompileError: a missing or inconsistent plan, an unknown objective or cut.
    """

    def __init__(
        self,
        device_dir: str | Path,
        server_url: str,
        objective: str = "latency",
        *,
        deadline_ms: float = 5000.0,
        force_cut: str | None = None,
        bandwidth_mbps: float | None = None,
        load: float | None = None,
        initial_bandwidth_mbps: float = 10.0,
        stale_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        probe_bytes: tuple[int, int] = (4096, 1 << 20),
        providers: list | None = None,
        session_options: ort.SessionOptions | None = None,
        client: httpx.Client | None = None,
    ):
        self.plan: Plan = load_plan(device_dir)
        if objective not in self.plan.objectives:
            raise NscompileError(
                f"objective {objective!r} is not in the plan; use one of {self.plan.objectives}"
            )
        if force_cut is not None and force_cut not in self.plan.cuts:
            raise NscompileError(f"cut {force_cut!r} is not in the plan; use one of {sorted(self.plan.cuts)}")
        self.objective = objective
        self.server_url = server_url.rstrip("/")
        self.deadline_s = deadline_ms / 1000.0
        self.force_cut = force_cut
        self.fixed_bandwidth = bandwidth_mbps
        self.fixed_load = load
        self.initial_bandwidth = initial_bandwidth_mbps
        self.probe_bytes = probe_bytes
        self.net = NetState(stale_s=stale_s, backoff_s=backoff_s)
        self._probe_lock = threading.Lock()
        self._probe_thread: threading.Thread | None = None
        self._probe_due = False  # stale estimates: refresh once this request is answered
        self._providers = providers or ["CPUExecutionProvider"]
        self._session_options = session_options
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._verified: set[str] = set()
        self._probe_supported = True
        self._own_client = client is None
        self._client = client or make_client(self.deadline_s)
        # Servers without the nscompile-load header (Triton): K from their statistics instead.
        self._triton_load = TritonLoad(self._client, self.server_url,
                                       [c.cloud_model for c in self.plan.cuts.values() if c.cloud_model],
                                       timeout_s=min(self.deadline_s, 2.0))
        self.last_record: RunRecord | None = None
        self._inputs = {t.name: t for t in self.plan.inputs}
        self._input_checks = {
            t.name: (np.dtype(t.dtype), tuple(t.shape), all(d > 0 for d in t.shape)) for t in self.plan.inputs
        }
        self._io: dict[str, tuple[list[str], list[str]]] = {}  # cut id -> session input, output names
        self._output_names = [t.name for t in self.plan.outputs]
        # Objectives whose every table entry is all-device: no condition can change that
        # (RTT only ever favours the device), so such a runner never probes or calls out.
        fallback = self.plan.fallback
        self._device_only = {o: self.plan.only_cut(o) == fallback for o in self.plan.objectives}
        # The last decision and the (objective, bandwidth, load, RTT) it was made for. A
        # device running its prefix alone learns nothing new, so most requests repeat the
        # previous decision; reusing it keeps the look-up (~5 us of Python) off a model
        # that may itself take only tens of microseconds.
        self._decision: tuple[tuple, str, str] = ((), "", "")
        # The fallback must always work, so load it now and fail early if it cannot.
        self._session(self.plan.cuts[self.plan.fallback])

    # -- public API ------------------------------------------------------------------

    def run(self, inputs: Mapping[str, np.ndarray], *, with_record: bool = False):
        """Run the model on `inputs`, split wherever the current conditions say.

        Args:
            inputs: graph input name -> array (dtype and shape as in the plan).
            with_record: also return a :class:`RunRecord` (always kept in ``last_record``).

        Returns:
            output name -> array for every graph output; ``(outputs, record)`` when
            `with_record` is true.

        Raises:
            NscompileError: bad inputs, or the server serves artifacts of another build.
        """
        t0 = time.perf_counter()
        feeds = self._check_inputs(inputs)
        cut, rec = self._choose(time.monotonic())
        outputs = None
        if not cut.all_device:
            outputs = self._split(cut, feeds, rec)
        if outputs is None:  # all-device by choice, or the server failed
            t = time.perf_counter()
            outputs = self._run_prefix(self.plan.cuts[self.plan.fallback], feeds)
            dt = (time.perf_counter() - t) * 1e3
            if rec.fell_back:
                rec.fallback_ms = dt
            else:
                rec.prefix_ms = dt
        rec.total_ms = (time.perf_counter() - t0) * 1e3
        if self._probe_due:
            # After the answer, not beside the request: on a CPU-limited device a probe
            # (about 9 ms of CPU for the HTTP calls) would otherwise slow this run down.
            self._probe_due = False
            self._probe_in_background()
        self.last_record = rec
        result = {name: outputs[name] for name in self._output_names}
        return (result, rec) if with_record else result

    def reset_estimates(self, stale_s: float | None = None, backoff_s: tuple[float, float] | None = None) -> None:
        """Forget bandwidth, RTT, load and back-off: the device moved to another network.

        Args:
            stale_s: New staleness limit of the estimates (default: keep).
            backoff_s: New (first, max) back-off after failures (default: keep).
        """
        old = self.net
        self.net = NetState(old.bandwidth.alpha, stale_s or old.stale_s, backoff_s or (old.backoff_first, old.backoff_max))

    def wait_for_probe(self, timeout_s: float | None = None) -> None:
        """Wait until a background probe in progress (if any) has finished."""
        thread = self._probe_thread
        if thread is not None:
            thread.join(timeout_s)

    def check_server(self) -> None:
        """Check now that the server serves this build's suffixes (same model hash).

        Raises:
            NscompileError: the server is unreachable, or serves other artifacts.
        """
        for cut in self.plan.cuts.values():
            if cut.cloud_model:
                try:
                    self._verify(cut.cloud_model)
                except _SERVER_ERRORS as exc:
                    raise NscompileError(f"server {self.server_url} is not reachable ({exc}); start it or fix the URL") from None

    def close(self) -> None:
        """Close the HTTP client if the runner made it (after a background probe still running)."""
        self.wait_for_probe(self.deadline_s)
        if self._own_client:
            self._client.close()

    def __enter__(self) -> SplitRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- choosing the cut ----------------------------------------------------------------

    def _choose(self, now: float) -> tuple[Cut, RunRecord]:
        plan, net = self.plan, self.net
        if self.force_cut is not None:
            rec = RunRecord(self.force_cut, "forced", self.objective)
            return plan.cuts[self.force_cut], rec
        if self._device_only.get(self.objective):
            return plan.cuts[plan.fallback], RunRecord(plan.fallback, "plan", self.objective)
        if net.in_backoff(now):
            return plan.cuts[plan.fallback], RunRecord(plan.fallback, "backoff", self.objective)
        probe_ms = 0.0
        if not net.needs_probe(now, self.fixed_bandwidth is None, self.fixed_load is None):
            pass
        elif self._has_estimates():
            # Stale, not missing: refresh off the request path (a probe costs several RTTs,
            # most of a second on 3G) and decide on the last estimates meanwhile.
            self._probe_due = True
        else:
            t = time.perf_counter()
            ok = self._probe()
            probe_ms = (time.perf_counter() - t) * 1e3
            if not ok:
                net.failed(time.monotonic())
                rec = RunRecord(plan.fallback, "backoff", self.objective, probe_ms=probe_ms)
                rec.error = "server unreachable during probe"
                return plan.cuts[plan.fallback], rec
        bw = self.fixed_bandwidth if self.fixed_bandwidth is not None else (net.bandwidth.value or self.initial_bandwidth)
        load = self.fixed_load if self.fixed_load is not None else net.load
        rtt = net.rtt.value
        t = time.perf_counter()
        key = (self.objective, bw, load, rtt)
        if key != self._decision[0]:
            cut_id, reason = plan.lookup(bw, load, self.objective), "table"
            if self._rtt_says_device(plan.cuts[cut_id], bw, load):
                cut_id, reason = plan.fallback, "rtt"
            self._decision = (key, cut_id, reason)
        _, cut_id, reason = self._decision
        lookup_us = (time.perf_counter() - t) * 1e6
        return plan.cuts[cut_id], RunRecord(cut_id, reason, self.objective, bw, load, rtt, lookup_us, probe_ms)

    def _rtt_says_device(self, cut: Cut, bw: float, load: float) -> bool:
        """True when the measured RTT, above what the plan assumed, makes all-device faster.

        RTT adds the same time to every cut but all-device, so the table's choice stays
        the best of the split cuts; only the comparison with all-device can flip.
        """
        rtt = self.net.rtt.value
        if self.objective != "latency" or cut.all_device or rtt is None or rtt <= self.plan.rtt_ms:
            return False
        p, f = cut.predicted, self.plan.cuts[self.plan.fallback].predicted
        if "device_ms" not in f or "cloud_ms" not in p:
            return False
        split_ms = p.get("device_ms", 0.0) + p["cloud_ms"] * load + p.get("upload_bytes", 0) * 8e-3 / bw + rtt
        down = self.plan.downlink_mbps
        if down:
            split_ms += p.get("download_bytes", 0) * 8e-3 / float(down)
        return split_ms > f["device_ms"]

    # -- running -------------------------------------------------------------------------

    def _check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # On the hot path: numpy dtype objects compare in C, dtype.name does not.
        if inputs.keys() != self._inputs.keys():
            raise NscompileError(
                f"inputs {sorted(inputs)} do not match the model's {sorted(self._inputs)}; pass exactly those"
            )
        feeds = {}
        for name, (dtype, shape, static) in self._input_checks.items():
            a = inputs[name]
            if type(a) is not np.ndarray:
                a = np.asarray(a)
            if a.dtype != dtype:
                raise NscompileError(f"input {name!r} is {a.dtype.name}, the model takes {dtype.name}; convert it")
            if a.shape != shape and (
                static or len(a.shape) != len(shape) or any(d > 0 and d != s for d, s in zip(shape, a.shape))
            ):
                raise NscompileError(f"input {name!r} has shape {list(a.shape)}, the model takes {list(shape)}")
            feeds[name] = a
        return feeds

    def _session(self, cut: Cut) -> ort.InferenceSession:
        sess = self._sessions.get(cut.id)
        if sess is None:
            try:
                # Loading from the path lets onnxruntime find the shared weights file.
                sess = ort.InferenceSession(str(cut.prefix), sess_options=self._session_options, providers=self._providers)
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
                raise NscompileError(f"cannot load prefix model {cut.prefix} ({exc}); copy the build's device/ again") from None
            self._sessions[cut.id] = sess
        return sess

    def _run_prefix(self, cut: Cut, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = self._session(cut)
        io = self._io.get(cut.id)
        if io is None:
            io = self._io[cut.id] = ([i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()])
        ins, outs = io
        return dict(zip(outs, sess.run(outs, {n: feeds[n] for n in ins})))

    def _split(self, cut: Cut, feeds: dict[str, np.ndarray], rec: RunRecord) -> dict[str, np.ndarray] | None:
        """Run `cut` split; None (with `rec` marked) when the server failed."""
        produced: dict[str, np.ndarray] = {}
        if cut.prefix is not None:
            t = time.perf_counter()
            produced = self._run_prefix(cut, feeds)
            rec.prefix_ms = (time.perf_counter() - t) * 1e3
        upload = {t.name: (produced[t.name] if t.name in produced else feeds[t.name]) for t in cut.tensors}
        rec.upload_bytes = sum(a.nbytes for a in upload.values())
        try:
            if cut.cloud_model not in self._verified:
                self._verify(cut.cloud_model)
            remote = self._infer(cut.cloud_model, upload)
        except _SERVER_ERRORS as exc:
            self._verified.clear()  # the server may come back with other artifacts
            backoff = self.net.failed(time.monotonic())
            rec.fell_back, rec.reason = True, "fallback"
            rec.error = f"{type(exc).__name__}: {exc}"[:300] + f" (retry in {backoff:.1f}s)"
            return None
        self.net.succeeded()
        rec.encode_ms, rec.decode_ms = remote.encode_ms, remote.decode_ms
        rec.server_ms = remote.server_ms or 0.0
        rec.transfer_ms = remote.post_ms - rec.server_ms
        rec.download_bytes = remote.download_bytes
        self._learn(cut, rec, remote)
        out = {name: produced[name] for name in cut.device_outputs}
        out.update(remote.outputs)
        missing = [n for n in self._output_names if n not in out]
        if missing:
            self.net.failed(time.monotonic())
            rec.fell_back, rec.reason, rec.error = True, "fallback", f"server answer lacks outputs {missing}"
            return None
        return out

    def _verify(self, model: str) -> None:
        """Refuse to pair this plan with a server model built from another network."""
        r = self._client.get(f"{self.server_url}/v2/models/{model}/config", timeout=self.deadline_s)
        if r.status_code == 404:
            raise NscompileError(
                f"server {self.server_url} does not serve model {model!r}; serve the cloud/ "
                "directory of the same build as this device/"
            )
        r.raise_for_status()
        params = r.json().get("parameters") or {}
        sha = (params.get(SHA_PARAMETER) or {}).get("string_value")
        if sha != self.plan.model_sha256:
            raise NscompileError(
                f"server model {model!r} was built from model sha256 {sha or 'unknown'}, this device's "
                f"plan from {self.plan.model_sha256}; deploy device/ and cloud/ of the same build"
            )
        self._verified.add(model)

    def _infer(self, model: str, upload: dict[str, np.ndarray]) -> _Remote:
        t0 = time.perf_counter()
        body, headers = encode_request(upload)
        t1 = time.perf_counter()
        r = self._client.post(f"{self.server_url}/v2/models/{model}/infer", content=body, headers=headers, timeout=self.deadline_s)
        t2 = time.perf_counter()
        if r.status_code != 200:
            raise ProtocolError(f"server answered {r.status_code}: {r.text[:200]}")
        content = r.content
        _, outputs = decode_response(content, r.headers.get(HEADER_LENGTH))
        t3 = time.perf_counter()
        server_ms = _float(r.headers.get(SERVER_MS_HEADER))
        return _Remote(outputs, (t1 - t0) * 1e3, (t2 - t1) * 1e3, server_ms, (t3 - t2) * 1e3, len(content), _float(r.headers.get(LOAD_HEADER)))

    # -- measuring -----------------------------------------------------------------------

    def _learn(self, cut: Cut, rec: RunRecord, remote: _Remote) -> None:
        """Update the estimates from one completed transfer."""
        now = time.monotonic()
        if remote.load is not None:
            self.net.set_load(remote.load, now)
        elif self.fixed_load is None and now - self.net.load_at > TritonLoad.refresh_s:
            self._probe_due = True  # no load header: re-read the server's statistics soon
        server_ms = remote.server_ms
        if server_ms is None:  # a server without our headers (Triton): use the plan's guess
            server_ms = float(cut.predicted.get("cloud_ms", 0.0)) * self.net.load
        wire_ms = remote.post_ms - server_ms
        rtt = self.net.rtt.value
        if rec.upload_bytes < 2048:
            self.net.rtt.add(max(wire_ms, 0.01), now)
        elif rtt is not None and rec.upload_bytes >= 8192:
            transfer_ms = wire_ms - rtt
            if self.plan.downlink_mbps:
                transfer_ms -= remote.download_bytes * 8e-3 / float(self.plan.downlink_mbps)
            if transfer_ms > 0.05:  # below that it is timer noise, not a measurement
                self.net.bandwidth.add(rec.upload_bytes * 8e-3 / transfer_ms, now)

    def _has_estimates(self) -> bool:
        return self.fixed_bandwidth is not None or self.net.bandwidth.value is not None

    def _probe_in_background(self) -> None:
        with self._probe_lock:
            if self._probe_thread is not None and self._probe_thread.is_alive():
                return
            self._probe_thread = threading.Thread(target=self._background_probe, name="nscompile-probe", daemon=True)
            self._probe_thread.start()

    def _background_probe(self) -> None:
        if not self._probe():
            self.net.failed(time.monotonic())

    def _probe(self) -> bool:
        """Measure RTT, load and (where the server allows) uplink bandwidth; False if unreachable."""
        now = time.monotonic()
        # A stale estimate describes a link that may be gone: the probe's sample starts it
        # over (replaced in one step, so a concurrent look-up never sees it empty).
        stale = {id(est) for est in (self.net.bandwidth, self.net.rtt) if now - est.updated_at > self.net.stale_s}

        def record(est, sample: float) -> None:
            if id(est) in stale:
                est.reset()
            est.add(sample, now)

        try:
            rtts = []
            for _ in range(2):  # the first may pay for opening the connection
                t = time.perf_counter()
                r = self._client.get(f"{self.server_url}/v2/nscompile/load", timeout=self.deadline_s)
                rtts.append((time.perf_counter() - t) * 1e3)
                if r.status_code != 200:
                    break
            if r.status_code == 200:
                self.net.set_load(_float(r.json().get("load")) or 1.0, now)
            else:  # not nscompile serve: check liveness the standard way
                r = self._client.get(f"{self.server_url}/v2/health/ready", timeout=self.deadline_s)
                if r.status_code != 200:
                    return False
                rtts.append(r.elapsed.total_seconds() * 1e3)
                self._probe_supported = False
                load = self._triton_load.read() if self.fixed_load is None else None
                if load is not None:
                    self.net.set_load(load, now)
            rtt = min(rtts)
            record(self.net.rtt, max(rtt, 0.01))
            if self.fixed_bandwidth is not None:
                return True
            if not self._probe_supported:
                if self.net.bandwidth.value is None or id(self.net.bandwidth) in stale:
                    record(self.net.bandwidth, self.initial_bandwidth)
                else:
                    self.net.bandwidth.updated_at = now
                return True
            size, limit = self.probe_bytes
            times: list[float] = []
            for _ in range(16):  # bounded: sizes grow 4x up to `limit`, then one repeat
                payload = bytes(size)
                t = time.perf_counter()
                r = self._client.post(f"{self.server_url}/v2/nscompile/probe", content=payload, timeout=self.deadline_s)
                times.append((time.perf_counter() - t) * 1e3)
                if r.status_code != 200:
                    self._probe_supported = r.status_code != 404
                    return True
                if times[-1] - rtt < 20.0 and size < limit:
                    size, times = min(size * 4, limit), []
                elif len(times) == 2:
                    break
            # Stalls only ever add time, so the faster of two equal transfers is the better sample.
            record(self.net.bandwidth, size * 8e-3 / max(min(times) - rtt, 0.05))
            return True
        except _SERVER_ERRORS:
            return False


def make_client(timeout_s: float = 5.0, **transport_options) -> httpx.Client:
    """An httpx client for talking to an inference server from a device.

    TCP_NODELAY matters: httpx writes a request's headers and body separately, and with
    Nagle's algorithm the body's last segment can wait ~40 ms for a delayed ACK.

    Args:
        timeout_s: the per-request timeout (connect: at most 2 s).
        **transport_options: passed to httpx.HTTPTransport.

    Returns:
        The client.
    """
    import socket

    options = list(transport_options.pop("socket_options", []))
    options.append((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
    return httpx.Client(
        transport=httpx.HTTPTransport(socket_options=options, **transport_options),
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 2.0)),
    )


def _float(value: object) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
