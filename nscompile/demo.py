"""``nscompile demo BUILD_DIR``: a page that runs the split in the visitor's browser.

The page (``nscompile/runtime/js/demo/``) loads the build's ``device/`` directory with the
JavaScript runtime and onnxruntime-web, runs one input through the split against a
``nscompile serve`` of the build's ``cloud/`` and shows the chosen cut on the layer chart,
the time split predicted against measured, the bytes sent and the decision map.

The server is another origin than the page, so it must allow the page's origin
(``--cors-origin``): :func:`start_server` starts one that does; pointing the page at a
running server needs that server started with ``--cors-origin`` the page's URL.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from nscompile.browser import JS_DIR, ORT_DIST, StaticSite, runtime_routes
from nscompile.errors import NscompileError
from nscompile.report import load_build

DEMO_DIR = JS_DIR / "demo"


def cut_device_nodes(build_dir: Path, plan_doc: dict) -> dict[str, list[str]]:
    """Cut id -> the names of the nodes its prefix runs (what the layer chart colours as on the device).

    Read from the prefix models themselves: a DAG's device set is not a prefix of the
    layer order, and plan.json stores only its size.
    """
    import onnx

    nodes = {}
    for cut in plan_doc["cuts"]:
        if cut.get("prefix"):
            path = Path(build_dir) / "device" / Path(cut["prefix"]).name
            model = onnx.load(str(path), load_external_data=False)
            nodes[cut["id"]] = [n.name for n in model.graph.node]
        else:
            nodes[cut["id"]] = []
    return nodes


def demo_site(build_dir: Path, server_url: str, host: str = "127.0.0.1", port: int = 0) -> StaticSite:
    """Serve the demo page, the runner, onnxruntime-web and the build's device directory.

    Args:
        build_dir: a build directory (plan.json, layers.json, device/).
        server_url: the server the page calls (it must allow the page's origin).
        host, port: where to listen (port 0: any free one).

    Returns:
        The running :class:`StaticSite`; its ``url`` is the page.

    Raises:
        NscompileError: not a build directory, onnxruntime-web not installed, the port is taken.
    """
    build_dir = Path(build_dir)
    plan_doc, layers = load_build(build_dir)
    if not (build_dir / "device" / "plan.json").is_file():
        raise NscompileError(f"'{build_dir}' has no device/plan.json; pass the directory `nscompile build -o` wrote")
    if not (ORT_DIST / "ort.wasm.min.mjs").is_file():
        raise NscompileError(f"onnxruntime-web is not installed in {JS_DIR}; run `npm ci` there")
    config = {"server": server_url.rstrip("/"), "layers": layers, "cut_nodes": cut_device_nodes(build_dir, plan_doc)}
    return StaticSite({**runtime_routes(), "/device/": build_dir / "device", "/": DEMO_DIR},
                      generated={"/demo/config.json": json.dumps(config).encode(), "/": (DEMO_DIR / "index.html").read_bytes()},
                      host=host, port=port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_server(cloud_dir: Path, origin: str, host: str = "127.0.0.1", port: int | None = None,
                 timeout_s: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start ``nscompile serve cloud_dir --cors-origin origin`` and wait until it is ready.

    Returns:
        (process, its base URL).

    Raises:
        NscompileError: it exited or did not become ready within ``timeout_s``.
    """
    import httpx

    port = port or free_port(host)
    url = f"http://{host}:{port}"
    cmd = [sys.executable, "-m", "nscompile", "serve", str(cloud_dir), "--host", host, "--port", str(port),
           "--cors-origin", origin]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NscompileError(f"nscompile serve {cloud_dir} exited: {proc.stderr.read().strip()[-500:]}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=0.5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise NscompileError(f"nscompile serve {cloud_dir} was not ready within {timeout_s:.0f} s")
