"""``nscompile serve --cors-origin``: preflight, exposed headers, no CORS by default, never credentials.

The browser's side of it (an allowed page splits, another origin is refused) is
test_js_runtime.py's test_cors_allowed_origin_splits_other_origin_is_refused.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from nscompile.errors import NscompileError
from nscompile.runtime.protocol import HEADER_LENGTH, encode_request
from nscompile.serve.cors import check_origins

_spec = importlib.util.spec_from_file_location("_nscompile_rt_helpers_cors", Path(__file__).with_name("test_runtime.py"))
rt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rt)

PAGE = "http://localhost:8080"
MODEL = "tiny_suffix_relu1"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return rt.make_handmade_build(tmp_path_factory.mktemp("cors"))


def client(build, origins=()):
    from nscompile.serve import create_app

    return TestClient(create_app(build / "cloud", cors_origins=list(origins)))


def infer(c: TestClient, origin: str | None):
    rng = np.random.default_rng(0)
    body, headers = encode_request({"relu1": rng.random((1, 8, 32, 32), dtype=np.float32),
                                    "scale": np.ones((1, 10), np.float32)})
    if origin:
        headers["Origin"] = origin
    return c.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)


def preflight(c: TestClient, origin: str):
    return c.options(f"/v2/models/{MODEL}/infer", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,inference-header-content-length"})


def test_default_sends_no_cors_header(build):
    with client(build) as c:
        r = infer(c, PAGE)
        assert r.status_code == 200
        assert not [h for h in r.headers if h.lower().startswith("access-control-")]
        assert preflight(c, PAGE).status_code == 405  # no OPTIONS route: the browser refuses the page


def test_allowed_origin_preflight_and_exposed_headers(build):
    with client(build, [PAGE]) as c:
        p = preflight(c, PAGE)
        assert p.status_code == 200
        assert p.headers["access-control-allow-origin"] == PAGE
        assert "POST" in p.headers["access-control-allow-methods"]
        allowed = {h.strip().lower() for h in p.headers["access-control-allow-headers"].split(",")}
        assert {"content-type", "inference-header-content-length"} <= allowed
        assert "access-control-allow-credentials" not in p.headers
        r = infer(c, PAGE)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == PAGE
        assert "origin" in r.headers["vary"].lower()
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        # Every nscompile header the answer carries, and the JSON header's length, can be read by the page.
        carried = {h.lower() for h in r.headers if h.lower().startswith("nscompile-")} | {HEADER_LENGTH.lower()}
        assert carried <= exposed, carried - exposed
        assert "access-control-allow-credentials" not in r.headers
        # A plain GET (the runner's config check and load probe) is answered for the page too.
        g = c.get("/v2/nscompile/load", headers={"Origin": PAGE})
        assert g.headers["access-control-allow-origin"] == PAGE


def test_other_origin_gets_nothing(build):
    with client(build, [PAGE]) as c:
        p = preflight(c, "http://evil.example")
        assert p.status_code == 400 and "access-control-allow-origin" not in p.headers
        r = infer(c, "http://evil.example")
        assert "access-control-allow-origin" not in r.headers


def test_any_origin_never_with_credentials(build):
    with client(build, ["*"]) as c:
        r = infer(c, PAGE)
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers
        p = preflight(c, PAGE)
        assert p.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in p.headers


def test_origins_are_checked():
    assert check_origins(["HTTP://LocalHost:8080/", "*", "https://a.example"]) == [
        "http://localhost:8080", "*", "https://a.example"]
    for bad in ("localhost:8080", "http://a.example/page", "ftp://a.example", "http://", "http://a:99999", "http://u@a"):
        with pytest.raises(NscompileError, match="is not an origin"):
            check_origins([bad])


def test_cli_refuses_a_bad_origin(build):
    from helpers import run_cli

    r = run_cli("serve", build / "cloud", "--cors-origin", "localhost:8080")
    assert r.returncode == 2 and "--cors-origin 'localhost:8080' is not an origin" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
