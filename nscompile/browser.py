"""The browser side of nscompile: static files over HTTP and headless Chromium, from Python.

The JavaScript device runtime lives in ``nscompile/runtime/js/`` (plain ES modules, with
its ``package.json``). What runs it in a browser needs three things that Python does not
have: Node, the npm packages (``npm ci`` in that folder: onnxruntime-web, playwright-core)
and a Chromium (Debian: ``apt-get install -y chromium``). :func:`missing` says which of
them is absent, so that commands fail with one clear line and tests skip with the reason.

:class:`StaticSite` serves folders (the device directory, the runner, onnxruntime-web's
WASM files, a page) and generated JSON on one origin; :class:`Browser` drives one headless
Chromium page through ``tools/browser.js`` (playwright-core) on a JSON line protocol.
``nscompile demo``, ``nscompile profile --web``, the browser tests and the browser
end-to-end benchmark use both.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from nscompile.errors import NscompileError

#: The JavaScript runtime's folder (shipped in the wheel without node_modules).
JS_DIR = Path(__file__).resolve().parent / "runtime" / "js"
#: onnxruntime-web's distribution files (ort.wasm.min.mjs and its .wasm), after ``npm ci``.
ORT_DIST = JS_DIR / "node_modules" / "onnxruntime-web" / "dist"
_PLAYWRIGHT = JS_DIR / "node_modules" / "playwright-core"
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """The Chromium executable: ``$NSCOMPILE_CHROMIUM``, else the first of the usual names on PATH."""
    env = os.environ.get("NSCOMPILE_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in _CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing(browser: bool = True) -> str | None:
    """What is missing to run the JavaScript runtime (in Chromium when ``browser``), or None.

    Returns:
        One line naming what to install, e.g. "no node_modules in nscompile/runtime/js
        (run `npm ci` there)".
    """
    if shutil.which("node") is None:
        return "no `node` on PATH (install Node.js 18 or later)"
    if not (ORT_DIST / "ort.wasm.min.mjs").is_file():
        return f"onnxruntime-web is not installed in {JS_DIR} (run `npm ci` there)"
    if browser:
        if not (_PLAYWRIGHT / "package.json").is_file():
            return f"playwright-core is not installed in {JS_DIR} (run `npm ci` there)"
        if chromium_path() is None:
            return "no Chromium (apt-get install -y chromium, or set NSCOMPILE_CHROMIUM to its path)"
    return None


def require(browser: bool = True) -> None:
    """Raise :class:`NscompileError` with :func:`missing`'s line when something is missing."""
    problem = missing(browser)
    if problem:
        raise NscompileError(problem)


class _Handler(SimpleHTTPRequestHandler):
    """Serves ``routes`` (URL prefix -> folder) and ``generated`` (path -> bytes); nothing else."""

    # .mjs and .wasm need their real types: browsers refuse modules and streaming WASM otherwise.
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json"}

    def __init__(self, *args, routes: dict[str, Path], generated: dict[str, bytes], headers: dict[str, str], **kw):
        self.routes, self.generated, self.extra_headers = routes, generated, headers
        super().__init__(*args, **kw)

    def translate_path(self, path: str) -> str:
        path = unquote(urlsplit(path).path)
        for prefix, folder in sorted(self.routes.items(), key=lambda kv: -len(kv[0])):
            if path == prefix.rstrip("/") or path.startswith(prefix):
                rel = Path(path[len(prefix):].lstrip("/"))
                if ".." in rel.parts:
                    break
                return str(folder / rel)
        return str(Path(tempfile.gettempdir()) / "nscompile-no-such-file")  # answered 404

    def send_head(self):
        body = self.generated.get(urlsplit(self.path).path)
        if body is None:
            return super().send_head()
        path = urlsplit(self.path).path
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if path.endswith("/") else self.guess_type(path))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        from io import BytesIO

        return BytesIO(body)

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")  # a rebuilt device/ must not be served stale
        for name, value in self.extra_headers.items():
            self.send_header(name, value)
        super().end_headers()

    def list_directory(self, path):  # noqa: ARG002 - no directory listings
        self.send_error(404)
        return None

    def log_message(self, *args):  # quiet: the tests and the demo print what matters
        pass


class StaticSite:
    """Folders and generated files over HTTP on one origin, in a background thread.

    Args:
        routes: URL prefix ("/device/") -> folder served under it.
        generated: URL path ("/config.json") -> bytes served as they are.
        host: address to bind.
        port: TCP port (0: any free one).
        isolated: send the headers that make pages cross-origin isolated (COOP/COEP):
            the browser's clock then ticks in 5 us instead of 100 us steps.

    Raises:
        NscompileError: the port cannot be bound.

    Use as a context manager; ``url`` is the origin ("http://127.0.0.1:PORT").
    """

    def __init__(self, routes: dict[str, Path], generated: dict[str, bytes] | None = None,
                 host: str = "127.0.0.1", port: int = 0, isolated: bool = False):
        headers = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"} if isolated else {}
        handler = partial(_Handler, routes={k: Path(v) for k, v in routes.items()}, generated=dict(generated or {}),
                          headers=headers)
        try:
            self.server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise NscompileError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="nscompile-static", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> StaticSite:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def runtime_routes() -> dict[str, Path]:
    """The routes every page of the JavaScript runtime needs: the runner (/runner/) and onnxruntime-web (/ort/)."""
    return {"/runner/": JS_DIR, "/ort/": ORT_DIST}


class Browser:
    """One headless Chromium page, driven through ``tools/browser.js``.

    Args:
        log_dir: where the driver's stderr (the page's console) is written, as ``NAME.log``.
        name: the log's name.
        wrap: a function that wraps the command line (e.g. to run it in a network namespace).
        groups: cgroups to put the driver (and so Chromium, its child) into, as the testbed's Worker takes.
        timeout_s: how long one command may take.

    Raises:
        NscompileError: Node, the npm packages or Chromium are missing, or Chromium does not start.
    """

    def __init__(self, log_dir: Path | None = None, name: str = "browser", wrap=None, groups: tuple = (),
                 timeout_s: float = 300.0):
        from nscompile.testbed.testbed import Worker

        require(browser=True)
        self.timeout_s = timeout_s
        self._tmp = None
        if log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="nscompile-browser-")
            log_dir = Path(self._tmp.name)
        cmd = ["node", str(JS_DIR / "tools" / "browser.js"), "--chromium", chromium_path()]
        self._worker = Worker(wrap(cmd) if wrap else cmd, name, Path(log_dir), groups=groups)
        self.log_path = self._worker.log_path
        try:
            self.version = self._worker.answer(120.0)["value"]["chromium"]
        except NscompileError:
            self.close()
            raise

    def goto(self, url: str) -> None:
        """Open ``url`` and wait for its load event."""
        self._worker.ask(self.timeout_s, op="goto", url=url)

    def find_renderer(self) -> int | None:
        """Find the page's renderer process again (whose main-thread CPU time pages read); its pid."""
        return self._worker.ask(self.timeout_s, op="find_renderer")["value"]["renderer_pid"]

    def eval(self, expression: str, timeout_s: float | None = None):
        """Evaluate ``expression`` in the page (a promise is awaited) and return its JSON value.

        Raises:
            NscompileError: the expression threw (the message is the page's).
        """
        return self._worker.ask(timeout_s or self.timeout_s, op="eval", expression=expression)["value"]

    def call(self, function: str, *args, timeout_s: float | None = None):
        """Call the page's function ``function`` (an expression) with JSON arguments; return its JSON value."""
        return self.eval(f"({function})(...{json.dumps(list(args))})", timeout_s)

    def screenshot(self, path: Path) -> Path:
        """Save a full-page PNG screenshot."""
        self._worker.ask(self.timeout_s, op="screenshot", path=str(Path(path).resolve()), full_page=True)
        return Path(path)

    def console(self) -> str:
        """Everything the page (and the driver) wrote to the console so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Close Chromium and the driver."""
        self._worker.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
