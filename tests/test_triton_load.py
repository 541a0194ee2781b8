"""K from Triton's statistics and metrics (nscompile.runtime.triton_load), on canned answers shaped
like tritonserver 2.51's; test_triton_real.py reads the real server."""

from __future__ import annotations

import httpx
import pytest

from nscompile.runtime.triton_load import TritonLoad

MS = 1_000_000  # ns


def stats(count: int, queue_ms: float, infer_ms: float, name: str = "m_suffix_a") -> dict:
    return {"model_stats": [
        {"name": name, "version": "1", "inference_stats": {
            "success": {"count": count, "ns": int((queue_ms + infer_ms) * MS)},
            "queue": {"count": count, "ns": int(queue_ms * MS)},
            "compute_input": {"count": count, "ns": 0},
            "compute_infer": {"count": count, "ns": int(infer_ms * MS)},
            "compute_output": {"count": count, "ns": 0}}},
        {"name": "someone_elses", "version": "1", "inference_stats": {
            "success": {"count": 10**6, "ns": 10**15}, "queue": {"count": 10**6, "ns": 10**15}}},
    ]}


METRICS = """# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="m_suffix_a",version="1"} 7
nv_inference_pending_request_count{model="someone_elses",version="1"} 900
"""


def reader(polls: list, metrics: str | None = None, instances: int = 2, **kw) -> TritonLoad:
    answers = iter(polls)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/models/stats":
            answer = next(answers)
            return httpx.Response(404) if answer is None else httpx.Response(200, json=answer)
        if request.url.path == "/metrics" and metrics is not None:
            return httpx.Response(200, text=metrics)
        if request.url.path == "/v2/models/m_suffix_a/config":
            return httpx.Response(200, json={"instance_group": [{"kind": "KIND_CPU", "count": instances, "gpus": []}]})
        return httpx.Response(404)

    client = httpx.Client(transport=httpx.MockTransport(handle))
    return TritonLoad(client, "http://triton:8000", ["m_suffix_a"], gap_s=0.0,
                      metrics_url="http://triton:8002/metrics" if metrics is not None else "", **kw)


def test_two_polls_give_the_slowdown_of_the_requests_between_them():
    # 10 requests between the polls: 90 ms queued and 10 ms computing in all, so 10 ms each
    # against 1 ms of compute; with the 1 ms floor K = (10 + 1) / (1 + 1).
    r = reader([stats(10, 0, 10), stats(20, 90, 20)])
    assert r.read() == pytest.approx(5.5)
    assert r.last["queue"] is None  # no metrics endpoint given


def test_idle_reference_is_the_fastest_compute_seen():
    # Window 1: 1 ms per request, no queue (K = 1). Window 2: compute doubled by CPU contention
    # and 3 ms queued per request: against the 1 ms seen before, K = (5 + 1) / (1 + 1).
    r = reader([stats(0, 0, 0), stats(10, 0, 10), stats(20, 30, 30)])
    assert r.read() == pytest.approx(1.0)
    assert r.read() == pytest.approx(3.0)


def test_no_request_between_polls_is_idle_and_a_restart_is_not_load():
    assert reader([stats(5, 10, 5), stats(5, 10, 5)]).read() == 1.0
    assert reader([stats(500, 9000, 500), stats(3, 0, 3)]).read() == 1.0  # counters went back


def test_metrics_add_queue_pressure_per_instance():
    # 7 pending for 2 instances: (7 + 1) / 2 = 4 > the stats' 1.
    r = reader([stats(5, 0, 5), stats(5, 0, 5)], metrics=METRICS, instances=2)
    assert r.read() == pytest.approx(4.0)
    assert r.last == {"stats": 1.0, "queue": 4.0, "window_s": pytest.approx(0.0, abs=0.5)}


def test_a_server_without_statistics_reports_nothing():
    assert reader([None]).read() is None


def test_metrics_port_is_guessed_only_beside_tritons_default_port():
    client = httpx.Client()
    assert TritonLoad(client, "http://10.0.0.2:8000", []).metrics_url == "http://10.0.0.2:8002/metrics"
    assert TritonLoad(client, "http://[::1]:8000", []).metrics_url == "http://[::1]:8002/metrics"
    assert TritonLoad(client, "http://10.0.0.2:9000", []).metrics_url is None
    client.close()
