"""Which cut a request takes: the device's estimates, the plan's table and the RTT rule.

:class:`CutPolicy` keeps the estimates of uplink bandwidth, RTT and server load
(:class:`~nscompile.runtime.netstate.NetState`), refreshes them through a
:class:`~nscompile.runtime.transport.V2Transport` (an active probe when they are missing
or stale, the timings of every completed transfer otherwise) and turns them into a cut
as its :mod:`~nscompile.runtime.policies` policy says: for "latency" and "energy" the
plan's look-up, overruled by all-device when the measured RTT makes that faster; for an
SLO, an energy budget or a weighted sum, a point of the plan's latency-energy front
evaluated at the estimates.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from nscompile.errors import NscompileError
from nscompile.runtime.netstate import DeviceLoad, NetState
from nscompile.runtime.plan import MS_PER_BYTE_AT_1MBPS, Cut, Plan
from nscompile.runtime.policies import Policy, as_policy
from nscompile.runtime.transport import SERVER_ERRORS, Answer, V2Transport
from nscompile.runtime.triton_load import TritonLoad


@dataclass
class RunRecord:
    """What one :meth:`SplitRunner.run` call did, with each phase's time.

    ``reason`` says why the cut was chosen: "table" (looked up), "pareto" (the policy's
    point of the latency-energy front), "unmet" (the policy's SLO or budget is met by no
    cut: its fallback, the fastest or the least energy), "forced", "plan" (the plan runs
    everything on the device whatever the conditions), "rtt" (the measured RTT made
    all-device faster than the table's cut), "backoff" (server failed recently) or
    "fallback" (the server failed during this call; ``error`` says how).

    ``objective`` is "latency" or "energy" for those policies and "pareto" for the others;
    ``policy`` is the policy's text form (``slo(latency_ms=120)``). ``predicted_latency_ms``
    and ``predicted_energy_mj`` are the plan's prediction for the chosen cut at the
    estimates the choice was made on (the all-device cut's needs none; None for a forced
    split, and the energy for a plan without an energy model).
    """

    cut: str
    reason: str
    objective: str
    bandwidth_mbps: float | None = None
    load: float = 1.0
    rtt_ms: float | None = None
    device_load: float = 1.0
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
    encoding: str = "fp32"  # the chosen cut's cut-tensor encoding (fp32, fp16, int8)
    policy: str = "latency"
    predicted_latency_ms: float | None = None
    predicted_energy_mj: float | None = None

    def as_dict(self) -> dict:
        """The record as a JSON-ready dict."""
        return asdict(self)


class CutPolicy:
    """The estimates a device keeps and the cut they select.

    Args:
        plan: the device's plan.
        policy: what to optimise: "latency" or "energy" (the plan's tables), or a policy of
            :mod:`~nscompile.runtime.policies` (``slo(latency_ms=X)``, ``budget(energy_mj=Y)``,
            ``weighted(lam)``) or its text form; :attr:`policy` may be set between requests.
        force_cut: always use this cut; None to look it up.
        bandwidth_mbps: pin the uplink bandwidth instead of measuring it.
        load: pin the server load instead of reading what the server reports.
        device_load: pin the device slowdown Kd instead of learning it from the device's runs.
        initial_bandwidth_mbps: the estimate to start from when the server offers no probe
            endpoint (Triton); refined by the transfers that follow.
        stale_s: re-probe when the estimates are older than this.
        backoff_s: (first, max) seconds to leave a failed server alone.

    Raises:
        NscompileError: an unknown policy, an objective or cut the plan does not have, or
            a front policy for a plan without fronts.
    """

    def __init__(self, plan: Plan, policy: str | Policy = "latency", *, force_cut: str | None = None,
                 bandwidth_mbps: float | None = None, load: float | None = None, device_load: float | None = None,
                 initial_bandwidth_mbps: float = 10.0,
                 stale_s: float = 10.0, backoff_s: tuple[float, float] = (0.5, 30.0)):
        if force_cut is not None and force_cut not in plan.cuts:
            raise NscompileError(f"cut {force_cut!r} is not in the plan; use one of {sorted(plan.cuts)}")
        self.plan = plan
        self.policy = policy
        self.force_cut = force_cut
        self.fixed_bandwidth = bandwidth_mbps
        self.fixed_load = load
        self.fixed_device_load = device_load
        self.initial_bandwidth = initial_bandwidth_mbps
        self.net = NetState(stale_s=stale_s, backoff_s=backoff_s)
        #: The device's own slowdown, learnt from every prefix it runs (see :meth:`learn_device`).
        self.device = DeviceLoad()
        #: Set when a decision was made on stale estimates: refresh them once the request is answered.
        self.probe_due = False
        # Objectives whose every table entry is all-device ("pareto": every table and front):
        # no condition can change that (RTT only ever favours the device), so such a runner
        # never probes or calls out.
        self._device_only = {o: plan.only_cut(o) == plan.fallback for o in [*plan.objectives, "pareto"]}
        # The last decision and the (policy, bandwidth, load, RTT, device level) it was made
        # for, with the predicted point. A device running its prefix alone learns nothing new
        # of the network, so most requests repeat the previous decision; reusing it keeps
        # the look-up (~5 us of Python; ~9 us for an AlexNet front) off a model that may itself take
        # only tens of microseconds. The device load enters as its plan level, since every
        # run moves the estimate a little; predictions use that level's Kd for the same reason.
        self._decision: tuple[tuple, str, str, tuple] = ((), "", "", (None, None))

    @property
    def policy(self) -> Policy:
        """The policy the next decision follows; assign a policy or its text form to change it."""
        return self._policy

    @policy.setter
    def policy(self, value: str | Policy) -> None:
        policy = as_policy(value)
        if policy.uses_tables and policy.objective not in self.plan.objectives:
            raise NscompileError(f"objective {policy.objective!r} is not in the plan; use one of {self.plan.objectives}")
        if not policy.uses_tables and not self.plan.has_pareto:
            raise NscompileError(f"policy {str(policy)!r} needs the plan's latency-energy fronts (plan.json 'pareto' and "
                                 "'energy_model'); rebuild it with this nscompile, or use latency or energy")
        self._policy = policy  # one assignment: a thread deciding meanwhile sees the old policy or the new

    @property
    def objective(self) -> str:
        """"latency" or "energy" for those policies, "pareto" for the others; assigning sets the policy."""
        return self._policy.objective

    @objective.setter
    def objective(self, value: str) -> None:
        self.policy = value

    def _record(self, cut: str, reason: str, **fields) -> RunRecord:
        """A record made without the network estimates; an all-device cut's prediction needs none."""
        policy = self._policy
        rec = RunRecord(cut, reason, policy.objective, policy=str(policy), **fields)
        if cut == self.plan.fallback:
            rec.predicted_latency_ms, rec.predicted_energy_mj = self._predict(
                self.plan.cuts[cut], 1.0, 1.0, None, self.plan.device_loads[self.plan.device_load_row(rec.device_load)])
        return rec

    def reset_estimates(self, stale_s: float | None = None, backoff_s: tuple[float, float] | None = None) -> None:
        """Forget bandwidth, RTT, load and back-off (see :meth:`SplitRunner.reset_estimates`)."""
        old = self.net
        self.net = NetState(old.bandwidth.alpha, stale_s or old.stale_s, backoff_s or (old.backoff_first, old.backoff_max))

    # -- choosing the cut ----------------------------------------------------------------

    def choose(self, now: float, transport: V2Transport) -> tuple[Cut, RunRecord]:
        """The cut for a request starting at `now` (time.monotonic()), and its record so far.

        Probes through `transport` first when there are no estimates yet; stale ones only
        set :attr:`probe_due`.
        """
        plan, net, policy = self.plan, self.net, self._policy
        if self.force_cut is not None:
            return plan.cuts[self.force_cut], self._record(self.force_cut, "forced", device_load=self.device_load)
        if self._device_only.get(policy.objective):
            return plan.cuts[plan.fallback], self._record(plan.fallback, "plan", device_load=self.device_load)
        if net.in_backoff(now):
            return plan.cuts[plan.fallback], self._record(plan.fallback, "backoff", device_load=self.device_load)
        probe_ms = 0.0
        if not net.needs_probe(now, self.fixed_bandwidth is None, self.fixed_load is None):
            pass
        elif self._has_estimates():
            # Stale, not missing: refresh off the request path (a probe costs several RTTs,
            # most of a second on 3G) and decide on the last estimates meanwhile.
            self.probe_due = True
        else:
            t = time.perf_counter()
            ok = self.probe(transport)
            probe_ms = (time.perf_counter() - t) * 1e3
            if not ok:
                net.failed(time.monotonic())
                rec = self._record(plan.fallback, "backoff", probe_ms=probe_ms, device_load=self.device_load)
                rec.error = "server unreachable during probe"
                return plan.cuts[plan.fallback], rec
        bw = self.fixed_bandwidth if self.fixed_bandwidth is not None else (net.bandwidth.value or self.initial_bandwidth)
        load = self.fixed_load if self.fixed_load is not None else net.load
        rtt = net.rtt.value
        device_load = self.device_load
        t = time.perf_counter()
        level = plan.device_load_row(device_load)
        key = (policy, bw, load, rtt, level)
        if key != self._decision[0]:
            self._decision = (key, *self._decide(policy, bw, load, rtt, plan.device_loads[level]))
        _, cut_id, reason, (latency_ms, energy_mj) = self._decision
        lookup_us = (time.perf_counter() - t) * 1e6
        return plan.cuts[cut_id], RunRecord(cut_id, reason, policy.objective, bw, load, rtt, device_load, lookup_us,
                                            probe_ms, policy=str(policy), predicted_latency_ms=latency_ms,
                                            predicted_energy_mj=energy_mj)

    def _decide(self, policy: Policy, bw: float, load: float, rtt: float | None,
                device_load: float) -> tuple[str, str, tuple[float | None, float | None]]:
        """(cut id, reason, (predicted latency ms, energy mJ)) for these estimates."""
        plan = self.plan
        if policy.uses_tables:
            cut_id, reason = plan.lookup(bw, load, policy.objective, device_load), "table"
            if self._rtt_says_device(plan.cuts[cut_id], bw, load, device_load, policy.objective):
                cut_id, reason = plan.fallback, "rtt"
            return cut_id, reason, self._predict(plan.cuts[cut_id], bw, load, rtt, device_load)
        front = plan.pareto_front(bw, load, rtt, None, device_load)
        point, met = policy.pick(front)
        return point.cut, "pareto" if met else "unmet", (point.latency_ms, point.energy_mj)

    def _predict(self, cut: Cut, bw: float, load: float, rtt: float | None,
                 device_load: float) -> tuple[float | None, float | None]:
        """The plan's latency and energy of ``cut`` (None where the plan cannot say)."""
        down = self.plan.downlink_mbps
        conditions = (bw, load, self.plan.rtt_ms if rtt is None else rtt, float(down) if down else None, device_load)
        try:
            latency = cut.latency_ms(*conditions)
        except KeyError:
            return None, None
        try:
            energy = cut.energy_mj(*conditions) if cut.energy is not None else None
        except KeyError:
            energy = None
        return latency, energy

    @property
    def device_load(self) -> float:
        """Kd as the next decision will use it: pinned, or learnt from the device's runs.

        An estimate older than the staleness limit is forgotten: the cut it chose may run
        nothing on the device (all-cloud), so no run would ever show that the device got
        fast again. The next device run says otherwise if it is still slow.
        """
        if self.fixed_device_load is not None:
            return self.fixed_device_load
        device = self.device
        if device.samples and time.monotonic() - device.updated_at > self.net.stale_s:
            device.reset()
        return device.value

    def learn_device(self, cut: Cut, measured_ms: float) -> None:
        """Note that the device ran ``cut``'s prefix (the whole model for all-device) in ``measured_ms``."""
        self.device.add(measured_ms, float(cut.predicted.get("device_ms") or 0.0))

    def _rtt_says_device(self, cut: Cut, bw: float, load: float, device_load: float,
                         objective: str | None = None) -> bool:
        """True when the measured RTT, above what the plan assumed, makes all-device faster.

        RTT adds the same time to every cut but all-device, so the table's choice stays
        the best of the split cuts; only the comparison with all-device can flip.
        ``objective``: the table the cut came from (default: the policy's).
        """
        rtt = self.net.rtt.value
        objective = objective or self._policy.objective
        if objective != "latency" or cut.all_device or rtt is None or rtt <= self.plan.rtt_ms:
            return False
        fallback = self.plan.cuts[self.plan.fallback]
        if "device_ms" not in fallback.predicted or "cloud_ms" not in cut.predicted:
            return False
        down = self.plan.downlink_mbps
        conditions = (bw, load, rtt, float(down) if down else None, device_load)
        return cut.latency_ms(*conditions) > fallback.latency_ms(*conditions)

    def _has_estimates(self) -> bool:
        return self.fixed_bandwidth is not None or self.net.bandwidth.value is not None

    # -- measuring -----------------------------------------------------------------------

    def learn(self, cut: Cut, upload_bytes: int, answer: Answer) -> None:
        """Update the estimates from one completed transfer of `upload_bytes` through `cut`."""
        now = time.monotonic()
        if answer.load is not None:
            self.net.set_load(answer.load, now)
        elif self.fixed_load is None and now - self.net.load_at > TritonLoad.refresh_s:
            self.probe_due = True  # no load header (Triton): re-read the server's statistics soon
        server_ms = answer.server_ms
        if server_ms is None:  # a server without our headers (Triton): use the plan's guess
            server_ms = float(cut.predicted.get("cloud_ms", 0.0)) * self.net.load
        wire_ms = answer.post_ms - server_ms
        rtt = self.net.rtt.value
        if upload_bytes < 2048:
            self.net.rtt.add(max(wire_ms, 0.01), now)
        elif rtt is not None and upload_bytes >= 8192:
            transfer_ms = wire_ms - rtt
            if self.plan.downlink_mbps:
                transfer_ms -= answer.download_bytes * MS_PER_BYTE_AT_1MBPS / float(self.plan.downlink_mbps)
            if transfer_ms > 0.05:  # below that it is timer noise, not a measurement
                self.net.bandwidth.add(upload_bytes * MS_PER_BYTE_AT_1MBPS / transfer_ms, now)

    def probe(self, transport: V2Transport) -> bool:
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
            answer = transport.ping(read_load=self.fixed_load is None)
            if answer is None:
                return False
            rtt, load = answer
            if load is not None:
                self.net.set_load(load, now)
            record(self.net.rtt, max(rtt, 0.01))
            if self.fixed_bandwidth is not None:
                return True
            if not transport.probe_supported:
                if self.net.bandwidth.value is None or id(self.net.bandwidth) in stale:
                    record(self.net.bandwidth, self.initial_bandwidth)
                else:
                    self.net.bandwidth.updated_at = now
                return True
            sample = transport.measure_uplink(rtt)
            if sample is not None:
                record(self.net.bandwidth, sample)
            return True
        except SERVER_ERRORS:
            return False
