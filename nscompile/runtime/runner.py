"""Collaborative inference on the device: run the prefix here, the suffix on the server.

Per call :class:`SplitRunner` reads its estimates of uplink bandwidth, RTT and server load
(probing actively when it has none or they went stale), looks the cut up in the plan,
runs the prefix with onnxruntime, sends the cut tensors in Triton's binary format and
merges the server's outputs with the ones computed on the device. Any failure of the
server (unreachable, over the deadline, an error answer) is absorbed: the request is
finished with the all-device model and the server is left alone for a back-off period.

The runner composes three parts: :class:`~nscompile.runtime.policy.CutPolicy` (the
estimates and the choice of cut, as the runner's :mod:`~nscompile.runtime.policies`
policy says), :class:`~nscompile.runtime.transport.V2Transport` (the
KServe v2 client) and :class:`~nscompile.runtime.sessions.PrefixSessions` (the cached
onnxruntime sessions).

Needs numpy, onnxruntime and httpx only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from nscompile.errors import NscompileError
from nscompile.runtime.plan import Cut, Plan, load_plan
from nscompile.runtime.policies import Policy
from nscompile.runtime.policy import CutPolicy, RunRecord
from nscompile.runtime.sessions import PrefixSessions
from nscompile.runtime.transport import SERVER_ERRORS, V2Transport, make_client

__all__ = ["RunRecord", "SplitRunner", "make_client"]


class _Delegated:
    """A runner attribute that lives on one of its parts: reads and writes go there."""

    def __init__(self, part: str):
        self.part = part

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, runner, owner=None):
        return self if runner is None else getattr(getattr(runner, self.part), self.name)

    def __set__(self, runner, value) -> None:
        setattr(getattr(runner, self.part), self.name, value)


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
        objective: "latency" or "energy": which of the plan's tables to use (the policies
            of those names; the default, with no ``policy``, is "latency").
        policy: what to optimise: "latency", "energy", or a policy from
            :mod:`nscompile.runtime.policies`: ``slo(latency_ms=X)`` (the least device energy
            whose predicted latency is within X ms; the fastest if no cut is),
            ``budget(energy_mj=Y)`` (the fastest within Y mJ; the least energy if none is),
            ``weighted(lam)`` (the least latency + lam x energy), or its text form
            ("slo(latency_ms=120)"). Pass this or ``objective``, not both.
        deadline_ms: a server call slower than this is abandoned and the request finished
            on the device.
        force_cut: always use this cut (benchmarks, tests); None to look it up.
        bandwidth_mbps: pin the uplink bandwidth instead of measuring it.
        load: pin the server load instead of reading what the server reports.
        device_load: pin the device's slowdown Kd against its profile instead of learning it
            from its own runs (measured over predicted time of each prefix it runs).
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

    Attributes:
        plan: the device's :class:`~nscompile.runtime.plan.Plan`.
        cut_policy, transport, sessions: the parts (see the module docstring).
        policy: the :class:`~nscompile.runtime.policies.Policy` in force; assign a policy or
            its text form between calls (e.g. ``runner.policy = "energy"`` on low battery).
        objective, force_cut, fixed_bandwidth, fixed_load, fixed_device_load, initial_bandwidth:
            the policy's settings; assigning one takes effect on the next request.
        net: the policy's :class:`~nscompile.runtime.netstate.NetState` estimates.
        server_url, deadline_s, probe_bytes: the transport's settings.
        last_record: the :class:`RunRecord` of the last :meth:`run`.

    Raises:
        NscompileError: a missing or inconsistent plan, an unknown objective, policy or
            cut, or both ``objective`` and ``policy``.
    """

    policy = _Delegated("cut_policy")
    objective = _Delegated("cut_policy")
    force_cut = _Delegated("cut_policy")
    fixed_bandwidth = _Delegated("cut_policy")
    fixed_load = _Delegated("cut_policy")
    fixed_device_load = _Delegated("cut_policy")
    initial_bandwidth = _Delegated("cut_policy")
    net = _Delegated("cut_policy")
    server_url = _Delegated("transport")
    deadline_s = _Delegated("transport")
    probe_bytes = _Delegated("transport")

    def __init__(
        self,
        device_dir: str | Path,
        server_url: str,
        objective: str | None = None,
        *,
        policy: str | Policy | None = None,
        deadline_ms: float = 5000.0,
        force_cut: str | None = None,
        bandwidth_mbps: float | None = None,
        load: float | None = None,
        device_load: float | None = None,
        initial_bandwidth_mbps: float = 10.0,
        stale_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        probe_bytes: tuple[int, int] = (4096, 1 << 20),
        providers: list | None = None,
        session_options: ort.SessionOptions | None = None,
        client: httpx.Client | None = None,
    ):
        if objective is not None and policy is not None:
            raise NscompileError(f"pass policy= or objective=, not both (got objective={objective!r}, policy={str(policy)!r})")
        self.plan: Plan = load_plan(device_dir)
        self.cut_policy = CutPolicy(self.plan, policy if policy is not None else objective or "latency", force_cut=force_cut, bandwidth_mbps=bandwidth_mbps, load=load,
                                device_load=device_load,
                                initial_bandwidth_mbps=initial_bandwidth_mbps, stale_s=stale_s, backoff_s=backoff_s)
        self.transport = V2Transport(server_url, self.plan.model_sha256, deadline_ms / 1000.0, client, probe_bytes,
                                     models=[c.cloud_model for c in self.plan.cuts.values() if c.cloud_model])
        self.sessions = PrefixSessions(providers, session_options)
        self._probe_lock = threading.Lock()
        self._probe_thread: threading.Thread | None = None
        self.last_record: RunRecord | None = None
        self._inputs = {t.name: t for t in self.plan.inputs}
        self._input_checks = {
            t.name: (np.dtype(t.dtype), tuple(t.shape), all(d > 0 for d in t.shape)) for t in self.plan.inputs
        }
        self._output_names = [t.name for t in self.plan.outputs]
        # The fallback must always work, so load it now and fail early if it cannot.
        self.sessions.get(self.plan.cuts[self.plan.fallback])

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
        policy = self.cut_policy
        cut, rec = policy.choose(time.monotonic(), self.transport)
        rec.encoding = cut.encoding
        outputs = None
        if not cut.all_device:
            outputs = self._split(cut, feeds, rec)
        if outputs is None:  # all-device by choice, or the server failed
            fallback = self.plan.cuts[self.plan.fallback]
            t = time.perf_counter()
            outputs = self.sessions.run(fallback, feeds)
            dt = (time.perf_counter() - t) * 1e3
            if rec.fell_back:
                rec.fallback_ms = dt
            else:
                rec.prefix_ms = dt
            policy.learn_device(fallback, dt)
        rec.total_ms = (time.perf_counter() - t0) * 1e3
        if policy.probe_due:
            # After the answer, not beside the request: on a CPU-limited device a probe
            # (about 9 ms of CPU for the HTTP calls) would otherwise slow this run down.
            policy.probe_due = False
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
        self.cut_policy.reset_estimates(stale_s, backoff_s)

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
        self.transport.check_server([cut.cloud_model for cut in self.plan.cuts.values() if cut.cloud_model])

    def close(self) -> None:
        """Close the HTTP client if the runner made it, once a background probe has finished with it."""
        self.wait_for_probe(timeout_s=self.transport.deadline_s)
        self.transport.close()

    def __enter__(self) -> SplitRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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

    def _split(self, cut: Cut, feeds: dict[str, np.ndarray], rec: RunRecord) -> dict[str, np.ndarray] | None:
        """Run `cut` split; None (with `rec` marked) when the server failed."""
        produced: dict[str, np.ndarray] = {}
        if cut.prefix is not None:
            t = time.perf_counter()
            produced = self.sessions.run(cut, feeds)
            rec.prefix_ms = (time.perf_counter() - t) * 1e3
            self.cut_policy.learn_device(cut, rec.prefix_ms)
        upload = {t.name: (produced[t.name] if t.name in produced else feeds[t.name]) for t in cut.tensors}
        rec.upload_bytes = sum(a.nbytes for a in upload.values())
        try:
            answer = self.transport.infer(cut.cloud_model, upload)
        except SERVER_ERRORS as exc:
            backoff = self.net.failed(time.monotonic())
            rec.fell_back, rec.reason = True, "fallback"
            rec.error = f"{type(exc).__name__}: {exc}"[:300] + f" (retry in {backoff:.1f}s)"
            return None
        self.net.succeeded()
        rec.encode_ms, rec.decode_ms = answer.encode_ms, answer.decode_ms
        rec.server_ms = answer.server_ms or 0.0
        rec.transfer_ms = answer.post_ms - rec.server_ms
        rec.download_bytes = answer.download_bytes
        self.cut_policy.learn(cut, rec.upload_bytes, answer)
        out = {name: produced[name] for name in cut.device_outputs}
        out.update(answer.outputs)
        missing = [n for n in self._output_names if n not in out]
        if missing:
            self.net.failed(time.monotonic())
            rec.fell_back, rec.reason, rec.error = True, "fallback", f"server answer lacks outputs {missing}"
            return None
        return out

    # -- probing off the request path ------------------------------------------------------

    def _probe_in_background(self) -> None:
        with self._probe_lock:
            if self._probe_thread is not None and self._probe_thread.is_alive():
                return
            self._probe_thread = threading.Thread(target=self._background_probe, name="nscompile-probe", daemon=True)
            self._probe_thread.start()

    def _background_probe(self) -> None:
        if not self.cut_policy.probe(self.transport):
            self.net.failed(time.monotonic())
