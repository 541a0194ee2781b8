"""The names a build, its server and its devices agree on, spelled once.

Tools outside nscompile read ``plan.json``, point Triton at ``cloud/`` or talk to
``nscompile serve``, so these strings are part of the interface: change one and every
existing build, device and server stops matching. The compiler (backend, report), the
server (serve) and the device (runtime) import them from here. Standard library only:
a device copies ``nscompile/runtime/`` and nothing of the compiler.
"""

#: ``plan.json``'s ``"schema"``; bump it when a key's name or meaning changes.
PLAN_SCHEMA = "nscompile.plan/1"

#: The file in ``device/`` holding every prefix weight once (ONNX external data).
WEIGHTS_FILE = "weights.bin"

#: The config.pbtxt parameter (and the key in ``/v2/models/{m}/config``'s
#: ``parameters``) carrying the sha256 of the model a suffix was cut from.
MODEL_SHA_PARAMETER = "nscompile_model_sha256"
#: The ONNX metadata_props key carrying the same hash inside every emitted model file.
MODEL_SHA_METADATA = "nscompile.model_sha256"

#: Headers ``nscompile serve`` adds to every infer answer: the slowdown factor K >= 1,
#: the other requests in flight, and this request's queue + compute milliseconds.
LOAD_HEADER = "nscompile-load"
INFLIGHT_HEADER = "nscompile-inflight"
SERVER_MS_HEADER = "nscompile-server-ms"

#: nscompile serve's own endpoints: the load report (GET) and the uplink probe (POST,
#: the body is swallowed). Triton has neither; the device then falls back to
#: ``/v2/health/ready`` for the RTT and to its initial bandwidth estimate.
LOAD_PATH = "/v2/nscompile/load"
PROBE_PATH = "/v2/nscompile/probe"
