"""The model repository ``nscompile serve`` serves: a Triton-layout ``cloud/`` directory.

A model is an ONNX file run with onnxruntime, whichever way its config tells Triton to run
it: ``platform: "onnxruntime_onnx"`` (or ``backend: "onnxruntime"``), or ``backend: "python"``
with the ``1/model.py`` that ``nscompile build --triton-backend python`` writes beside
``1/model.onnx`` (served here from the ONNX file, exactly as that model.py runs it).

Each ``cloud/<name>/config.pbtxt`` is read at start-up (cheap, so metadata and readiness
answer at once); the ONNX session is created on the first infer and reused. Loading also
times a few idle runs: the "profiled idle time" the server compares live requests with to
report its slowdown.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nscompile.errors import NscompileError
from nscompile.runtime.contract import MODEL_SHA_METADATA, MODEL_SHA_PARAMETER
from nscompile.runtime.protocol import ORT_TO_V2, V2_TO_NUMPY
from nscompile.serve.pbtxt import parse_pbtxt


@dataclass(frozen=True)
class TensorMeta:
    """A model input or output as the v2 metadata describes it (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """True if a tensor of `shape` fits this (possibly dynamic) shape."""
        return len(shape) == len(self.shape) and all(d < 0 or d == s for d, s in zip(self.shape, shape))


@dataclass
class Stats:
    """Cumulative counters, shaped like Triton's statistics extension."""

    success: int = 0
    fail: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    last_inference_ms: int = 0


@dataclass
class ModelEntry:
    """One model of the repository; its session is created on first use."""

    name: str
    directory: Path
    version: str
    model_file: Path
    platform: str  # Triton's platform field ("" for the Python backend)
    backend: str  # "onnxruntime" or "python"
    max_batch_size: int
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    sha256: str | None
    config: dict
    session: object | None = None
    idle_ms: float | None = None  # session.run alone, profiled at load
    best_ms: float | None = None  # fastest queue + compute seen through the serving path
    load_error: str | None = None
    #: Whether this model's requests feed the server's load report: not when its idle time
    #: was profiled while other requests ran (loaded on demand on a busy server), which
    #: would make the server look idler than it is.
    counts_for_load: bool = True
    stats: Stats = field(default_factory=Stats)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def idle_reference(self, total_ms: float) -> float | None:
        """The idle time to compare a request's queue + compute time with.

        The profiled session time misses the serving path's own cost (thread hand-off,
        GIL), which on a small model is several times the compute; the fastest request
        seen so far includes it. Never below the profiled time.
        """
        if self.idle_ms is None:
            return None
        self.best_ms = total_ms if self.best_ms is None else min(self.best_ms, total_ms)
        return max(self.idle_ms, self.best_ms)

    def metadata(self) -> dict:
        """The v2 model metadata response."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform or self.backend,
            "inputs": [t.as_json() for t in self.inputs],
            "outputs": [t.as_json() for t in self.outputs],
        }

    def config_json(self) -> dict:
        """The model configuration in the JSON form Triton's ``/config`` endpoint returns."""
        shape = (lambda t: list(t.shape[1:] if self.max_batch_size > 0 else t.shape))
        cfg = {
            "name": self.name,
            "platform": self.platform,
            "backend": self.backend,
            "max_batch_size": self.max_batch_size,
            "input": [{"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": shape(t)} for t in self.inputs],
            "output": [{"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": shape(t)} for t in self.outputs],
            "parameters": {},
        }
        if self.sha256:
            cfg["parameters"][MODEL_SHA_PARAMETER] = {"string_value": self.sha256}
        return cfg

    def ensure_loaded(self, providers: list, threads: int | None) -> object:
        """Create the onnxruntime session once (thread-safe) and time idle runs.

        Returns:
            The session.

        Raises:
            NscompileError: the model file is broken or disagrees with its config.
        """
        if self.session is not None:
            return self.session
        with self._lock:
            if self.session is None:
                if self.load_error is not None:
                    raise NscompileError(self.load_error)
                try:
                    self._load(providers, threads)
                except NscompileError as exc:
                    self.load_error = str(exc)
                    raise
        return self.session

    def unload(self) -> None:
        """Drop the session (requests running on it finish); the next use loads it again."""
        with self._lock:
            self.session, self.idle_ms, self.best_ms, self.load_error = None, None, None, None

    def _load(self, providers: list, threads: int | None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # Spinning intra-op threads keep the cores busy after each run, starving the event
        # loop that sends this answer and reads the next request (measured: +2.5 ms per
        # request on 2 cores).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = threads
        try:
            sess = ort.InferenceSession(str(self.model_file), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime's own exception types
            raise NscompileError(f"model {self.name!r}: cannot load {self.model_file} ({exc}); rebuild it") from None
        got = {i.name: ORT_TO_V2.get(i.type) for i in sess.get_inputs()}
        want = {t.name: t.datatype for t in self.inputs}
        if got != want:
            raise NscompileError(f"model {self.name!r}: {self.model_file} takes {got} but config.pbtxt says {want}; rebuild it")
        meta_sha = sess.get_modelmeta().custom_metadata_map.get(MODEL_SHA_METADATA)
        if meta_sha and self.sha256 and meta_sha != self.sha256:
            raise NscompileError(
                f"model {self.name!r}: {self.model_file} was built from sha256 {meta_sha} but config.pbtxt "
                f"says {self.sha256}; rebuild the repository"
            )
        feeds = {
            t.name: np.zeros([d if d > 0 else 1 for d in t.shape], dtype=V2_TO_NUMPY[t.datatype]) for t in self.inputs
        }
        times = []
        for _ in range(3):  # idle profile: the best of a few runs, after the first warm-up
            t = time.perf_counter()
            sess.run(None, feeds)
            times.append((time.perf_counter() - t) * 1e3)
        self.idle_ms = min(times[1:])
        self.session = sess


def _tensors(cfg: dict, key: str, batch: int, where: str) -> tuple[TensorMeta, ...]:
    out = []
    for e in cfg.get(key, []):
        if not isinstance(e, dict) or not e.get("name"):
            raise NscompileError(f"{where}: every {key} needs a name; fix the config")
        dtype = str(e.get("data_type", [""])[0])
        datatype = dtype.removeprefix("TYPE_")
        if datatype not in V2_TO_NUMPY:
            raise NscompileError(f"{where}: {key} {e['name'][0]!r} has data_type {dtype}, which nscompile serve cannot carry")
        dims = tuple(d for v in e.get("dims", []) for d in ([v] if not isinstance(v, list) else v))
        shape = ((-1,) if batch > 0 else ()) + tuple(int(d) for d in dims)
        out.append(TensorMeta(str(e["name"][0]), datatype, shape))
    return tuple(out)


#: A line of the model.py nscompile writes (nscompile/serve/triton_python_model.py).
PYTHON_MODEL_MARK = "nscompile build --triton-backend python"


def _check_python_models(directory: Path, where: str) -> None:
    """Serving model.onnx in place of a model.py is only right for the model.py nscompile writes."""
    for script in directory.glob("*/model.py"):
        if PYTHON_MODEL_MARK not in script.read_text(errors="replace"):
            raise NscompileError(
                f"{where}: {script} is not the model.py nscompile writes, so serving its model.onnx could "
                "answer differently; serve it with Triton, or rebuild with --triton-backend python"
            )


def read_model(directory: Path) -> ModelEntry:
    """Read one model directory (config.pbtxt plus its newest version).

    Args:
        directory: ``cloud/<name>``.

    Returns:
        The :class:`ModelEntry` (session not loaded yet).

    Raises:
        NscompileError: a missing or inconsistent config or model file.
    """
    where = str(directory / "config.pbtxt")
    cfg = parse_pbtxt((directory / "config.pbtxt").read_text(), where)
    name = str(cfg.get("name", [directory.name])[0])
    if name != directory.name:
        raise NscompileError(f"{where} names the model {name!r} but its directory is {directory.name!r}; they must match")
    backend = str(cfg.get("backend", [""])[0])
    platform = str(cfg.get("platform", ["" if backend == "python" else "onnxruntime_onnx"])[0])
    if backend == "python":
        filename = "model.onnx"  # the file 1/model.py runs; nscompile serve runs it directly
        _check_python_models(directory, where)
    elif platform == "onnxruntime_onnx" or backend == "onnxruntime":
        platform, backend = "onnxruntime_onnx", "onnxruntime"
        filename = str(cfg.get("default_model_filename", ["model.onnx"])[0])
    else:
        raise NscompileError(
            f"{where}: platform {platform!r} / backend {backend!r} is neither onnxruntime_onnx nor python; "
            "nscompile serve runs ONNX models only"
        )
    batch = int(cfg.get("max_batch_size", [0])[0])
    versions = sorted(
        (int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit() and (p / filename).is_file()),
        reverse=True,
    )
    if not versions:
        raise NscompileError(f"{directory} has no version directory with {filename}; expected {directory}/1/{filename}")
    sha = None
    for p in cfg.get("parameters", []):
        if isinstance(p, dict) and p.get("key", [None])[0] == MODEL_SHA_PARAMETER:
            value = (p.get("value") or [{}])[0]
            sha = str((value.get("string_value") or [None])[0]) if isinstance(value, dict) else None
    return ModelEntry(
        name=name,
        directory=directory,
        version=str(versions[0]),
        model_file=directory / str(versions[0]) / filename,
        platform=platform,
        backend=backend,
        max_batch_size=batch,
        inputs=_tensors(cfg, "input", batch, where),
        outputs=_tensors(cfg, "output", batch, where),
        sha256=sha,
        config=cfg,
    )


def read_repository(path: str | Path) -> dict[str, ModelEntry]:
    """Read every model of a Triton-layout repository.

    Args:
        path: the ``cloud/`` directory of a build.

    Returns:
        model name -> entry.

    Raises:
        NscompileError: not a directory, no models, or a broken model directory.
    """
    root = Path(path)
    if not root.is_dir():
        raise NscompileError(f"{root} is not a directory; pass the cloud/ directory of a build")
    models = {}
    for d in sorted(root.iterdir()):
        if d.is_dir() and (d / "config.pbtxt").is_file():
            entry = read_model(d)
            models[entry.name] = entry
    if not models:
        raise NscompileError(f"{root} holds no model (no */config.pbtxt); pass the cloud/ directory of a build")
    return models
