"""Against the real Triton Inference Server (``tritonserver`` 2.51 from the nvidia-pytriton wheel,
Python backend), serving builds made with ``--triton-backend python``: tritonclient answers of
every suffix equal the whole model, SplitRunner end to end, the load signal read from Triton's
statistics, and kill -9 with 16 threads on one runner.

Run them with ``python -m nscompile.serve.triton_env .venv-triton`` once (a Python 3.12 venv,
about two minutes), then ``python -m pytest -m triton``. Without Python 3.12 or the venv they
skip, saying which part is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from helpers import (FIXED_PHONE_PROFILE, ServerProcess, check_kill_and_restart, make_handmade_build, make_model, sample_inputs,
                     through_kill_and_restart)
from nscompile.runtime.protocol import encode_request

pytestmark = [pytest.mark.triton, pytest.mark.slow]
REPO = Path(__file__).parents[1]
PYTHON_MODEL = REPO / "nscompile" / "serve" / "triton_python_model.py"


httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="session")
def triton_install():
    """The venv's Triton, or a skip that names what is missing."""
    from nscompile.serve.triton_env import VENV_ENV, TritonInstall, TritonUnavailable, find_python312

    venv = Path(os.environ.get(VENV_ENV) or REPO / ".venv-triton")
    if not venv.exists() and find_python312() is None:
        pytest.skip("real Triton: no Python 3.12 here, which nvidia-pytriton's tritonserver needs")
    try:
        return TritonInstall.locate(venv)
    except TritonUnavailable as exc:
        pytest.skip(f"real Triton: {exc}")


def start_triton(install, repository: Path, **ports):
    """A TritonServer, or a skip with the reason when the binary cannot run here. A server that
    runs but does not get ready (a model that does not load) fails the test, with its log."""
    from nscompile.serve.triton_env import TritonServer, TritonUnavailable

    try:
        return TritonServer(repository, install, **ports)
    except TritonUnavailable as exc:
        pytest.skip(f"tritonserver cannot run here: {exc}")


def to_python_backend(cloud: Path) -> None:
    """Turn a hand-made onnxruntime repository into what --triton-backend python emits."""
    for config in cloud.glob("*/config.pbtxt"):
        config.write_text(config.read_text().replace('platform: "onnxruntime_onnx"', 'backend: "python"'))
        shutil.copy(PYTHON_MODEL, config.parent / "1" / "model.py")


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """name -> (build dir, whole model): the hand-made DAG and two compiler builds (the same DAG,
    and the zoo's ResNet-18 small), all with --triton-backend python."""
    from nscompile import compiler, zoo

    root = tmp_path_factory.mktemp("triton_real")
    hand = make_handmade_build(root)
    to_python_backend(hand / "cloud")
    out = {"tiny": (hand, root / "tiny.onnx")}
    onnx.save(make_model(), root / "dag.onnx")
    onnx.save(zoo.build_model("resnet18", size="small", seed=0), root / "resnet18.onnx")
    for name in ("dag", "resnet18"):
        compiler.build(root / f"{name}.onnx", root / name, report=False, include_all_cloud=True, triton_backend="python")
        out[name] = (root / name, root / f"{name}.onnx")
    # The same ResNet-18 for the phone-class device with fp16 and int8 cut tensors: encoded cuts.
    shutil.copy(root / "resnet18.onnx", root / "resnet18enc.onnx")
    compiler.build(root / "resnet18enc.onnx", root / "resnet18enc", report=False, include_all_cloud=True,
                   triton_backend="python", encodings="fp32,fp16,int8",
                   device_profile=FIXED_PHONE_PROFILE)
    out["resnet18enc"] = (root / "resnet18enc", root / "resnet18enc.onnx")
    return out


@pytest.fixture(scope="module")
def repository(builds, tmp_path_factory):
    """One Triton repository with every build's suffixes."""
    repo = tmp_path_factory.mktemp("triton_repo")
    for build, _ in builds.values():
        for model_dir in (build / "cloud").iterdir():
            shutil.copytree(model_dir, repo / model_dir.name)
    return repo


@pytest.fixture(scope="module")
def triton(triton_install, repository):
    srv = start_triton(triton_install, repository)
    print(f"\ntritonserver ready in {srv.ready_s:.1f} s ({len(list(repository.iterdir()))} Python-backend models)")
    yield srv
    srv.stop()


def model_inputs(plan: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for t in plan["model"]["inputs"]:
        dtype = np.dtype(t["dtype"])
        out[t["name"]] = (rng.normal(size=t["shape"]).astype(dtype) if dtype.kind == "f"
                          else rng.integers(0, 8, size=t["shape"]).astype(dtype))
    return out


def run_onnx(model_path: Path, feeds: dict) -> dict[str, np.ndarray]:
    """All outputs of an ONNX file, fed the inputs it takes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()})))


def assert_same(got: np.ndarray, want: np.ndarray, plan: dict, cut: dict, what: str) -> None:
    """A lossless cut equals the whole model tightly; a lossy one within the build's accuracy gate."""
    if cut.get("encoding", "fp32") == "fp32":
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=what)
    else:
        rel = np.linalg.norm(got.astype(np.float64) - want) / max(float(np.linalg.norm(want)), 1e-12)
        assert rel <= plan["accuracy_gate"]["tolerance"]["rel_l2"], (what, rel)


def test_triton_serves_every_model_ready(triton, repository):
    with httpx.Client(timeout=10) as c:
        index = c.post(f"{triton.url}/v2/repository/index").json()
        assert sorted(m["name"] for m in index) == sorted(p.name for p in repository.iterdir())
        assert all(m["state"] == "READY" for m in index), index
        meta = c.get(f"{triton.url}/v2/models/tiny_suffix_relu2").json()
        assert meta["platform"] == "python" and [i["name"] for i in meta["inputs"]] == ["relu1", "relu2", "scale"]


@pytest.mark.parametrize("name", ["tiny", "dag", "resnet18"])
def test_tritonclient_answers_of_every_suffix_equal_the_whole_model(triton, builds, name):
    """For every cut: the prefix in onnxruntime here, the suffix on Triton through tritonclient
    (binary tensors), the device outputs merged: equal to the whole model."""
    build, model_path = builds[name]
    plan = json.loads((build / "plan.json").read_text())
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{triton.http_port}", network_timeout=60)
    checked = 0
    try:
        for seed in range(2):
            x = model_inputs(plan, seed)
            want = run_onnx(model_path, x)
            for cut in plan["cuts"]:
                if cut["cloud_model"] is None:
                    continue
                produced = run_onnx(build / cut["prefix"], x) if cut["prefix"] else {}
                feeds = {t["name"]: produced.get(t["name"], x.get(t["name"])) for t in cut["tensors"]}
                inputs = []
                for tname, a in feeds.items():
                    i = httpclient.InferInput(tname, list(a.shape), httpclient.np_to_triton_dtype(a.dtype))
                    i.set_data_from_numpy(np.ascontiguousarray(a), binary_data=True)
                    inputs.append(i)
                result = client.infer(cut["cloud_model"], inputs)
                got = {o: produced[o] for o in cut["device_outputs"]}
                got.update({o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]})
                assert sorted(got) == sorted(want), (cut["id"], sorted(got))
                for o in want:
                    assert_same(got[o], want[o], plan, cut, f"{name} cut {cut['id']} {o}")
                checked += 1
    finally:
        client.close()
    assert checked >= 2


@pytest.mark.parametrize("name", ["tiny", "dag", "resnet18"])
def test_split_runner_end_to_end_on_triton(triton, builds, name):
    """SplitRunner against Triton: every cut forced, then looked up; never a fallback, the same
    answers as the whole model, and the load read from Triton's statistics."""
    from nscompile.runtime import SplitRunner

    build, model_path = builds[name]
    plan = json.loads((build / "plan.json").read_text())
    x = model_inputs(plan, 7)
    want = run_onnx(model_path, x)
    for cut in [c["id"] for c in plan["cuts"]] + [None]:
        with SplitRunner(build / "device", triton.url, force_cut=cut, initial_bandwidth_mbps=500.0) as runner:
            runner.check_server()  # the hashes in Triton's /config agree
            got, rec = runner.run(x, with_record=True)
            assert not rec.fell_back, rec.error
            for o in want:
                assert_same(got[o], want[o], plan, next(c for c in plan["cuts"] if c["id"] == rec.cut), f"{name} cut {cut}")
            if cut is None and rec.reason != "plan":  # it probed (a plan may be all-device everywhere)
                assert runner.transport.probe_supported is False, rec  # Triton has no nscompile endpoints
                assert runner.transport.triton_load.last, "the load was not read from Triton's statistics"
                assert rec.load >= 1.0


def test_encoded_cuts_end_to_end_on_triton(triton, builds):
    """fp16 and int8 cuts through Triton: the prefix encodes, Triton's Python backend decodes and
    finishes; the answers are within the build's accuracy gate of the whole model, and the bytes
    sent are the plan's."""
    from nscompile.runtime import SplitRunner

    build, model_path = builds["resnet18enc"]
    plan = json.loads((build / "plan.json").read_text())
    lossy = [c for c in plan["cuts"] if c.get("encoding", "fp32") != "fp32"]
    assert {c["encoding"] for c in lossy} >= {"int8"}, "the phone-class build should have encoded cuts"
    x = model_inputs(plan, 3)
    want = run_onnx(model_path, x)
    for cut in lossy:
        with SplitRunner(build / "device", triton.url, force_cut=cut["id"], initial_bandwidth_mbps=500.0) as runner:
            got, rec = runner.run(x, with_record=True)
        assert not rec.fell_back, rec.error
        assert rec.encoding == cut["encoding"] and rec.upload_bytes == cut["predicted"]["upload_bytes"], rec
        for o in want:
            assert_same(got[o], want[o], plan, cut, f"resnet18enc cut {cut['id']} {o}")


def _hammer(url: str, model: str, inputs: dict, stop: threading.Event, statuses: list) -> None:
    body, headers = encode_request(inputs)
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            statuses.append(c.post(f"{url}/v2/models/{model}/infer", content=body, headers=headers).status_code)


@pytest.fixture(scope="module")
def nscompile_server(builds):
    srv = ServerProcess(builds["tiny"][0] / "cloud")
    yield srv
    srv.kill()


@pytest.mark.parametrize("server_kind", ["triton", "nscompile serve"])
def test_loaded_server_moves_decisions_to_the_device(request, builds, server_kind):
    """16 clients flooding the all-cloud model: the runner reads a load K above 1.5 (from Triton's
    statistics, or nscompile serve's header) and picks a cut with more nodes on the device than
    when the server is idle, at the same bandwidth."""
    from nscompile.runtime import SplitRunner

    server = request.getfixturevalue("triton" if server_kind == "triton" else "nscompile_server")
    build = builds["tiny"][0]
    plan = json.loads((build / "plan.json").read_text())
    nodes = {c["id"]: c["device_nodes"] for c in plan["cuts"]}
    x = sample_inputs(2)
    want = run_onnx(builds["tiny"][1], x)

    def decide() -> tuple[str, float]:
        """A new runner's second decision: the first call reads the load, the second uses it."""
        with SplitRunner(build / "device", server.url, bandwidth_mbps=500.0) as runner:
            for _ in range(2):
                got, rec = runner.run(x, with_record=True)
                np.testing.assert_allclose(got["prob"], want["prob"], rtol=1e-5, atol=1e-6)
                runner.wait_for_probe()
        return rec.cut, rec.load

    idle_cut, idle_k = decide()
    stop, statuses = threading.Event(), []
    clients = [threading.Thread(target=_hammer, args=(server.url, "tiny_suffix_input", x, stop, statuses)) for _ in range(16)]
    try:
        for t in clients:
            t.start()
        time.sleep(1.5)
        loaded_cut, loaded_k = decide()
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=30)
    print(f"\n{server_kind}: idle K={idle_k:.2f} -> cut {idle_cut}; 16 clients ({len(statuses)} requests) "
          f"K={loaded_k:.2f} -> cut {loaded_cut}")
    assert set(statuses) <= {200, 503} and statuses.count(200) > 16
    assert idle_k < 1.42 and idle_cut == "input"  # row K=1 at 500 Mbps
    assert loaded_k > 1.5, loaded_k
    assert nodes[loaded_cut] > nodes[idle_cut], (idle_cut, loaded_cut)


def test_triton_metrics_give_queue_pressure(triton, builds):
    """The metrics half of the signal: nv_inference_pending_request_count under 16 clients."""
    from nscompile.runtime.triton_load import TritonLoad

    x = sample_inputs(3)
    stop, statuses = threading.Event(), []
    clients = [threading.Thread(target=_hammer, args=(triton.url, "tiny_suffix_input", x, stop, statuses)) for _ in range(16)]
    with httpx.Client(timeout=10) as c:
        reader = TritonLoad(c, triton.url, ["tiny_suffix_input"], metrics_url=triton.metrics_url)
        assert reader.read() == pytest.approx(1.0, abs=0.3)  # idle
        try:
            for t in clients:
                t.start()
            time.sleep(1.0)
            readings = [reader.read() for _ in range(5)]
            parts = dict(reader.last)
        finally:
            stop.set()
            for t in clients:
                t.join(timeout=30)
    print(f"\nTriton under 16 clients: K {['%.1f' % k for k in readings]}, last parts {parts}")
    assert parts["queue"] is not None and max(readings) > 1.5


def test_kill9_triton_with_16_threads_on_one_runner_and_restart(triton_install, builds, tmp_path):
    """kill -9 of tritonserver with 16 threads on one SplitRunner: every call right (the device
    finishes what the server dropped); after a restart on the same port the runner uses it again."""
    from nscompile.runtime import SplitRunner

    build = builds["tiny"][0]
    servers = [start_triton(triton_install, build / "cloud")]
    ports = {"http_port": servers[0].http_port, "metrics_port": servers[0].metrics_port}
    runner = SplitRunner(build / "device", servers[0].url, bandwidth_mbps=500.0, load=1.0, deadline_ms=2000)
    try:
        out = through_kill_and_restart(runner, build, servers[0].kill,
                                              lambda: servers.append(start_triton(triton_install, build / "cloud", **ports)))
    finally:
        runner.close()
        for srv in servers:
            srv.kill()
    check_kill_and_restart(out, "Triton")
