"""Cross-origin access for pages: ``nscompile serve --cors-origin ORIGIN`` (repeatable).

A page served from another origin (the browser runtime in ``nscompile/runtime/js/``, the
``nscompile demo`` page) may call the server only if the server says so. Its infer POST
carries ``Content-Type: application/octet-stream`` and ``Inference-Header-Content-Length``,
so the browser first sends a preflight ``OPTIONS``; and it can read only the response
headers the server exposes, which must include the load headers and the JSON header's
length. Starlette's middleware implements the protocol; this module fixes what it allows.

- Default: no CORS header at all (a page on another origin is refused by its browser).
- Listed origins are echoed back with ``Vary: Origin``; ``*`` allows any origin.
- Credentials (cookies, HTTP authentication) are never allowed, so ``*`` is never sent
  together with ``Access-Control-Allow-Credentials``: the server has no notion of users.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from nscompile.errors import NscompileError

#: Request headers a page may send: what the runner's infer and probe requests carry.
ALLOWED_HEADERS = ["Content-Type", "Inference-Header-Content-Length", "Content-Encoding"]
#: Response headers a page may read: the load headers of every infer answer (see
#: nscompile.serve.app), the binary answer's JSON length, and a 503's Retry-After.
EXPOSED_HEADERS = ["nscompile-load", "nscompile-inflight", "nscompile-server-ms", "Inference-Header-Content-Length",
                   "Retry-After"]
ALLOWED_METHODS = ["GET", "POST"]
#: How long a browser may cache a preflight answer (seconds).
MAX_AGE_S = 600


def check_origins(origins) -> list[str]:
    """Validate ``--cors-origin`` values: ``*`` or ``scheme://host[:port]`` with no path.

    Args:
        origins: the values as given.

    Returns:
        The origins, normalised (no trailing slash, lower-case scheme and host).

    Raises:
        NscompileError: a value is not an origin.
    """
    checked = []
    for origin in origins:
        text = str(origin).strip()
        if text == "*":
            checked.append(text)
            continue
        parts = urlsplit(text.rstrip("/"))
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            parts = None
        if not parts or parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query \
                or parts.fragment or parts.username:
            raise NscompileError(
                f"--cors-origin {origin!r} is not an origin; pass scheme://host[:port], e.g. "
                "--cors-origin http://localhost:8080 (or '*' for any origin)"
            )
        checked.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return checked


def add_cors(app, origins) -> None:
    """Let pages on ``origins`` call ``app`` (preflight, exposed headers; never credentials).

    Args:
        app: the FastAPI/Starlette application.
        origins: allowed origins (see :func:`check_origins`); empty: leave the app untouched.

    Raises:
        NscompileError: an origin is malformed.
    """
    origins = check_origins(origins)
    if not origins:
        return
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=ALLOWED_METHODS,
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        allow_credentials=False,
        max_age=MAX_AGE_S,
    )
